"""SQLAlchemy 2 (async Core) access to identity's tables. No rules here: the service decides.

The tables keep their timestamp columns; the domain's int microseconds are converted here, at the
edge, and nowhere else.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.identity.models import Duplicate, RefreshRecord, RequestRecord, Tenant, User

metadata = sa.MetaData()

tenants = sa.Table(
    "identity_tenants",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(63), nullable=False, unique=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("tier", sa.String(20), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
)

users = sa.Table(
    "identity_users",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant_id", sa.String(36), sa.ForeignKey("identity_tenants.id"), nullable=False),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("roles", sa.String(100), nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
)

refresh_tokens = sa.Table(
    "identity_refresh_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("family_id", sa.String(36), nullable=False),
    sa.Column("user_id", sa.String(36), sa.ForeignKey("identity_users.id"), nullable=False),
    sa.Column("tenant_id", sa.String(36), nullable=False),
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("spent_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)

request_ids = sa.Table(
    "identity_request_ids",
    metadata,
    sa.Column("kind", sa.String(20), primary_key=True),
    sa.Column("scope", sa.String(36), primary_key=True),
    sa.Column("request_id", sa.String(128), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("tenant_id", sa.String(36), nullable=False),
    sa.Column("user_id", sa.String(36), nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
)


class _Stale(Exception):
    """Rolls a transaction back when its guarded row moved on."""


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _column_time(us: int) -> datetime.datetime:
    return _EPOCH + datetime.timedelta(microseconds=us)


def _domain_time(value: datetime.datetime | None) -> int:
    if value is None:
        return 0
    # SQLite hands back naive datetimes; everything stored is UTC.
    aware = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    return (aware - _EPOCH) // datetime.timedelta(microseconds=1)


def _tenant(row: Mapping[Any, Any]) -> Tenant:
    return Tenant(
        id=row["id"],
        name=row["name"],
        display_name=row["display_name"],
        tier=row["tier"],
        version=row["version"],
        create_time=_domain_time(row["create_time"]),
        update_time=_domain_time(row["update_time"]),
    )


def _user(row: Mapping[Any, Any]) -> User:
    return User(
        id=row["id"],
        tenant_id=row["tenant_id"],
        username=row["username"],
        display_name=row["display_name"],
        roles=tuple(r for r in row["roles"].split(",") if r),
        disabled=bool(row["disabled"]),
        version=row["version"],
        create_time=_domain_time(row["create_time"]),
        update_time=_domain_time(row["update_time"]),
        password_hash=row["password_hash"],
    )


def _tenant_values(t: Tenant) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "display_name": t.display_name,
        "tier": t.tier,
        "version": t.version,
        "create_time": _column_time(t.create_time),
        "update_time": _column_time(t.update_time),
    }


def _user_values(u: User) -> dict[str, Any]:
    return {
        "id": u.id,
        "tenant_id": u.tenant_id,
        "username": u.username,
        "display_name": u.display_name,
        "password_hash": u.password_hash,
        "roles": ",".join(u.roles),
        "disabled": u.disabled,
        "version": u.version,
        "create_time": _column_time(u.create_time),
        "update_time": _column_time(u.update_time),
    }


class IdentityStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    # --- tenants and users -------------------------------------------------------------------

    async def _insert(
        self,
        conn: AsyncConnection,
        *,
        tenant: Tenant | None,
        user: User,
        request: RequestRecord | None,
        now: datetime.datetime,
    ) -> None:
        if request is not None:
            await conn.execute(
                request_ids.insert().values(
                    kind=request.kind,
                    scope=request.scope,
                    request_id=request.request_id,
                    fingerprint=request.fingerprint,
                    tenant_id=request.tenant_id,
                    user_id=request.user_id,
                    create_time=now,
                )
            )
        if tenant is not None:
            await conn.execute(tenants.insert().values(**_tenant_values(tenant)))
        await conn.execute(users.insert().values(**_user_values(user)))

    async def create(self, *, tenant: Tenant | None, user: User, request: RequestRecord | None) -> None:
        """Inserts the user (and its new tenant) and the request_id record in one transaction."""
        try:
            async with self._engine.begin() as conn:
                await self._insert(
                    conn, tenant=tenant, user=user, request=request, now=_column_time(user.create_time)
                )
        except IntegrityError:
            raise Duplicate() from None

    async def tenant(self, tenant_id: str) -> Tenant | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(tenants).where(tenants.c.id == tenant_id))).mappings().first()
        return _tenant(row) if row else None

    async def list_tenants(self) -> list[Tenant]:
        """Every tenant, by name (the operator's view; tenants are few next to their users)."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(sa.select(tenants).order_by(tenants.c.name))).mappings().all()
        return [_tenant(r) for r in rows]

    async def tenant_by_name(self, name: str) -> Tenant | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(tenants).where(tenants.c.name == name))).mappings().first()
        return _tenant(row) if row else None

    async def login_candidate(self, tenant_name: str, username: str) -> tuple[Tenant | None, User | None]:
        """The tenant and user a login names, in one query whatever exists (same cost either way)."""
        query = (
            sa.select(tenants, *[c.label(f"u_{c.name}") for c in users.c])
            .select_from(
                tenants.outerjoin(
                    users, sa.and_(users.c.tenant_id == tenants.c.id, users.c.username == username)
                )
            )
            .where(tenants.c.name == tenant_name)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None, None
        tenant = _tenant(row)
        if row["u_id"] is None:
            return tenant, None
        return tenant, _user({c.name: row[f"u_{c.name}"] for c in users.c})

    async def user(self, tenant_id: str, user_id: str) -> User | None:
        async with self._engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        sa.select(users).where(users.c.id == user_id, users.c.tenant_id == tenant_id)
                    )
                )
                .mappings()
                .first()
            )
        return _user(row) if row else None

    async def user_by_name(self, tenant_id: str, username: str) -> User | None:
        async with self._engine.connect() as conn:
            query = sa.select(users).where(users.c.tenant_id == tenant_id, users.c.username == username)
            row = (await conn.execute(query)).mappings().first()
        return _user(row) if row else None

    async def list_users(
        self, tenant_id: str, *, after_username: str | None, limit: int, include_disabled: bool
    ) -> list[User]:
        query = sa.select(users).where(users.c.tenant_id == tenant_id)
        if after_username is not None:
            query = query.where(users.c.username > after_username)
        if not include_disabled:
            query = query.where(users.c.disabled == sa.false())
        query = query.order_by(users.c.username).limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_user(r) for r in rows]

    async def count_active_owners(self, tenant_id: str) -> int:
        query = (
            sa.select(sa.func.count())
            .select_from(users)
            .where(
                users.c.tenant_id == tenant_id,
                users.c.disabled == sa.false(),
                # roles is a short comma list; owner is matched as a whole item.
                sa.or_(
                    users.c.roles == "owner",
                    users.c.roles.like("owner,%"),
                    users.c.roles.like("%,owner"),
                    users.c.roles.like("%,owner,%"),
                ),
            )
        )
        async with self._engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def update_user(
        self, tenant_id: str, user_id: str, *, expected_version: int, values: Mapping[str, Any], now: int
    ) -> bool:
        """Applies `values` if the row is still at `expected_version`; False when it moved on (or is gone)."""
        changes = dict(values)
        if "roles" in changes:
            changes["roles"] = ",".join(changes["roles"])
        statement = (
            users.update()
            .where(users.c.id == user_id, users.c.tenant_id == tenant_id, users.c.version == expected_version)
            .values(**changes, version=users.c.version + 1, update_time=_column_time(now))
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(statement)
        return result.rowcount == 1

    async def delete_user(self, tenant_id: str, user_id: str, *, expected_version: int) -> bool:
        """Deletes the user and their refresh tokens if still at `expected_version`; else changes nothing."""
        try:
            async with self._engine.begin() as conn:
                await conn.execute(refresh_tokens.delete().where(refresh_tokens.c.user_id == user_id))
                result = await conn.execute(
                    users.delete().where(
                        users.c.id == user_id,
                        users.c.tenant_id == tenant_id,
                        users.c.version == expected_version,
                    )
                )
                if result.rowcount != 1:
                    raise _Stale()
        except _Stale:
            return False
        return True

    async def update_tenant(
        self, tenant_id: str, *, expected_version: int, values: Mapping[str, Any], now: int
    ) -> bool:
        statement = (
            tenants.update()
            .where(tenants.c.id == tenant_id, tenants.c.version == expected_version)
            .values(**values, version=tenants.c.version + 1, update_time=_column_time(now))
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(statement)
        return result.rowcount == 1

    async def set_password_hash(
        self, user_id: str, password_hash: str, *, now: int, bump_version: bool
    ) -> None:
        values: dict[str, Any] = {"password_hash": password_hash}
        if bump_version:
            values.update(version=users.c.version + 1, update_time=_column_time(now))
        async with self._engine.begin() as conn:
            await conn.execute(users.update().where(users.c.id == user_id).values(**values))

    async def request(self, kind: str, scope: str, request_id: str) -> RequestRecord | None:
        query = sa.select(request_ids).where(
            request_ids.c.kind == kind, request_ids.c.scope == scope, request_ids.c.request_id == request_id
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        return RequestRecord(
            kind=row["kind"],
            scope=row["scope"],
            request_id=row["request_id"],
            fingerprint=row["fingerprint"],
            tenant_id=row["tenant_id"],
            user_id=row["user_id"],
        )

    # --- refresh tokens ------------------------------------------------------------------------

    async def add_refresh(self, record: RefreshRecord) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                refresh_tokens.insert().values(
                    token_hash=record.token_hash,
                    family_id=record.family_id,
                    user_id=record.user_id,
                    tenant_id=record.tenant_id,
                    issued_at=_column_time(record.issued_at),
                    expires_at=_column_time(record.expires_at),
                )
            )

    async def refresh(self, token_hash: str) -> RefreshRecord | None:
        query = sa.select(refresh_tokens).where(refresh_tokens.c.token_hash == token_hash)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        return RefreshRecord(
            token_hash=row["token_hash"],
            family_id=row["family_id"],
            user_id=row["user_id"],
            tenant_id=row["tenant_id"],
            issued_at=_domain_time(row["issued_at"]),
            expires_at=_domain_time(row["expires_at"]),
            spent_at=_domain_time(row["spent_at"]),
            revoked_at=_domain_time(row["revoked_at"]),
        )

    async def spend_refresh(self, token_hash: str, *, now: int) -> bool:
        """Marks a live token spent; False when another call spent or revoked it first."""
        statement = (
            refresh_tokens.update()
            .where(
                refresh_tokens.c.token_hash == token_hash,
                refresh_tokens.c.spent_at.is_(None),
                refresh_tokens.c.revoked_at.is_(None),
            )
            .values(spent_at=_column_time(now))
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(statement)
        return result.rowcount == 1

    async def family_started(self, family_id: str) -> int:
        """When the family's first refresh token was issued (its login)."""
        query = sa.select(sa.func.min(refresh_tokens.c.issued_at)).where(
            refresh_tokens.c.family_id == family_id
        )
        async with self._engine.connect() as conn:
            return _domain_time((await conn.execute(query)).scalar_one())

    async def prune_dead_families(self, *, now: int) -> int:
        """Deletes the refresh tokens of every family whose last token has expired (its session is
        over: rotation never issues past the session maximum); returns how many rows went. A family
        with any live token is kept whole, since its first token dates its session."""
        rt = refresh_tokens.c
        dead = (
            sa.select(rt.family_id)
            .group_by(rt.family_id)
            .having(sa.func.max(rt.expires_at) < _column_time(now))
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(refresh_tokens.delete().where(rt.family_id.in_(dead)))
        return result.rowcount

    async def revoke_family(self, family_id: str, *, now: int) -> None:
        statement = (
            refresh_tokens.update()
            .where(refresh_tokens.c.family_id == family_id, refresh_tokens.c.revoked_at.is_(None))
            .values(revoked_at=_column_time(now))
        )
        async with self._engine.begin() as conn:
            await conn.execute(statement)

    async def revoke_user_sessions(self, user_id: str, *, now: int) -> None:
        statement = (
            refresh_tokens.update()
            .where(refresh_tokens.c.user_id == user_id, refresh_tokens.c.revoked_at.is_(None))
            .values(revoked_at=_column_time(now))
        )
        async with self._engine.begin() as conn:
            await conn.execute(statement)
