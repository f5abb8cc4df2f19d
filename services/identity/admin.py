"""Tenant administration: users and the tenant itself. Owner and admin only; everything is scoped by
the caller's tenant (from the token), so another tenant's user is simply NOT_FOUND.

Rules beyond the role check: only an owner grants the owner role or changes an owner; the service
and operator roles are never granted here; the tier is not the tenant's to set (the operator's CLI,
operator.py, sets it); a tenant always keeps one active owner; disabling or deleting a user ends their
sessions; a role change voids their access tokens (the next refresh carries the new roles).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from services.identity import validation as check
from services.identity.models import USER_ROLES, Duplicate, RequestRecord, Tenant, User, UserChanges
from services.identity.passwords import check_policy
from services.identity.service import Hasher, fingerprint
from services.identity.sessions import Revoker, Sessions, at
from services.platform import errors
from services.platform.auth import ROLE_MEMBER, ROLE_OPERATOR, ROLE_OWNER, ROLE_SERVICE, Principal
from services.platform.pagination import Page, PageTokens, paginate
from services.platform.validation import Violations, require_id

USER_PATHS = ("display_name", "roles", "disabled")
TENANT_PATHS = ("display_name",)
# Roles that exist but that no tenant RPC hands out: asking for one is an escalation, not a typo.
UNGRANTABLE_ROLES = (ROLE_SERVICE, ROLE_OPERATOR)


class AdminStore(Protocol):
    """Identity's tables as tenant administration uses them (create raises models.Duplicate)."""

    async def create(self, *, tenant: Tenant | None, user: User, request: RequestRecord | None) -> None: ...
    async def request(self, kind: str, scope: str, request_id: str) -> RequestRecord | None: ...
    async def tenant(self, tenant_id: str) -> Tenant | None: ...
    async def user(self, tenant_id: str, user_id: str) -> User | None: ...
    async def list_users(
        self, tenant_id: str, *, after_username: str | None, limit: int, include_disabled: bool
    ) -> list[User]: ...
    async def count_active_owners(self, tenant_id: str) -> int: ...
    async def update_user(
        self, tenant_id: str, user_id: str, *, expected_version: int, values: Mapping[str, Any], now: int
    ) -> bool: ...
    async def delete_user(self, tenant_id: str, user_id: str, *, expected_version: int) -> bool: ...
    async def update_tenant(
        self, tenant_id: str, *, expected_version: int, values: Mapping[str, Any], now: int
    ) -> bool: ...


def _username_cursor(raw: Any) -> str:
    if isinstance(raw, str):
        return raw
    raise ValueError("not a username cursor")


