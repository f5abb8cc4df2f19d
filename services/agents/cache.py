"""A read-through cache of current agents in front of the store, kept fresh by the change events.

GetAgent is the hottest read of the mesh (orchestration asks on every message), and one SQLAlchemy
round trip costs more than the rest of the call. The cache is trusted only while this instance's
subscription to every tenant's change events is live; a write on this instance evicts at once, a
write on another instance evicts when its event arrives (milliseconds later). Updates are still
checked against the database's version (etags), so a stale read can never cause a lost update.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

from services.agents.models import Agent, AgentVersion

log = logging.getLogger("agentmesh.agents.cache")


class CachedStore:
    """Wraps an agent store: `get_agent` is served from memory while `live`; writes evict."""

    def __init__(self, store: Any, events: Any, *, capacity: int = 10_000, retry_seconds: float = 1.0):
        self._store = store
        self._events = events
        self._capacity = capacity
        self._retry = retry_seconds
        self._agents: OrderedDict[str, Agent] = OrderedDict()
        # Bumped on every eviction: a read that started before an eviction must not fill the cache.
        self._generation: dict[str, int] = {}
        self.live = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _evict(self, agent_id: str) -> None:
        self._agents.pop(agent_id, None)
        self._generation[agent_id] = self._generation.get(agent_id, 0) + 1
        if len(self._generation) > 4 * self._capacity:
            self._generation.clear()  # ids of long-gone reads; clearing only skips a fill or two
            self._agents.clear()

    async def get_agent(self, tenant_id: str | None, agent_id: str) -> Agent | None:
        if self.live:
            agent: Agent | None = self._agents.get(agent_id)
            if agent is not None:
                return agent if tenant_id is None or agent.tenant_id == tenant_id else None
        generation = self._generation.get(agent_id, 0)
        agent = await self._store.get_agent(None, agent_id)
        if agent is not None and self.live and self._generation.get(agent_id, 0) == generation:
            self._agents[agent_id] = agent
            if len(self._agents) > self._capacity:
                self._agents.popitem(last=False)
        if agent is None or (tenant_id is not None and agent.tenant_id != tenant_id):
            return None
        return agent

    async def create_agent(self, agent: Agent, version: AgentVersion, **kw: Any) -> None:
        self._evict(agent.id)
        await self._store.create_agent(agent, version, **kw)

    async def write_version(self, agent: Agent, version: AgentVersion, **kw: Any) -> None:
        self._evict(agent.id)
        try:
            await self._store.write_version(agent, version, **kw)
        finally:
            self._evict(agent.id)

    async def _mark_live(self) -> None:
        self._agents.clear()  # whatever changed while unsubscribed is unknown
        self.live = True

    async def follow_events(self) -> None:
        """Background job: evict on every change anywhere; not live while unsubscribed."""
        while True:
            try:
                async for event in self._events.subscribe(None, on_ready=self._mark_live):
                    self._evict(event.agent_id)
                self.live = False
                return  # the bus is closing: the server is draining
            except asyncio.CancelledError:
                self.live = False
                raise
            except Exception as exc:
                self.live = False
                log.warning(
                    "agent change events unavailable; cache bypassed", extra={"fields": {"error": str(exc)}}
                )
                await asyncio.sleep(self._retry)
