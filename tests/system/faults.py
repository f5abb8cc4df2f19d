"""Fault tools: a TcpProxy on a thread of its own, a load generator that records every acknowledged
write, and the PostgreSQL checks of "nothing acknowledged is lost". The Redis these tests kill is
tests.helpers.RedisServer, one they started."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import uuid
from collections.abc import Coroutine
from typing import Any

import grpc
import psycopg

from tests.system.clients import Stubs, agents_pb, conv_pb, echo_agent
from tests.tcp_proxy import TcpProxy


class ThreadedProxy:
    """tests/tcp_proxy.TcpProxy running in an event loop on its own thread, so it keeps forwarding
    while a test blocks (starting processes) and outlives any one test's event loop."""

    def __init__(self, host: str, port: int):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._proxy = TcpProxy(host, port)
        self.port = self._call(self._proxy.start())

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def start(self) -> None:
        """Listens again on the same port."""
        self._call(self._proxy.start())

    def stop(self) -> None:
        """Refuses new connections and cuts the open ones (what a restart does to clients)."""
        self._call(self._proxy.stop())

    def latency(self, seconds: float) -> None:
        self._loop.call_soon_threadsafe(setattr, self._proxy, "latency", seconds)

    def close(self) -> None:
        self.stop()

        async def cancel_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self._call(cancel_rest())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@dataclasses.dataclass
class Load:
    """Writes through the public API from a few concurrent workers until stopped. Every write that
    returned OK is recorded; every status code seen is counted."""

    stubs: Stubs
    metadata: Any
    conversation_id: str
    agents: list[str] = dataclasses.field(default_factory=list)
    messages: list[str] = dataclasses.field(default_factory=list)
    codes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    errors: list[str] = dataclasses.field(default_factory=list)
    _stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)

    def start(self, workers: int = 4) -> None:
        self._tasks = [asyncio.get_running_loop().create_task(self._work(i)) for i in range(workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    @property
    def ok(self) -> int:
        return self.codes["OK"]

    async def until_ok(self, more: int, within: float = 30) -> None:
        """Waits until `more` further writes succeeded."""
        target = self.ok + more
        async with asyncio.timeout(within):
            while self.ok < target:  # noqa: ASYNC110 (a counter, polled)
                await asyncio.sleep(0.05)

    async def _work(self, worker: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            key = f"{worker}-{n}-{uuid.uuid4().hex[:8]}"
            try:
                if n % 4 == 0:
                    reply = await self.stubs.agents.CreateAgent(
                        agents_pb.CreateAgentRequest(agent=echo_agent(f"load {key}"), request_id=key),
                        metadata=self.metadata,
                        timeout=5,
                    )
                    self.agents.append(reply.agent.id)
                else:
                    message = conv_pb.Message(role=conv_pb.MESSAGE_ROLE_USER, content=f"load {key}")
                    reply = await self.stubs.conversation.AppendMessage(
                        conv_pb.AppendMessageRequest(
                            conversation_id=self.conversation_id, message=message, request_id=key
                        ),
                        metadata=self.metadata,
                        timeout=5,
                    )
                    self.messages.append(reply.message.id)
                self.codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                self.codes[exc.code().name] += 1
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE,):
                    self.errors.append(f"{exc.code().name}: {exc.details()}")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.005)


def sync_url(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


def assert_nothing_lost(pg: str, load: Load) -> None:
    """Every agent and message whose write returned OK is in PostgreSQL."""
    with psycopg.connect(sync_url(pg)) as conn:
        agents = {r[0] for r in conn.execute("SELECT id FROM agents WHERE id = ANY(%s)", (load.agents,))}
        messages = {
            r[0] for r in conn.execute("SELECT id FROM messages WHERE id = ANY(%s)", (load.messages,))
        }
    assert set(load.agents) - agents == set(), "acknowledged agents missing from PostgreSQL"
    assert set(load.messages) - messages == set(), "acknowledged messages missing from PostgreSQL"