def _paths(paths: Sequence[str], allowed: tuple[str, ...]) -> list[str]:
    if not paths:
        raise errors.InvalidArgument.field("update_mask", f"is required (paths: {', '.join(allowed)} or *)")
    if "*" in paths:
        return list(allowed)
    unknown = [p for p in paths if p not in allowed]
    if unknown:
        raise errors.InvalidArgument.field(
            "update_mask", f"unknown path(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    return list(dict.fromkeys(paths))


def _roles(roles: Sequence[str], field: str) -> tuple[str, ...]:
    if not roles:
        raise errors.InvalidArgument.field(field, "must name at least one role")
    escalation = [r for r in roles if r in UNGRANTABLE_ROLES]
    if escalation:
        raise errors.PermissionDenied(
            f"the {', '.join(escalation)} role is never granted to a tenant's user",
            reason="ROLE_NOT_GRANTABLE",
        )
    bad = [r for r in roles if r not in USER_ROLES]
    if bad:
        raise errors.InvalidArgument.field(field, f"must be owner, admin or member, got {', '.join(bad)}")
    return tuple(r for r in USER_ROLES if r in roles)


def _check_etag(etag: str, current: str, what: str) -> None:
    if etag and etag != current:
        raise errors.Aborted(f"the {what} changed since it was read (etag mismatch); read it again")


def _is_owner(principal: Principal) -> bool:
    return ROLE_OWNER in principal.roles


class TenantAdmin:
    def __init__(
        self,
        *,
        store: AdminStore,
        passwords: Hasher,
        sessions: Sessions,
        revocations: Revoker,
        page_tokens: PageTokens,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._passwords = passwords
        self._sessions = sessions
        self._revocations = revocations
        self._page_tokens = page_tokens
        self._clock = clock

    async def _target(self, principal: Principal, user_id: str, field: str = "user_id") -> User:
        require_id(user_id, field)
        user = await self._store.user(principal.tenant_id, user_id)
        if user is None:
            raise errors.NotFound(f"user {user_id!r} not found")
        return user

    # --- users -------------------------------------------------------------------------------

    async def create_user(
        self,
        principal: Principal,
        *,
        username: str,
        password: str,
        display_name: str,
        roles: Sequence[str],
        request_id: str,
    ) -> User:
        principal.require_admin()
        v = Violations()
        check.username(v, username)
        check.display_name(v, display_name)
        v.request_id(request_id)
        v.raise_if_any()
        wanted = _roles(roles, "roles") if roles else (ROLE_MEMBER,)
        check_policy(password)
        if ROLE_OWNER in wanted and not _is_owner(principal):
            raise errors.PermissionDenied("only an owner may create owners", reason="OWNER_REQUIRED")
        print_ = fingerprint(username, display_name, ",".join(wanted))
        if request_id:
            replay = await self._replay(principal, request_id, print_)
            if replay is not None:
                return replay
        now = at(self._clock())
        user = User(
            id=str(uuid.uuid4()),
            tenant_id=principal.tenant_id,
            username=username,
            display_name=display_name,
            roles=wanted,
            disabled=False,
            version=1,
            create_time=now,
            update_time=now,
            password_hash=await self._passwords.hash(password),
        )
        request = (
            RequestRecord(
                kind="create_user",
                scope=principal.tenant_id,
                request_id=request_id,
                fingerprint=print_,
                tenant_id=principal.tenant_id,
                user_id=user.id,
            )
            if request_id
            else None
        )
        try:
            await self._store.create(tenant=None, user=user, request=request)
        except Duplicate:
            if request_id:
                replay = await self._replay(principal, request_id, print_)
                if replay is not None:
                    return replay
            raise errors.AlreadyExists(f"username {username!r} is taken", reason="USER_EXISTS") from None
        return user

    async def _replay(self, principal: Principal, request_id: str, print_: str) -> User | None:
        record = await self._store.request("create_user", principal.tenant_id, request_id)
        if record is None:
            return None
        if record.fingerprint != print_:
            raise errors.InvalidArgument.field("request_id", "was already used for a different request")
        user = await self._store.user(principal.tenant_id, record.user_id)
        if user is None:
            raise errors.NotFound("the user this request created has since been deleted")
        return user

    async def get_user(self, principal: Principal, user_id: str) -> User:
        principal.require_admin()
        return await self._target(principal, user_id)

    async def list_users(
        self, principal: Principal, *, page_size: int, page_token: str, include_disabled: bool
    ) -> Page[User]:
        """The tenant's users by username (a keyset on the unique username)."""
        principal.require_admin()

        async def fetch(after: str | None, limit: int) -> list[User]:
            return await self._store.list_users(
                principal.tenant_id, after_username=after, limit=limit, include_disabled=include_disabled
            )

        return await paginate(
            self._page_tokens,
            ("identity.ListUsers", principal.tenant_id, include_disabled),
            page_size=page_size,
            page_token=page_token,
            parse=_username_cursor,
            fetch=fetch,
            cursor_of=lambda user: user.username,
        )

    async def _keeps_an_owner(self, target: User, *, loses_owner: bool) -> None:
        if target.is_owner and not target.disabled and loses_owner:
            if await self._store.count_active_owners(target.tenant_id) <= 1:
                raise errors.FailedPrecondition(
                    "a tenant must keep at least one active owner",
                    [errors.Violation("owner", "this is the tenant's last active owner", "LAST_OWNER")],
                    reason="LAST_OWNER",
                )

    def _may_change(self, principal: Principal, target: User) -> None:
        if target.is_owner and not _is_owner(principal):
            raise errors.PermissionDenied("only an owner may change an owner", reason="OWNER_REQUIRED")

    async def update_user(
        self, principal: Principal, *, user_id: str, etag: str, paths: Sequence[str], changes: UserChanges
    ) -> User:
        principal.require_admin()
        fields = _paths(paths, USER_PATHS)
        target = await self._target(principal, user_id, "user.id")
        _check_etag(etag, target.etag, "user")
        self._may_change(principal, target)
        values: dict[str, Any] = {}
        if "display_name" in fields:
            v = Violations()
            check.display_name(v, changes.display_name, "user.display_name")
            v.raise_if_any()
            values["display_name"] = changes.display_name
        if "roles" in fields:
            roles = _roles(changes.roles, "user.roles")
            if ROLE_OWNER in roles and not target.is_owner and not _is_owner(principal):
                raise errors.PermissionDenied(
                    "only an owner may grant the owner role", reason="OWNER_REQUIRED"
                )
            values["roles"] = roles
        if "disabled" in fields:
            values["disabled"] = changes.disabled
        await self._keeps_an_owner(
            target,
            loses_owner=ROLE_OWNER not in values.get("roles", target.roles) or values.get("disabled", False),
        )
        as_of = self._sessions.now()
        if not await self._store.update_user(
            principal.tenant_id, user_id, expected_version=target.version, values=values, now=at(as_of)
        ):
            raise errors.Aborted("the user changed while it was being updated; read it again")
        if values.get("disabled") and not target.disabled:
            await self._sessions.end_all(user_id, as_of=as_of)
        elif "roles" in values and tuple(values["roles"]) != target.roles:
            await self._revocations.void_tokens_before(user_id, as_of)
        return await self._target(principal, user_id, "user.id")

    async def delete_user(self, principal: Principal, *, user_id: str, etag: str) -> None:
        principal.require_admin()
        target = await self._target(principal, user_id)
        _check_etag(etag, target.etag, "user")
        self._may_change(principal, target)
        await self._keeps_an_owner(target, loses_owner=True)
        if not await self._store.delete_user(principal.tenant_id, user_id, expected_version=target.version):
            raise errors.Aborted("the user changed while it was being deleted; read it again")
        # The row is gone, but its access tokens would verify until they expire: void them.
        await self._revocations.void_tokens_before(user_id, self._sessions.now())

    # --- the tenant --------------------------------------------------------------------------

    async def get_tenant(self, principal: Principal) -> Tenant:
        principal.require_admin()
        tenant = await self._store.tenant(principal.tenant_id)
        if tenant is None:
            raise errors.NotFound("tenant not found")
        return tenant

    async def update_tenant(
        self, principal: Principal, *, etag: str, paths: Sequence[str], display_name: str
    ) -> Tenant:
        principal.require_admin()
        if "tier" in paths:
            raise errors.PermissionDenied(
                "the tier is set by the platform operator, not by the tenant", reason="OPERATOR_REQUIRED"
            )
        fields = _paths(paths, TENANT_PATHS)
        tenant = await self.get_tenant(principal)
        _check_etag(etag, tenant.etag, "tenant")
        values: dict[str, Any] = {}
        if "display_name" in fields:
            v = Violations()
            check.display_name(v, display_name, "tenant.display_name")
            v.raise_if_any()
            values["display_name"] = display_name
        if not await self._store.update_tenant(
            tenant.id, expected_version=tenant.version, values=values, now=at(self._clock())
        ):
            raise errors.Aborted("the tenant changed while it was being updated; read it again")
        return await self.get_tenant(principal)
