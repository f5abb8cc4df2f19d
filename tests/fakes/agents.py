"""Fakes of services.agents.service's Store and Events protocols."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable

from services.agents.models import Agent, AgentEvent, AgentVersion, Template
from services.agents.service import LimitReached, VersionConflict


class FakeStore:
    """The agent store in dicts, with the same errors as AgentStore (LimitReached, VersionConflict)."""

    def __init__(self) -> None:
        self.agents: dict[str, Agent] = {}
        self.deleted: set[str] = set()
        self.versions: dict[tuple[str, int], AgentVersion] = {}
        self.templates: dict[str, Template] = {}
        self.requests: dict[tuple[str, str, str], str] = {}
        self.counts: dict[str, int] = {}
        # Simulates another writer moving the agent between read and write (that many writes).
        self.interfere = 0
        # When set, get_agent reads at once but answers only once this is set: a slow database read.
        self.hold: asyncio.Event | None = None

    async def get_agent(self, tenant_id: str | None, agent_id: str) -> Agent | None:
        a = self.agents.get(agent_id)
        if self.hold is not None:
            await self.hold.wait()
        if a is None or agent_id in self.deleted or (tenant_id is not None and a.tenant_id != tenant_id):
            return None
        return a

    async def agent_exists(self, tenant_id: str | None, agent_id: str, *, include_deleted: bool) -> bool:
        a = self.agents.get(agent_id)
        return bool(
            a and (tenant_id in (None, a.tenant_id)) and (include_deleted or agent_id not in self.deleted)
        )

    async def list_agents(
        self, tenant_id: str, *, state: str | None, after: tuple[int, str] | None, limit: int
    ) -> list[Agent]:
        rows = sorted(
            (a for a in self.agents.values() if a.tenant_id == tenant_id and a.id not in self.deleted),
            key=lambda a: (a.create_time_us, a.id),
        )
        rows = [
            a
            for a in rows
            if (state is None or a.state == state) and (after is None or (a.create_time_us, a.id) > after)
        ]
        return rows[:limit]

    async def count_agents(self, tenant_id: str) -> int:
        return self.counts.get(tenant_id, 0)

    async def find_request(self, tenant_id: str, kind: str, request_id: str) -> str | None:
        return self.requests.get((tenant_id, kind, request_id))

    async def create_agent(
        self, agent: Agent, version: AgentVersion, *, max_agents: int, request_id: str = ""
    ) -> None:
        if self.counts.get(agent.tenant_id, 0) >= max_agents:
            raise LimitReached
        self.counts[agent.tenant_id] = self.counts.get(agent.tenant_id, 0) + 1
        if request_id:
            self.requests[(agent.tenant_id, "agent", request_id)] = agent.id
        self.agents[agent.id] = agent
        self.versions[(agent.id, version.version)] = version

    async def write_version(
        self, agent: Agent, version: AgentVersion, *, expected_version: int, delete: bool = False
    ) -> None:
        if self.interfere:
            self.interfere -= 1
            current = self.agents[agent.id]
            self.agents[agent.id] = dataclasses.replace(current, version=current.version + 1)
        if self.agents[agent.id].version != expected_version:
            raise VersionConflict
        self.agents[agent.id] = agent
        self.versions[(agent.id, version.version)] = version
        if delete:
            self.deleted.add(agent.id)
            self.counts[agent.tenant_id] -= 1

    async def get_version(self, tenant_id: str | None, agent_id: str, version: int) -> AgentVersion | None:
        v = self.versions.get((agent_id, version))
        return v if v and tenant_id in (None, v.tenant_id) else None

    async def list_versions(
        self, tenant_id: str, agent_id: str, *, before: int | None, limit: int
    ) -> list[AgentVersion]:
        rows = sorted(
            (
                v
                for (a, n), v in self.versions.items()
                if a == agent_id and v.tenant_id == tenant_id and (before is None or n < before)
            ),
            key=lambda v: -v.version,
        )
        return rows[:limit]

    async def get_template(self, tenant_id: str, template_id: str) -> Template | None:
        t = self.templates.get(template_id)
        return t if t and t.tenant_id == tenant_id else None

    async def list_templates(
        self, tenant_id: str, *, after: tuple[int, str] | None, limit: int
    ) -> list[Template]:
        rows = sorted(
            (t for t in self.templates.values() if t.tenant_id == tenant_id),
            key=lambda t: (t.create_time_us, t.id),
        )
        return [t for t in rows if after is None or (t.create_time_us, t.id) > after][:limit]

    async def create_template(self, template: Template, *, request_id: str = "") -> None:
        self.templates[template.id] = template
        if request_id:
            self.requests[(template.tenant_id, "template", request_id)] = template.id

    async def delete_template(self, tenant_id: str, template_id: str) -> bool:
        t = self.templates.get(template_id)
        if t is None or t.tenant_id != tenant_id:
            return False
        del self.templates[template_id]
        return True


class FakeEvents:
    """Keeps every published event and hands it to the live subscriptions of its tenant (or all)."""

    def __init__(self) -> None:
        self.published: list[AgentEvent] = []
        self._queues: list[tuple[str | None, asyncio.Queue[AgentEvent]]] = []

    async def publish(self, event: AgentEvent) -> None:
        self.published.append(event)
        for tenant_id, queue in self._queues:
            if tenant_id in (None, event.tenant_id):
                queue.put_nowait(event)

    async def subscribe(
        self, tenant_id: str | None, *, on_ready: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[AgentEvent]:
        entry: tuple[str | None, asyncio.Queue[AgentEvent]] = (tenant_id, asyncio.Queue())
        self._queues.append(entry)
        try:
            if on_ready is not None:
                await on_ready()
            while True:
                yield await entry[1].get()
        finally:
            self._queues.remove(entry)
