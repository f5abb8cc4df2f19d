"""The Redis client: a real server (or a Redis Cluster) when REDIS_URL is set, in-process fakeredis
otherwise.

In cluster mode every key names its object in a hash tag (`{conversation:<id>}:hot`,
`{run:<id>}:lease`), so whatever one object's operation touches lives in one slot; work over many
objects is split by slot (`slot_groups`). docs/operations.md, "Redis Cluster", has the whole picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.crc import key_slot
from redis.exceptions import ClusterDownError, ConnectionError, TimeoutError

from services.platform.settings import SettingsError

MODES = ("standalone", "cluster")
# AGENTMESH_REDIS_RETRY_SECONDS's default (settings.py declares the setting). Shorter than the peer
# deadline cap (AGENTMESH_PEER_DEADLINE_SECONDS, 10 s): a call that waits for Redis then fails
# UNAVAILABLE, saying why, before its caller's deadline turns it into a bare DEADLINE_EXCEEDED.
DEFAULT_RETRY_SECONDS = 8.0
_BACKOFF_BASE, _BACKOFF_CAP = 0.05, 1.0


def retry_policy(seconds: float) -> Retry:
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
    return Retry(backoff, attempts, supported_errors=(ConnectionError, TimeoutError))


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
        # Its `retry` (8.1) sets only how many times a command is tried again, after reloading the
        # slot map, with no backoff between tries (docs/operations.md, Redis outages).
        cluster = RedisCluster.from_url(
            url,
            max_connections=max_connections,
            decode_responses=False,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=10,
            retry=retry_policy(retry_seconds),
        )
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
