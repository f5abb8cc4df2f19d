"""The Redis client: a real server (or a Redis Cluster) when REDIS_URL is set, in-process fakeredis
otherwise.

In cluster mode every key names its object in a hash tag (`{conversation:<id>}:hot`,
`{run:<id>}:lease`), so whatever one object's operation touches lives in one slot; work over many
objects is split by slot (`slot_groups`). docs/operations.md, "Redis Cluster", has the whole picture.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis._parsers import AsyncCommandsParser
from redis.asyncio.cluster import ClusterPipeline, PipelineStrategy, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    MaxConnectionsError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)

from services.platform.settings import SettingsError

MODES = ("standalone", "cluster")
# AGENTMESH_REDIS_RETRY_SECONDS's default (settings.py declares the setting). Shorter than the peer
# deadline cap (AGENTMESH_PEER_DEADLINE_SECONDS, 10 s): a call that waits for Redis then fails
# UNAVAILABLE, saying why, before its caller's deadline turns it into a bare DEADLINE_EXCEEDED.
DEFAULT_RETRY_SECONDS = 8.0
_BACKOFF_BASE, _BACKOFF_CAP = 0.05, 1.0


def retry_policy(
    seconds: float, errors: tuple[type[Exception], ...] = (ConnectionError, TimeoutError)
) -> Retry:
    """redis-py's retry for a connection lost or refused: the command is sent again on a new
    connection after 0.1, 0.2, 0.4, 0.8, then every 1 s, for about `seconds` in all (plus each
    attempt's own connect time). A restart or a failover of a few seconds then delays commands
    instead of failing them; past it the error reaches the caller (UNAVAILABLE). Retrying a write
    whose reply was lost may apply it twice: the writers that care (run events, with explicit ids)
    recognise their own entry."""
    backoff = ExponentialBackoff(cap=_BACKOFF_CAP, base=_BACKOFF_BASE)
    attempts, waited = 0, 0.0
    while waited < seconds:
        attempts += 1
        waited += backoff.compute(attempts)
    # SlotNotCoveredError is no RedisError, though redis-py's Retry types its errors as if all were.
    return Retry(backoff, attempts, supported_errors=cast(tuple[type[RedisError], ...], errors))


T = TypeVar("T")

# What a cluster client rides through: a node's connection lost or refused (it restarts; LOADING is a
# ConnectionError too), and the cluster's answers while it heals (CLUSTERDOWN: a restarted node
# until it has met the others, or every node once a master is marked failed; a slot not covered or
# moving). Not a full pool (MaxConnectionsError): that is this process's load, not Redis's outage.
_CLUSTER_TRANSIENT = (ConnectionError, TimeoutError, ClusterDownError, SlotNotCoveredError, TryAgainError)


def _transient(error: Exception) -> bool:
    return not isinstance(error, MaxConnectionsError)


# Set while a _Cluster call runs (and in the tasks it starts): an aclose() then is redis-py's own.
_IN_CALL: ContextVar[bool] = ContextVar("agentmesh_redis_cluster_call", default=False)


class _Cluster(RedisCluster):
    """redis-py's cluster client, whose commands and pipelines ride through a node's restart with
    `ride_through`'s backoff, as the standalone client's connections do (retry_policy).

    redis-py 8.1's cluster client uses its `retry` only as a count of immediate retries (each after
    reloading the slot map, none waiting), so a node down for a second fails every call meanwhile.
    Here redis-py's own loops make one attempt (retry of 0: they still mark the slot map for a reload
    and drop the failed node's connections) and the waiting happens around them."""

    ride_through: Retry

    async def _ride(
        self, attempt: Callable[[], Awaitable[T]], failed: Callable[[Exception], Awaitable[None]]
    ) -> T:
        token = _IN_CALL.set(True)
        try:
            return await self.ride_through.call_with_retry(attempt, failed, is_retryable=_transient)
        finally:
            _IN_CALL.reset(token)

    async def aclose(self) -> None:
        """Closes the client; inside a call, where redis-py closes every node's connections on a
        CLUSTERDOWN to make the slot map reload, only marks the map for a reload: closing the
        connections other calls are using (or still opening) fails those calls, with an
        AttributeError from the connection when it was halfway open (seen here)."""
        if _IN_CALL.get():
            self._initialize = True
            return
        # redis-py closes nothing of a client marked for a reload (as a failed call leaves it),
        # leaving its nodes' connections open.
        self._initialize = False
        await super().aclose()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        run = super().execute_command
        return await self._ride(lambda: run(*args, **kwargs), _nothing)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        # mypy counts redis-py's AbstractRedis._event_dispatcher as abstract, as for ClusterPipeline.
        return _Pipeline(self, transaction)  # type: ignore[abstract]


async def _nothing(_: Exception) -> None:
    pass


class _CommandsOnce(AsyncCommandsParser):
    """redis-py asks a node for its COMMAND table at every reload of the slot map, and when that
    node is the one down, the reload fails and closes every connection of the client, cutting the
    calls of other tasks halfway (AttributeError on a connection's writer, seen here). The table
    does not change with the slot map: asked once."""

    async def initialize(self, node: Any = None) -> None:
        if not self.commands:
            await super().initialize(node)


