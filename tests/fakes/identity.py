"""In-memory fakes of identity's protocols (services/identity/service.py, admin.py, operator.py,
sessions.py, and WhoAmI's Quota), so the rules run in milliseconds without PostgreSQL, Redis or argon2."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from services.identity.models import (
    UNKNOWN_QUOTA,
    Duplicate,
    RefreshRecord,
    RequestRecord,
    Tenant,
    TenantQuota,
    User,
)
from services.identity.passwords import Verification
from services.platform import errors


class FakeIdentityStore:
    """Identity's tables in dicts: Store, AdminStore, OperatorStore and SessionStore at once, with
    the same unique constraints (tenant name, username per tenant, request id) and version guards."""

    def __init__(self) -> None:
        self.tenants: dict[str, Tenant] = {}
        self.users: dict[str, User] = {}
        self.requests: dict[tuple[str, str, str], RequestRecord] = {}
        self.tokens: dict[str, RefreshRecord] = {}

    # --- tenants and users -------------------------------------------------------------------

    async def create(self, *, tenant: Tenant | None, user: User, request: RequestRecord | None) -> None:
        key = (request.kind, request.scope, request.request_id) if request else None
        taken_name = tenant is not None and any(t.name == tenant.name for t in self.tenants.values())
        taken_user = any(
            u.tenant_id == user.tenant_id and u.username == user.username for u in self.users.values()
        )
        if taken_name or taken_user or (key is not None and key in self.requests):
            raise Duplicate()
        if tenant is not None:
            self.tenants[tenant.id] = tenant
        self.users[user.id] = user
        if request is not None and key is not None:
            self.requests[key] = request

    async def request(self, kind: str, scope: str, request_id: str) -> RequestRecord | None:
        return self.requests.get((kind, scope, request_id))

    async def tenant(self, tenant_id: str) -> Tenant | None:
        return self.tenants.get(tenant_id)

    async def tenant_by_name(self, name: str) -> Tenant | None:
        return next((t for t in self.tenants.values() if t.name == name), None)

    async def list_tenants(self) -> list[Tenant]:
        return sorted(self.tenants.values(), key=lambda t: t.name)

    async def user(self, tenant_id: str, user_id: str) -> User | None:
        user = self.users.get(user_id)
        return user if user is not None and user.tenant_id == tenant_id else None

    async def user_by_name(self, tenant_id: str, username: str) -> User | None:
        return next(
            (u for u in self.users.values() if u.tenant_id == tenant_id and u.username == username), None
        )

    async def login_candidate(self, tenant_name: str, username: str) -> tuple[Tenant | None, User | None]:
        tenant = await self.tenant_by_name(tenant_name)
        if tenant is None:
            return None, None
        return tenant, await self.user_by_name(tenant.id, username)

    async def list_users(
        self, tenant_id: str, *, after_username: str | None, limit: int, include_disabled: bool
    ) -> list[User]:
        rows = sorted(
            (
                u
                for u in self.users.values()
                if u.tenant_id == tenant_id
                and (include_disabled or not u.disabled)
                and (after_username is None or u.username > after_username)
            ),
            key=lambda u: u.username,
        )
        return rows[:limit]

    async def count_active_owners(self, tenant_id: str) -> int:
        return sum(
            1 for u in self.users.values() if u.tenant_id == tenant_id and u.is_owner and not u.disabled
        )

    async def update_user(
        self, tenant_id: str, user_id: str, *, expected_version: int, values: Mapping[str, Any], now: int
    ) -> bool:
        user = await self.user(tenant_id, user_id)
        if user is None or user.version != expected_version:
            return False
        self.users[user_id] = dataclasses.replace(user, **values, version=user.version + 1, update_time=now)
        return True

    async def delete_user(self, tenant_id: str, user_id: str, *, expected_version: int) -> bool:
        user = await self.user(tenant_id, user_id)
        if user is None or user.version != expected_version:
            return False
        del self.users[user_id]
        self.tokens = {h: r for h, r in self.tokens.items() if r.user_id != user_id}
        return True

    async def update_tenant(
        self, tenant_id: str, *, expected_version: int, values: Mapping[str, Any], now: int
    ) -> bool:
        tenant = self.tenants.get(tenant_id)
        if tenant is None or tenant.version != expected_version:
            return False
        self.tenants[tenant_id] = dataclasses.replace(
            tenant, **values, version=tenant.version + 1, update_time=now
        )
        return True

    async def set_password_hash(
        self, user_id: str, password_hash: str, *, now: int, bump_version: bool
    ) -> None:
        user = self.users[user_id]
        if bump_version:
            user = dataclasses.replace(user, version=user.version + 1, update_time=now)
        self.users[user_id] = dataclasses.replace(user, password_hash=password_hash)

    # --- refresh tokens ----------------------------------------------------------------------

    async def add_refresh(self, record: RefreshRecord) -> None:
        self.tokens[record.token_hash] = record

    async def refresh(self, token_hash: str) -> RefreshRecord | None:
        return self.tokens.get(token_hash)

    async def spend_refresh(self, token_hash: str, *, now: int) -> bool:
        record = self.tokens[token_hash]
        if record.spent_at or record.revoked_at:
            return False
        self.tokens[token_hash] = dataclasses.replace(record, spent_at=now)
        return True

    async def family_started(self, family_id: str) -> int:
        return min(r.issued_at for r in self.tokens.values() if r.family_id == family_id)

    async def revoke_family(self, family_id: str, *, now: int) -> None:
        for h, r in self.tokens.items():
            if r.family_id == family_id and not r.revoked_at:
                self.tokens[h] = dataclasses.replace(r, revoked_at=now)

    async def revoke_user_sessions(self, user_id: str, *, now: int) -> None:
        for h, r in self.tokens.items():
            if r.user_id == user_id and not r.revoked_at:
                self.tokens[h] = dataclasses.replace(r, revoked_at=now)

    async def prune_dead_families(self, *, now: int) -> int:
        last: dict[str, int] = {}
        for r in self.tokens.values():
            last[r.family_id] = max(last.get(r.family_id, 0), r.expires_at)
        dead = {f for f, expires in last.items() if expires < now}
        before = len(self.tokens)
        self.tokens = {h: r for h, r in self.tokens.items() if r.family_id not in dead}
        return before - len(self.tokens)


class FakeRevocations:
    """The Revoker: remembers what would have been marked in Redis."""

    def __init__(self) -> None:
        self.valid_after: dict[str, float] = {}
        self.denied: dict[str, float] = {}

    async def void_tokens_before(self, user_id: str, when: float) -> None:
        self.valid_after[user_id] = when

    async def deny(self, jti: str, *, expires_at: float, now: float) -> None:
        self.denied[jti] = expires_at


class FakeHasher:
    """The Hasher without argon2: a readable 'hash' (never use outside tests)."""

    async def hash(self, password: str) -> str:
        return f"fake${password}"

    async def verify(self, stored_hash: str | None, password: str) -> Verification:
        return Verification(stored_hash is not None and stored_hash == f"fake${password}")


class FakeThrottle:
    """The Throttle: counts failures per tenant+username and refuses past `limit`."""

    def __init__(self, limit: int = 10) -> None:
        self.limit = limit
        self.failures: dict[tuple[str, str], int] = {}

    async def check(self, tenant: str, username: str, address: str) -> None:
        if self.failures.get((tenant, username), 0) >= self.limit:
            raise errors.ResourceExhausted(
                "too many failed sign-in attempts", retry_after=60, reason="LOGIN_THROTTLED"
            )

    async def failed(self, tenant: str, username: str, address: str) -> None:
        self.failures[(tenant, username)] = self.failures.get((tenant, username), 0) + 1

    async def succeeded(self, tenant: str, username: str) -> None:
        self.failures.pop((tenant, username), None)


class FakeQuota:
    """identity's Quota: answers `answer` (UNKNOWN unless a test sets one) and counts the asks."""

    def __init__(self, answer: TenantQuota = UNKNOWN_QUOTA) -> None:
        self.answer = answer
        self.asked = 0

    async def quota(self) -> TenantQuota:
        self.asked += 1
        return self.answer
