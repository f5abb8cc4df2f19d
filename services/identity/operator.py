"""The platform operator's use cases (`agentmesh admin`): tenants, tiers and password resets.

The operator belongs to no tenant and holds no token: the admin CLI builds these objects on the
database directly, with a Principal of role operator that no RPC can produce. Every method still
asks for that role, so wiring this into a servicer by mistake would not hand tenants the power.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from services.identity import validation as check
from services.identity.models import TIERS, Duplicate, RequestRecord, Tenant, User
from services.identity.passwords import check_policy
from services.identity.service import Hasher, tenant_with_owner
from services.identity.sessions import Revoker, SessionStore, at, end_sessions
from services.identity.tokens import token_time
from services.platform import errors
from services.platform.auth import ROLE_OPERATOR, Principal
from services.platform.validation import Violations


class OperatorStore(SessionStore, Protocol):
    """Identity's tables as the operator uses them (create raises models.Duplicate)."""

    async def create(self, *, tenant: Tenant | None, user: User, request: RequestRecord | None) -> None: ...
    async def list_tenants(self) -> list[Tenant]: ...
    async def tenant_by_name(self, name: str) -> Tenant | None: ...
    async def user_by_name(self, tenant_id: str, username: str) -> User | None: ...
    async def update_tenant(
        self, tenant_id: str, *, expected_version: int, values: Mapping[str, Any], now: int
    ) -> bool: ...
    async def set_password_hash(
        self, user_id: str, password_hash: str, *, now: int, bump_version: bool
    ) -> None: ...


def operator_principal(name: str = "") -> Principal:
    """The operator as the CLI acts: named after the OS user for the logs, in no tenant."""
    return Principal(
        user_id=f"operator:{name or getpass.getuser()}",
        tenant_id="",
        roles=frozenset({ROLE_OPERATOR}),
        tier="",
    )


def _tier(tier: str) -> str:
    if tier not in TIERS:
        raise errors.InvalidArgument.field("tier", f"must be one of {', '.join(TIERS)}, got {tier!r}")
    return tier


class Operator:
    def __init__(
        self,
        *,
        store: OperatorStore,
        passwords: Hasher,
        revocations: Revoker,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._passwords = passwords
        self._revocations = revocations
        self._clock = clock

    async def _tenant(self, name: str) -> Tenant:
        v = Violations()
        check.tenant_name(v, name, "tenant")
        v.raise_if_any()
        tenant = await self._store.tenant_by_name(name)
        if tenant is None:
            raise errors.NotFound(f"tenant {name!r} not found")
        return tenant

    async def list_tenants(self, principal: Principal) -> list[Tenant]:
        principal.require_operator()
        return await self._store.list_tenants()

    async def create_tenant(
        self, principal: Principal, *, name: str, tier: str, owner: str, password: str
    ) -> tuple[Tenant, User]:
        """A tenant on `tier` with its owner `owner`; ALREADY_EXISTS when the name is taken."""
        principal.require_operator()
        v = Violations()
        check.tenant_name(v, name, "name")
        check.username(v, owner, "owner")
        v.raise_if_any()
        _tier(tier)
        check_policy(password)
        tenant, user = tenant_with_owner(
            tenant_name=name,
            tier=tier,
            username=owner,
            display_name=owner,
            password_hash=await self._passwords.hash(password),
            now=at(self._clock()),
        )
        try:
            await self._store.create(tenant=tenant, user=user, request=None)
        except Duplicate:
            raise errors.AlreadyExists(f"tenant name {name!r} is taken", reason="TENANT_EXISTS") from None
        return tenant, user

    async def set_tier(self, principal: Principal, *, name: str, tier: str) -> Tenant:
        """Moves the tenant to `tier`. Tokens carry the tier: those issued from now on (logins,
        refreshes) have the new one; access tokens already out keep theirs until they expire."""
        principal.require_operator()
        _tier(tier)
        tenant = await self._tenant(name)
        if not await self._store.update_tenant(
            tenant.id, expected_version=tenant.version, values={"tier": tier}, now=at(self._clock())
        ):
            raise errors.Aborted("the tenant changed while its tier was being set; try again")
        return await self._tenant(name)

    async def reset_password(
        self, principal: Principal, *, tenant: str, username: str, password: str
    ) -> User:
        """Sets the user's password and ends every session of theirs."""
        principal.require_operator()
        found = await self._tenant(tenant)
        v = Violations()
        check.username(v, username)
        v.raise_if_any()
        user = await self._store.user_by_name(found.id, username)
        if user is None:
            raise errors.NotFound(f"user {username!r} not found in tenant {tenant!r}")
        check_policy(password)
        as_of = token_time(self._clock())
        await self._store.set_password_hash(
            user.id, await self._passwords.hash(password), now=at(as_of), bump_version=True
        )
        await end_sessions(self._store, self._revocations, user.id, as_of=as_of)
        return user