class _Pipeline(ClusterPipeline):
    """A pipeline of `_Cluster`: a failed attempt is made again after the backoff. A plain pipeline
    sends again only the commands that have no answer yet (redis-py keeps each command's result);
    a transaction is sent whole again, as redis-py's own retry of it would."""

    async def initialize(self) -> ClusterPipeline:
        # `async with client.pipeline()` starts here: a slot map marked for a reload is loaded (and
        # the COMMAND table asked of a node) before any command, which a node down would fail.
        return await cast(_Cluster, self.cluster_client)._ride(super().initialize, _nothing)

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        client = cast(_Cluster, self.cluster_client)
        strategy = self._execution_strategy
        # PipelineStrategy.execute empties its queue after each attempt, failed or not.
        queue = list(strategy._command_queue) if isinstance(strategy, PipelineStrategy) else None

        async def attempt() -> list[Any]:
            if queue is not None:
                cast(PipelineStrategy, strategy)._command_queue = list(queue)
            return await strategy.execute(raise_on_error, allow_redirections)

        async def failed(_: Exception) -> None:
            # Learn the slot map again before the next attempt (a failover moves slots), without
            # closing the connections other calls are using (redis-py's retry closes them all).
            client._initialize = True

        try:
            return await client._ride(attempt, failed)
        finally:
            await self.reset()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated


def create_redis(
    url: str,
    *,
    mode: str = "standalone",
    max_connections: int = 512,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
) -> aioredis.Redis:
    """The client for `url`. With mode "cluster" it is redis-py's cluster client, which learns the
    slot map from the node `url` names and sends each command to the node owning its keys.

    The cluster client is typed as `aioredis.Redis`: both take the same command methods, and callers
    (some not yet cluster-aware) need one type; what differs (cross-slot work) goes through
    `is_cluster`/`slot_groups`.
    """
    if mode not in MODES:
        raise SettingsError(f"AGENTMESH_REDIS_MODE must be standalone or cluster, got {mode!r}")
    if mode == "cluster":
        if not url:
            raise SettingsError("AGENTMESH_REDIS_MODE=cluster needs REDIS_URL (one node of the cluster)")
        # No blocking pool in redis-py's cluster client: past max_connections per node a command
        # fails with MaxConnectionsError (a ConnectionError, so UNAVAILABLE), it does not wait.
        cluster = cast(
            _Cluster,
            _Cluster.from_url(
                url,
                max_connections=max_connections,
                decode_responses=False,
                socket_connect_timeout=2,
                socket_timeout=5,
                health_check_interval=10,
                retry=Retry(NoBackoff(), 0),
            ),
        )
        cluster.ride_through = retry_policy(retry_seconds, _CLUSTER_TRANSIENT)
        cluster.commands_parser = _CommandsOnce()
        return cast(aioredis.Redis, cluster)
    if url:
        # A blocking pool: past max_connections a command waits (up to 5 s) for a free connection
        # instead of failing, so a burst degrades into latency, not errors.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=5,
            decode_responses=False,
            socket_connect_timeout=2,
            socket_timeout=5,
            # A pooled connection idle this long is PINGed before use: one that died with a Redis
            # restart is replaced there, not found dead by the command.
            health_check_interval=10,
            retry=retry_policy(retry_seconds),
            retry_on_error=[ConnectionError, TimeoutError],
        )
        return aioredis.Redis.from_pool(pool)  # closing the client closes the pool
    import fakeredis

    # Blocking, as the server's: fakeredis's default pool (100) fails a command past it with "Too
    # many connections" (hundreds of concurrent calls each check the deny-list, the rate limit, ...).
    return fakeredis.FakeAsyncRedis(
        server=fakeredis.FakeServer(),
        connection_pool_class=aioredis.BlockingConnectionPool,
        max_connections=max_connections,
        timeout=5,
    )


def is_cluster(redis: object) -> bool:
    return isinstance(redis, RedisCluster)


async def ping(redis: object) -> None:
    """The health probe; raises when Redis cannot serve. A server: PING. A cluster: CLUSTER INFO on
    one node must say `cluster_state:ok`, the cluster's own verdict that every slot has a reachable
    master (a master down turns it to `fail` within cluster-node-timeout). A bare PING would reach
    one node only; a PING of every master fans out, and when one is down redis-py (8.1) leaves the
    other nodes' calls and connections of that command behind."""
    if isinstance(redis, RedisCluster):
        state = (await redis.cluster_info()).get("cluster_state")
        if state != "ok":
            raise ClusterDownError(f"Redis Cluster state is {state!r}")
    else:
        await cast(aioredis.Redis, redis).ping()


async def load_slot_map(redis: object) -> None:
    """Makes a cluster client load its slot map now (a no-op on a server, or once loaded): redis-py's
    cluster pub/sub picks its node from that map and fails (KeyError) on a client that has not run
    a command yet."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()


def slot_groups(redis: object, keys: Sequence[str | bytes]) -> list[list[int]]:
    """Indexes of `keys` grouped so that each group may go into one multi-key command or script:
    one group on a single server, one per hash slot on a cluster (first appearance order)."""
    if not keys:
        return []
    if not is_cluster(redis):
        return [list(range(len(keys)))]
    groups: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key_slot(key.encode() if isinstance(key, str) else key), []).append(i)
    return list(groups.values())
