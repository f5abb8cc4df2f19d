"""Identity's domain objects (plain dataclasses; no SQL, no protobuf)."""

from __future__ import annotations

import dataclasses
import datetime

from services.platform.auth import ROLE_ADMIN, ROLE_MEMBER, ROLE_OWNER

TIERS = ("free", "pro", "enterprise")
USER_ROLES = (ROLE_OWNER, ROLE_ADMIN, ROLE_MEMBER)


def etag_of(version: int) -> str:
    return f'W/"{version}"'


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tenant:
    id: str
    name: str
    display_name: str
    tier: str
    version: int
    create_time: datetime.datetime
    update_time: datetime.datetime

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
    create_time: datetime.datetime
    update_time: datetime.datetime
    password_hash: str = dataclasses.field(default="", repr=False)

    @property
    def etag(self) -> str:
        return etag_of(self.version)

    @property
    def is_owner(self) -> bool:
        return ROLE_OWNER in self.roles


@dataclasses.dataclass(frozen=True, kw_only=True)
class RefreshRecord:
    token_hash: str
    family_id: str
    user_id: str
    tenant_id: str
    issued_at: datetime.datetime
    expires_at: datetime.datetime
    spent_at: datetime.datetime | None
    revoked_at: datetime.datetime | None


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
