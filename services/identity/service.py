"""Identity's use cases for signing up, in and out: SignUp, Login, RefreshToken, Logout, GetJwks,
WhoAmI, ChangePassword, IssueServiceToken. Tenant administration is in admin.py.

Plain Python: raises platform errors, knows nothing of gRPC.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from services.identity import validation as check
from services.identity.keys import KeySet
from services.identity.models import (
    Duplicate,
    Identity,
    RefreshRecord,
    RequestRecord,
    Session,
    SignedIn,
    Tenant,
    TenantQuota,
    User,
)
from services.identity.passwords import Verification, check_policy
from services.identity.sessions import Revoker, Sessions, at
from services.identity.tokens import hash_refresh_token, looks_like_refresh_token
from services.platform import errors
from services.platform.auth import ALL_TENANTS, ROLE_OWNER, ROLE_SERVICE, Principal
from services.platform.settings import Settings
from services.platform.validation import Violations

# One message for unknown tenant, unknown user, disabled user and wrong password: no enumeration.
LOGIN_FAILED = "invalid tenant, username or password"
INVALID_REFRESH = "invalid or expired refresh token"
SERVICE_TIER = "enterprise"
SIGNUP_TIER = "free"


class Store(Protocol):
    """Identity's tables as sign-up, login and refresh use them; `create` raises models.Duplicate
    when a unique name or request id is taken."""

    async def create(self, *, tenant: Tenant | None, user: User, request: RequestRecord | None) -> None: ...
    async def request(self, kind: str, scope: str, request_id: str) -> RequestRecord | None: ...
    async def tenant(self, tenant_id: str) -> Tenant | None: ...
    async def user(self, tenant_id: str, user_id: str) -> User | None: ...
    async def login_candidate(self, tenant_name: str, username: str) -> tuple[Tenant | None, User | None]: ...
    async def set_password_hash(
        self, user_id: str, password_hash: str, *, now: int, bump_version: bool
    ) -> None: ...
    async def refresh(self, token_hash: str) -> RefreshRecord | None: ...
    async def spend_refresh(self, token_hash: str, *, now: int) -> bool: ...
    async def revoke_family(self, family_id: str, *, now: int) -> None: ...
    async def family_started(self, family_id: str) -> int: ...


class Hasher(Protocol):
    """Password hashing (argon2id in passwords.Passwords)."""

    async def hash(self, password: str) -> str: ...
    async def verify(self, stored_hash: str | None, password: str) -> Verification: ...


class Throttle(Protocol):
    """Failed-login counters (redis_state.LoginThrottle): `check` raises RESOURCE_EXHAUSTED."""

    async def check(self, tenant: str, username: str, address: str) -> None: ...
    async def failed(self, tenant: str, username: str, address: str) -> None: ...
    async def succeeded(self, tenant: str, username: str) -> None: ...


class Quota(Protocol):
    """The caller's tenant's monthly quota, from conversation (quota.ConversationQuota); UNKNOWN
    rather than an error when it cannot be read."""

    async def quota(self) -> TenantQuota: ...


def signup_open(settings: Settings) -> bool:
    """AGENTMESH_SIGNUP, else open only in the embedded mode (a laptop, not a public platform)."""
    chosen = settings.auth.signup_open
    return settings.embedded if chosen is None else chosen


def fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def tenant_with_owner(
    *,
    tenant_name: str,
    tier: str,
    username: str,
    display_name: str,
    password_hash: str,
    now: int,
) -> tuple[Tenant, User]:
    """A new tenant and its first owner (SignUp, and the operator's `tenants create`)."""
    tenant = Tenant(
        id=str(uuid.uuid4()),
        name=tenant_name,
        display_name=tenant_name,
        tier=tier,
        version=1,
        create_time=now,
        update_time=now,
    )
    user = User(
        id=str(uuid.uuid4()),
        tenant_id=tenant.id,
        username=username,
        display_name=display_name,
        roles=(ROLE_OWNER,),
        disabled=False,
        version=1,
        create_time=now,
        update_time=now,
        password_hash=password_hash,
    )
    return tenant, user


class IdentityService:
    def __init__(
        self,
        *,
        store: Store,
        passwords: Hasher,
        sessions: Sessions,
        throttle: Throttle,
        revocations: Revoker,
        keys: KeySet,
        service_secret: str,
        clock: Callable[[], float],
        signup_open: bool,
        quota: Quota,
    ) -> None:
        self._store = store
        self._passwords = passwords
        self._sessions = sessions
        self._throttle = throttle
        self._revocations = revocations
        self._keys = keys
        self._service_secret = service_secret
        self._clock = clock
        self._signup_open = signup_open
        self._quota = quota

    # --- SignUp ------------------------------------------------------------------------------

    async def sign_up(
        self, *, tenant_name: str, username: str, password: str, display_name: str, request_id: str
    ) -> SignedIn:
        if not self._signup_open:
            raise errors.PermissionDenied(
                "self-service sign-up is closed on this platform: ask its operator for a tenant",
                reason="SIGNUP_CLOSED",
            )
        v = Violations()
        check.tenant_name(v, tenant_name)
        check.username(v, username)
        check.display_name(v, display_name)
        v.request_id(request_id)
        v.raise_if_any()
        check_policy(password)
        print_ = fingerprint(tenant_name, username, display_name)
        if request_id:
            record = await self._store.request("signup", "", request_id)
            if record is not None:
                return await self._replay_sign_up(record, print_, password)
        tenant, user = tenant_with_owner(
            tenant_name=tenant_name,
            tier=SIGNUP_TIER,
            username=username,
            display_name=display_name,
            password_hash=await self._passwords.hash(password),
            now=at(self._clock()),
        )
        request = (
            RequestRecord(
                kind="signup",
                scope="",
                request_id=request_id,
                fingerprint=print_,
                tenant_id=tenant.id,
                user_id=user.id,
            )
            if request_id
            else None
        )
        try:
            await self._store.create(tenant=tenant, user=user, request=request)
        except Duplicate:
            if request_id:
                record = await self._store.request("signup", "", request_id)
                if record is not None:
                    return await self._replay_sign_up(record, print_, password)
            raise errors.AlreadyExists(
                f"tenant name {tenant_name!r} is taken", reason="TENANT_EXISTS"
            ) from None
        return SignedIn(tenant, user, await self._sessions.start(user, tenant))

    async def _replay_sign_up(self, record: RequestRecord, print_: str, password: str) -> SignedIn:
        """A retried SignUp: same answer, but only to whoever knows the password it was made with."""
        tenant = await self._store.tenant(record.tenant_id)
        user = await self._store.user(record.tenant_id, record.user_id)
        if tenant is None or user is None or record.fingerprint != print_:
            raise errors.InvalidArgument.field("request_id", "was already used for a different request")
        if not (await self._passwords.verify(user.password_hash, password)).ok:
            raise errors.InvalidArgument.field("request_id", "was already used for a different request")
        return SignedIn(tenant, user, await self._sessions.start(user, tenant))

    # --- Login -------------------------------------------------------------------------------

    async def login(self, *, tenant: str, username: str, password: str, client_address: str) -> SignedIn:
        v = Violations()
        check.tenant_name(v, tenant, "tenant")
        check.username(v, username)
        check.login_password(v, password)
        v.raise_if_any()
        await self._throttle.check(tenant, username, client_address)
        found_tenant, user = await self._store.login_candidate(tenant, username)
        # Verify even when there is no user (against a dummy hash): the answer's time must not tell.
        verdict = await self._passwords.verify(user.password_hash if user else None, password)
        if found_tenant is None or user is None or user.disabled or not verdict.ok:
            await self._throttle.failed(tenant, username, client_address)
            raise errors.Unauthenticated(LOGIN_FAILED, reason="LOGIN_FAILED")
        if verdict.needs_rehash:
            new_hash = await self._passwords.hash(password)
            await self._store.set_password_hash(user.id, new_hash, now=at(self._clock()), bump_version=False)
        await self._throttle.succeeded(tenant, username)
        return SignedIn(found_tenant, user, await self._sessions.start(user, found_tenant))

    # --- RefreshToken and Logout -------------------------------------------------------------

    async def refresh(self, *, refresh_token: str) -> Session:
        if not refresh_token:
            raise errors.InvalidArgument.field("refresh_token", "is required")
        if not looks_like_refresh_token(refresh_token):
            raise errors.Unauthenticated(INVALID_REFRESH, reason="INVALID_REFRESH_TOKEN")
        token_hash = hash_refresh_token(refresh_token)
        record = await self._store.refresh(token_hash)
        now = self._clock()
        if record is None or record.revoked_at or record.expires_at <= at(now):
            raise errors.Unauthenticated(INVALID_REFRESH, reason="INVALID_REFRESH_TOKEN")
        # A spent token coming back means two holders: the thief's or the owner's copy. End them all.
        if record.spent_at or not await self._store.spend_refresh(token_hash, now=at(now)):
            await self._store.revoke_family(record.family_id, now=at(now))
            raise errors.Unauthenticated(INVALID_REFRESH, reason="REFRESH_TOKEN_REUSED")
        user = await self._store.user(record.tenant_id, record.user_id)
        tenant = await self._store.tenant(record.tenant_id)
        if user is None or tenant is None or user.disabled:
            await self._store.revoke_family(record.family_id, now=at(now))
            raise errors.Unauthenticated(INVALID_REFRESH, reason="INVALID_REFRESH_TOKEN")
        started = await self._store.family_started(record.family_id)
        return await self._sessions.start(
            user, tenant, family_id=record.family_id, family_started=started / 1_000_000
        )

    async def logout(self, *, refresh_token: str, principal: Principal | None) -> None:
        """Revokes the refresh token's family, and denies the caller's access token if one came."""
        if not refresh_token and principal is None:
            raise errors.InvalidArgument.field("refresh_token", "is required without an access token")
        now = self._clock()
        if refresh_token:
            record = (
                await self._store.refresh(hash_refresh_token(refresh_token))
                if looks_like_refresh_token(refresh_token)
                else None
            )
            if record is None:
                raise errors.Unauthenticated(INVALID_REFRESH, reason="INVALID_REFRESH_TOKEN")
            await self._store.revoke_family(record.family_id, now=at(now))
        if principal is not None and principal.jti:
            await self._revocations.deny(principal.jti, expires_at=principal.expires_at, now=now)

    # --- keys, WhoAmI, service tokens --------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        return self._keys.jwks()

    async def who_am_i(self, principal: Principal) -> Identity:
        roles = tuple(sorted(principal.roles))
        if principal.is_service:
            return Identity(None, None, roles, principal.tier)
        user = await self._store.user(principal.tenant_id, principal.user_id)
        tenant = await self._store.tenant(principal.tenant_id)
        if user is None or tenant is None:
            raise errors.Unauthenticated("this account no longer exists", reason="ACCOUNT_GONE")
        return Identity(user, tenant, roles, principal.tier, await self._quota.quota())

    async def issue_service_token(self, *, service_name: str, secret: str) -> Session:
        v = Violations()
        check.service_name(v, service_name)
        v.raise_if_any()
        if not (
            secret
            and self._service_secret
            and hmac.compare_digest(secret.encode(), self._service_secret.encode())
        ):
            raise errors.Unauthenticated("invalid service credential", reason="INVALID_SERVICE_SECRET")
        access = self._sessions.tokens.access_token(
            subject=f"service:{service_name}",
            tenant=ALL_TENANTS,
            roles=(ROLE_SERVICE,),
            tier=SERVICE_TIER,
            issued_at=self._sessions.now(),
        )
        return Session(access.token, "", self._sessions.tokens.access_ttl, 0)

    # --- ChangePassword ----------------------------------------------------------------------

    async def change_password(self, principal: Principal, *, old_password: str, new_password: str) -> Session:
        if principal.is_service:
            raise errors.PermissionDenied("a service has no password", reason="SERVICE_CALLER")
        v = Violations()
        check.login_password(v, old_password, "old_password")
        v.raise_if_any()
        check_policy(new_password, field="new_password")
        if new_password == old_password:
            raise errors.InvalidArgument.field("new_password", "must differ from the old password")
        user = await self._store.user(principal.tenant_id, principal.user_id)
        tenant = await self._store.tenant(principal.tenant_id)
        if user is None or tenant is None:
            raise errors.Unauthenticated("this account no longer exists", reason="ACCOUNT_GONE")
        # A stolen access token must not become a password-guessing oracle: same throttle as Login.
        await self._throttle.check(tenant.name, user.username, "")
        if not (await self._passwords.verify(user.password_hash, old_password)).ok:
            await self._throttle.failed(tenant.name, user.username, "")
            raise errors.InvalidArgument.field("old_password", "is not the current password")
        new_hash = await self._passwords.hash(new_password)
        as_of = self._sessions.now()
        await self._store.set_password_hash(user.id, new_hash, now=at(as_of), bump_version=True)
        await self._sessions.end_all(user.id, as_of=as_of)
        # Issued at exactly `as_of`: not before it, so these survive the mark just set.
        return await self._sessions.start(user, tenant, issued_at=as_of)
