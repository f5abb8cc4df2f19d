"""Agent configs by agent id, in process, kept fresh by a WatchAgents(all_tenants=true) subscriber.

A miss reads the agent with the caller's own token (so agents enforces the caller's tenancy). The
cache is emptied each time the watch (re)connects, because events may have been missed meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable

from agentmesh.agents.v1 import agents_service_pb2 as agents_pb
from services.orchestration.clients import AgentsClient
from services.orchestration.convert import agent_from_proto
from services.orchestration.models import AgentSnapshot
from services.platform.cancellation import raise_if_cancelled

log = logging.getLogger("agentmesh.orchestration.agents")

TokenProvider = Callable[[], Awaitable[str]]


class AgentCache:
    def __init__(
        self,
        client: AgentsClient,
        *,
        service_token: TokenProvider,
        max_size: int,
        backoff_initial: float,
        backoff_max: float,
        stream_seconds: float,
    ):
        self._client = client
        self._service_token = service_token
        self._entries: collections.OrderedDict[str, AgentSnapshot] = collections.OrderedDict()
        self._max = max_size
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._stream_seconds = stream_seconds
        # Set while a watch stream is open: only then may entries be served from the cache.
        self.watching = asyncio.Event()
        self.updates = 0
        self._updated = asyncio.Event()

    def peek(self, agent_id: str) -> AgentSnapshot | None:
        return self._entries.get(agent_id)

    async def get(self, agent_id: str, *, tenant_id: str, token: str) -> AgentSnapshot:
        cached = self._entries.get(agent_id)
        if cached is not None and cached.tenant_id == tenant_id and self.watching.is_set():
            self._entries.move_to_end(agent_id)
            return cached
        agent = await self._client.get_agent(agent_id, token=token, tenant_id=tenant_id)
        if self.watching.is_set():
            self._put(agent)
        return agent

    def _put(self, agent: AgentSnapshot) -> None:
        current = self._entries.get(agent.id)
        if current is not None and current.tenant_id == agent.tenant_id and current.version > agent.version:
            return
        self._entries[agent.id] = agent
        self._entries.move_to_end(agent.id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def wait_for_update(self, seen: int) -> None:
        """Returns once more than `seen` watch events have been applied."""
        while self.updates <= seen:
            self._updated.clear()
            await self._updated.wait()

    def apply(self, event: agents_pb.AgentEvent) -> None:
        self.updates += 1
        self._updated.set()
        if event.change_type == agents_pb.CHANGE_TYPE_DELETED or not event.HasField("agent"):
            self._entries.pop(event.agent_id, None)
            return
        self._put(agent_from_proto(event.agent, event.tenant_id))

    async def run_watch(self) -> None:
        """The background subscriber: reconnects with exponential backoff for as long as it runs."""
        backoff = self._backoff_initial
        while True:
            raise_if_cancelled()
            try:
                token = await self._service_token()
                stream = self._client.watch(token=token, timeout=self._stream_seconds)
                async for event in stream:
                    if event is None:
                        self._entries.clear()
                        self.watching.set()
                        continue
                    self.watching.set()
                    self.apply(event)
                    backoff = self._backoff_initial
            except asyncio.CancelledError:
                self.watching.clear()
                raise
            except Exception as exc:
                log.warning("WatchAgents failed; reconnecting", extra={"fields": {"error": str(exc)[:300]}})
            self.watching.clear()
            self._entries.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max)
