"""SQLAlchemy 2 async Core access to the agents service's tables (SQLite and PostgreSQL).

Every write that creates a version does it in one transaction with the change it records: the agent
row, its immutable version row, the request id and the tenant's agent count commit or roll back
together.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.agents.models import Agent, AgentVersion, ChangeType, Template
from services.agents.service import DuplicateRequest, LimitReached, VersionConflict

metadata = sa.MetaData()

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant_id", sa.String(128)),
    sa.Column("display_name", sa.String(100)),
    sa.Column("description", sa.Text),
    sa.Column("state", sa.String(16)),
    sa.Column("config", sa.JSON),
    sa.Column("version", sa.BigInteger),
    sa.Column("creator", sa.String(128)),
    sa.Column("template_id", sa.String(64)),
    sa.Column("create_time_us", sa.BigInteger),
    sa.Column("update_time_us", sa.BigInteger),
    sa.Column("deleted_at_us", sa.BigInteger, nullable=True),
)
agent_versions = sa.Table(
    "agent_versions",
    metadata,
    sa.Column("agent_id", sa.String(36), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True),
    sa.Column("tenant_id", sa.String(128)),
    sa.Column("content", sa.JSON),
    sa.Column("change_type", sa.String(16)),
    sa.Column("changed_fields", sa.JSON),
    sa.Column("author", sa.String(128)),
    sa.Column("create_time_us", sa.BigInteger),
    sa.Column("source_version", sa.BigInteger),
)
templates = sa.Table(
    "agent_templates",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(128)),
    sa.Column("display_name", sa.String(100)),
    sa.Column("description", sa.Text),
    sa.Column("config", sa.JSON),
    sa.Column("create_time_us", sa.BigInteger),
)
request_ids = sa.Table(
    "agent_request_ids",
    metadata,
    sa.Column("tenant_id", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("request_id", sa.String(128), primary_key=True),
    sa.Column("resource_id", sa.String(64)),
    sa.Column("create_time_us", sa.BigInteger),
)
counts = sa.Table(
    "tenant_agent_counts",
    metadata,
    sa.Column("tenant_id", sa.String(128), primary_key=True),
    sa.Column("count", sa.BigInteger),
)

_AGENT_COLUMNS = [c for c in agents.c if c.name != "deleted_at_us"]


def _agent(row: Any) -> Agent:
    return Agent(
        id=row.id,
        tenant_id=row.tenant_id,
        display_name=row.display_name,
        description=row.description,
        state=row.state,
        config=row.config,
        version=row.version,
        creator=row.creator,
        template_id=row.template_id,
        create_time_us=row.create_time_us,
        update_time_us=row.update_time_us,
    )


def _version(row: Any) -> AgentVersion:
    return AgentVersion(
        agent_id=row.agent_id,
        tenant_id=row.tenant_id,
        version=row.version,
        content=row.content,
        change_type=ChangeType(row.change_type),
        changed_fields=list(row.changed_fields),
        author=row.author,
        create_time_us=row.create_time_us,
        source_version=row.source_version,
    )


def _template(row: Any) -> Template:
    return Template(
        id=row.id,
        tenant_id=row.tenant_id,
        display_name=row.display_name,
        description=row.description,
        config=row.config,
        create_time_us=row.create_time_us,
    )


def _agent_values(agent: Agent) -> dict[str, Any]:
    return {
        "id": agent.id,
        "tenant_id": agent.tenant_id,
        "display_name": agent.display_name,
        "description": agent.description,
        "state": agent.state,
        "config": agent.config,
        "version": agent.version,
        "creator": agent.creator,
        "template_id": agent.template_id,
        "create_time_us": agent.create_time_us,
        "update_time_us": agent.update_time_us,
    }


def _version_values(v: AgentVersion) -> dict[str, Any]:
    return {
        "agent_id": v.agent_id,
        "version": v.version,
        "tenant_id": v.tenant_id,
        "content": v.content,
        "change_type": v.change_type.value,
        "changed_fields": v.changed_fields,
        "author": v.author,
        "create_time_us": v.create_time_us,
        "source_version": v.source_version,
    }


class AgentStore:
    """Queries for the agents service's own tables. `tenant_id=None` reads across tenants."""

    def __init__(self, *, engine: AsyncEngine):
        self._engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    # -- agents -------------------------------------------------------------------------------

    async def get_agent(self, tenant_id: str | None, agent_id: str) -> Agent | None:
        query = sa.select(*_AGENT_COLUMNS).where(agents.c.id == agent_id, agents.c.deleted_at_us.is_(None))
        if tenant_id is not None:
            query = query.where(agents.c.tenant_id == tenant_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _agent(row) if row else None

    async def agent_exists(self, tenant_id: str | None, agent_id: str, *, include_deleted: bool) -> bool:
        query = sa.select(agents.c.id).where(agents.c.id == agent_id)
        if tenant_id is not None:
            query = query.where(agents.c.tenant_id == tenant_id)
        if not include_deleted:
            query = query.where(agents.c.deleted_at_us.is_(None))
        async with self._engine.connect() as conn:
            return (await conn.execute(query)).first() is not None

    async def list_agents(
        self, tenant_id: str, *, state: str | None, after: tuple[int, str] | None, limit: int
    ) -> list[Agent]:
        query = sa.select(*_AGENT_COLUMNS).where(
            agents.c.tenant_id == tenant_id, agents.c.deleted_at_us.is_(None)
        )
        if state is not None:
            query = query.where(agents.c.state == state)
        if after is not None:
            query = query.where(sa.tuple_(agents.c.create_time_us, agents.c.id) > sa.tuple_(*after))
        query = query.order_by(agents.c.create_time_us, agents.c.id).limit(limit)
        async with self._engine.connect() as conn:
            return [_agent(r) for r in await conn.execute(query)]

    async def count_agents(self, tenant_id: str) -> int:
        async with self._engine.connect() as conn:
            value = await conn.scalar(sa.select(counts.c.count).where(counts.c.tenant_id == tenant_id))
        return int(value or 0)

    async def find_request(self, tenant_id: str, kind: str, request_id: str) -> str | None:
        query = sa.select(request_ids.c.resource_id).where(
            request_ids.c.tenant_id == tenant_id,
            request_ids.c.kind == kind,
            request_ids.c.request_id == request_id,
        )
        async with self._engine.connect() as conn:
            return await conn.scalar(query)

    async def _take_slot(self, conn: AsyncConnection, tenant_id: str, max_agents: int) -> None:
        await conn.execute(self._insert(counts).values(tenant_id=tenant_id, count=0).on_conflict_do_nothing())
        # The row lock serialises concurrent creates; each re-checks the count it sees after the lock.
        taken = await conn.execute(
            counts.update()
            .where(counts.c.tenant_id == tenant_id, counts.c.count < max_agents)
            .values(count=counts.c.count + 1)
        )
        if taken.rowcount != 1:
            raise LimitReached

    async def _remember_request(
        self, conn: AsyncConnection, tenant_id: str, kind: str, request_id: str, resource_id: str, now: int
    ) -> None:
        # No savepoint: a duplicate aborts the whole transaction, which is what we want.
        try:
            await conn.execute(
                request_ids.insert().values(
                    tenant_id=tenant_id,
                    kind=kind,
                    request_id=request_id,
                    resource_id=resource_id,
                    create_time_us=now,
                )
            )
        except IntegrityError:
            raise DuplicateRequest from None

    async def create_agent(
        self, agent: Agent, version: AgentVersion, *, max_agents: int, request_id: str = ""
    ) -> None:
        """Inserts the agent and its first version, taking one of the tenant's agent slots."""
        async with self._engine.begin() as conn:
            if request_id:
                await self._remember_request(
                    conn, agent.tenant_id, "agent", request_id, agent.id, agent.create_time_us
                )
            await self._take_slot(conn, agent.tenant_id, max_agents)
            await conn.execute(agents.insert().values(**_agent_values(agent)))
            await conn.execute(agent_versions.insert().values(**_version_values(version)))

    async def write_version(
        self, agent: Agent, version: AgentVersion, *, expected_version: int, delete: bool = False
    ) -> None:
        """Moves the agent from `expected_version` to `agent.version`, recording `version`.

        A conditional UPDATE (WHERE version = expected): of two writers that read the same version,
        exactly one changes the row; the other gets VersionConflict and nothing of it is stored.
        """
        values = _agent_values(agent)
        del values["id"], values["tenant_id"], values["creator"], values["create_time_us"]
        if delete:
            values["deleted_at_us"] = agent.update_time_us
        async with self._engine.begin() as conn:
            result = await conn.execute(
                agents.update()
                .where(
                    agents.c.id == agent.id,
                    agents.c.tenant_id == agent.tenant_id,
                    agents.c.version == expected_version,
                    agents.c.deleted_at_us.is_(None),
                )
                .values(**values)
            )
            if result.rowcount != 1:
                raise VersionConflict
            await conn.execute(agent_versions.insert().values(**_version_values(version)))
            if delete:
                await conn.execute(
                    counts.update()
                    .where(counts.c.tenant_id == agent.tenant_id, counts.c.count > 0)
                    .values(count=counts.c.count - 1)
                )

    async def bulk_insert_agents(self, pairs: Iterable[tuple[Agent, AgentVersion]]) -> None:
        """Setup for benchmarks and tests: inserts agents without tier checks, counting them."""
        pairs = list(pairs)
        if not pairs:
            return
        async with self._engine.begin() as conn:
            await conn.execute(agents.insert(), [_agent_values(a) for a, _ in pairs])
            await conn.execute(agent_versions.insert(), [_version_values(v) for _, v in pairs])
            by_tenant: dict[str, int] = {}
            for a, _ in pairs:
                by_tenant[a.tenant_id] = by_tenant.get(a.tenant_id, 0) + 1
            for tenant_id, n in by_tenant.items():
                await conn.execute(
                    self._insert(counts).values(tenant_id=tenant_id, count=0).on_conflict_do_nothing()
                )
                await conn.execute(
                    counts.update().where(counts.c.tenant_id == tenant_id).values(count=counts.c.count + n)
                )

    # -- versions -----------------------------------------------------------------------------

    async def get_version(self, tenant_id: str | None, agent_id: str, version: int) -> AgentVersion | None:
        query = sa.select(agent_versions).where(
            agent_versions.c.agent_id == agent_id, agent_versions.c.version == version
        )
        if tenant_id is not None:
            query = query.where(agent_versions.c.tenant_id == tenant_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _version(row) if row else None

    async def list_versions(
        self, tenant_id: str, agent_id: str, *, before: int | None, limit: int
    ) -> list[AgentVersion]:
        query = sa.select(agent_versions).where(
            agent_versions.c.agent_id == agent_id, agent_versions.c.tenant_id == tenant_id
        )
        if before is not None:
            query = query.where(agent_versions.c.version < before)
        query = query.order_by(agent_versions.c.version.desc()).limit(limit)
        async with self._engine.connect() as conn:
            return [_version(r) for r in await conn.execute(query)]

    # -- templates ----------------------------------------------------------------------------

    async def get_template(self, tenant_id: str, template_id: str) -> Template | None:
        query = sa.select(templates).where(templates.c.id == template_id, templates.c.tenant_id == tenant_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _template(row) if row else None

    async def list_templates(
        self, tenant_id: str, *, after: tuple[int, str] | None, limit: int
    ) -> list[Template]:
        query = sa.select(templates).where(templates.c.tenant_id == tenant_id)
        if after is not None:
            query = query.where(sa.tuple_(templates.c.create_time_us, templates.c.id) > sa.tuple_(*after))
        query = query.order_by(templates.c.create_time_us, templates.c.id).limit(limit)
        async with self._engine.connect() as conn:
            return [_template(r) for r in await conn.execute(query)]

    async def create_template(self, template: Template, *, request_id: str = "") -> None:
        async with self._engine.begin() as conn:
            if request_id:
                await self._remember_request(
                    conn, template.tenant_id, "template", request_id, template.id, template.create_time_us
                )
            await conn.execute(
                templates.insert().values(
                    id=template.id,
                    tenant_id=template.tenant_id,
                    display_name=template.display_name,
                    description=template.description,
                    config=template.config,
                    create_time_us=template.create_time_us,
                )
            )

    async def delete_template(self, tenant_id: str, template_id: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                templates.delete().where(templates.c.id == template_id, templates.c.tenant_id == tenant_id)
            )
        return result.rowcount == 1
