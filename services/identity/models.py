"""Identity's domain objects: plain dataclasses, roles and tiers as their names (no SQL, no protobuf).

Times are int microseconds since the epoch (services/platform/timestamps.py), 0 meaning unset.
"""

from __future__ import annotations

import dataclasses

from services.platform.auth import ROLE_ADMIN, ROLE_MEMBER, ROLE_OWNER

TIERS = ("free", "pro", "enterprise")
USER_ROLES = (ROLE_OWNER, ROLE_ADMIN, ROLE_MEMBER)


class Duplicate(Exception):
    """A store refused a write on a unique name or request id (taken, or a racing retry)."""


def etag_of(version: int) -> str:
    return f'W/"{version}"'


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tenant:
    id: str
    name: str
    display_name: str
    tier: str
    version: int
    create_time: int
    update_time: int

    @property
    def etag(self) -> str:
        return etag_of(self.version)


@dataclasses.dataclass(frozen=True, kw_only=True)
class User:
    id: str
    tenant_id: str
    username: str
    display_name: str
    roles: tuple[str, ...]
    disabled: bool
    version: int
    create_time: int
    update_time: int
    password_hash: str = dataclasses.field(default="", repr=False)

    @property
    def etag(self) -> str:
        return etag_of(self.version)

    @property
    def is_owner(self) -> bool:
        return ROLE_OWNER in self.roles


@dataclasses.dataclass(frozen=True, kw_only=True)
class UserChanges:
    """What UpdateUser may change (the mask says which of these apply)."""

    display_name: str = ""
    roles: tuple[str, ...] = ()
    disabled: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class RefreshRecord:
    token_hash: str
    family_id: str
    user_id: str
    tenant_id: str
    issued_at: int
    expires_at: int
    spent_at: int = 0
    revoked_at: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestRecord:
    """A remembered request_id: what it created, and a fingerprint of the request that did it."""

    kind: str
    scope: str
    request_id: str
    fingerprint: str
    tenant_id: str
    user_id: str


@dataclasses.dataclass(frozen=True)
class Session:
    """What Login, SignUp, RefreshToken and ChangePassword hand out."""

    access_token: str
    refresh_token: str
    access_ttl: int
    refresh_ttl: int


@dataclasses.dataclass(frozen=True)
class SignedIn:
    tenant: Tenant
    user: User
    session: Session


@dataclasses.dataclass(frozen=True, kw_only=True)
class TenantQuota:
    """A tenant's monthly quota as conversation (which owns usage) reports it; a limit of 0 is
    unlimited. `known` is False when conversation did not answer (every figure then 0)."""

    known: bool = True
    limit_tokens: int = 0
    used_tokens: int = 0
    remaining_tokens: int = 0
    limit_cost_micros: int = 0
    used_cost_micros: int = 0
    reset_time_us: int = 0

    @property
    def exhausted(self) -> bool:
        return self.known and any(
            0 < limit <= used
            for limit, used in (
                (self.limit_tokens, self.used_tokens),
                (self.limit_cost_micros, self.used_cost_micros),
            )
        )


UNKNOWN_QUOTA = TenantQuota(known=False)


@dataclasses.dataclass(frozen=True)
class Identity:
    """What WhoAmI answers: the user and tenant (None for a service caller), roles, tier, and the
    tenant's quota (None for a service caller)."""

    user: User | None
    tenant: Tenant | None
    roles: tuple[str, ...]
    tier: str
    quota: TenantQuota | None = None
