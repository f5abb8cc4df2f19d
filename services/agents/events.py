"""Agent change events over Redis pub/sub: channel `agents:events:<tenant_id>`, JSON payloads.

Pub/sub (not a stream) because watchers only want changes from now on; a watcher that reconnects
re-reads what it caches (orchestration re-fetches on reconnect). Publishing happens after the
commit, so an event never announces a change that was rolled back.

On a Redis Cluster this stays classic pub/sub, not sharded: a PUBLISH on any node reaches subscribers
on every node over the cluster bus, so the all-tenants subscription (the agents cache behind
WatchAgents(all_tenants)) keeps its one PSUBSCRIBE, which sharded pub/sub cannot express. Agent
changes are human-paced; the broadcast cost is measured in docs/operations.md ("Redis Cluster").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.agents.models import AgentEvent
from services.platform.redis_client import load_slot_map

log = logging.getLogger("agentmesh.agents.events")

CHANNEL = "agents:events:{tenant_id}"
ALL_CHANNELS = "agents:events:*"


class EventBus:
    """Publishes change events and serves subscriptions that end when `close()` is called."""

    def __init__(self, *, redis: aioredis.Redis, poll_seconds: float = 0.5):
        self._redis = redis
        self._poll = poll_seconds
        self._closing = asyncio.Event()

    async def publish(self, event: AgentEvent) -> None:
        """Best effort: the change is committed already, so a Redis failure is logged, not raised."""
        try:
            await self._redis.publish(
                CHANNEL.format(tenant_id=event.tenant_id), json.dumps(event.to_json(), separators=(",", ":"))
            )
        except Exception:
            log.warning(
                "could not publish agent event", exc_info=True, extra={"fields": {"agent": event.agent_id}}
            )

    async def subscribe(
        self, tenant_id: str | None, *, on_ready: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[AgentEvent]:
        """Events of one tenant (None: every tenant) until `close()`; the caller cancels to stop early.

        `on_ready` runs once the subscription is in place: from then on no event is missed, which a
        watcher that keeps a cache needs to know.
        """
        if self._closing.is_set():
            return
        await load_slot_map(self._redis)
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        kept_retry: Retry | None = None
        try:
            if tenant_id is None:
                await pubsub.psubscribe(ALL_CHANNELS)
            else:
                await pubsub.subscribe(CHANNEL.format(tenant_id=tenant_id))
            # A lost subscription must end the stream, not be re-made silently by the client's
            # retry (redis_client.retry_policy): what was published meanwhile is gone, and only a
            # watcher that hears of the gap (it subscribes again, on_ready) empties its cache.
            connection: object = pubsub.connection  # typed None until subscribed
            if isinstance(connection, Connection):
                kept_retry = connection.retry
                connection.retry = Retry(NoBackoff(), 0)
            if on_ready is not None:
                await on_ready()
            while not self._closing.is_set():
                message = await pubsub.get_message(timeout=self._poll)
                if message is None or message.get("type") not in ("message", "pmessage"):
                    continue
                try:
                    event = AgentEvent.from_json(json.loads(message["data"]))
                except (ValueError, KeyError, TypeError):
                    log.warning("ignoring a malformed agent event")
                    continue
                yield event
        finally:
            held: object = pubsub.connection
            if kept_retry is not None and isinstance(held, Connection):
                held.retry = kept_retry  # the connection goes back to the pool
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # redis-py < 8.2 leaves PubSub.aclose unannotated

    async def close(self) -> None:
        """Ends every subscription (within one poll interval): called when the server starts draining."""
        self._closing.set()
