"""Run admission's shared work (issue 15): the quota check shared by a tenant's concurrent
admissions (quota.QuotaChecks), the run rows inserted and started in shared statements
(OrchestrationStore.insert_run / begin_run, on PostgreSQL through psycopg and on SQLite through
SQLAlchemy), the session lock released by its holder only, and a tenant's rate window and
concurrent-run slots counted for a batch of admissions in one round trip. The CPU these save is
measured by bench/admission.py; here, that the shared forms answer every caller exactly as its own
call would."""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import uuid
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import psycopg
import pytest
import sqlalchemy as sa

from services.orchestration.limits import ACTIVE_KEY, RunLimits
from services.orchestration.models import QuotaState, Run, RunState, Session, SessionState
from services.orchestration.quota import QuotaChecks
from services.orchestration.store import SESSION_LOCK_KEY, OrchestrationStore, SessionLocks
from services.platform import errors, migrations
from services.platform.auth import Principal
from services.platform.db import AutocommitPool, create_engine
from services.platform.redis_client import create_redis
from services.platform.tiers import TIERS
from tests.helpers import REDIS_MODE


def caller(tenant: str, token: str = "", tier: str = "pro") -> Principal:
    return Principal(
        user_id=f"user-{uuid.uuid4().hex[:6]}",
        tenant_id=tenant,
        roles=frozenset({"member"}),
        tier=tier,
        token=token or uuid.uuid4().hex,
    )


class Quotas:
    """CheckQuota as admission sees it: counts calls; a call waits for `gate`; `used` tenants are
    exhausted; a token in `refused` is refused as that token's own failure."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.called = asyncio.Event()
        self.used: set[str] = set()
        self.refused: set[str] = set()
        self.tenant_of: dict[str, str] = {}

    async def check_quota(self, *, token: str) -> QuotaState:
        # The month as it is when the call starts (conversation reads it then).
        self.calls.append(token)
        exhausted, used = self.tenant_of[token] in self.used, len(self.calls)
        self.called.set()
        await self.gate.wait()
        if token in self.refused:
            raise errors.Unauthenticated("the token was revoked")
        if exhausted:
            raise errors.ResourceExhausted("the tenant's tokens quota is used up", retry_after=60.0)
        return QuotaState(limit_tokens=100, used_tokens=used)

    def callers(self, tenant: str, n: int, **kwargs: Any) -> list[Principal]:
        made = [caller(tenant, **kwargs) for _ in range(n)]
        for c in made:
            self.tenant_of[c.token] = tenant
        return made


async def test_concurrent_checks_of_a_tenant_share_one_call_per_tenant_and_tier() -> None:
    source = Quotas()
    checks = QuotaChecks(source)
    a, b = source.callers("tenant-a", 20), source.callers("tenant-b", 5)
    free = source.callers("tenant-a", 3, tier="free")
    answers = await asyncio.gather(*(checks.check(c) for c in a + b + free))
    assert len(answers) == 28
    # One call for tenant-a/pro, one for tenant-b/pro, one for tenant-a/free (the tier sets the limit).
    assert len(source.calls) == 3
    assert {source.tenant_of[t] for t in source.calls} == {"tenant-a", "tenant-b"}


async def test_a_check_arriving_while_a_call_is_on_the_wire_waits_for_a_later_call() -> None:
    """The shared answer reads the month after every sharer arrived: a tenant that used its quota
    up while a call was in flight is refused to the admissions that arrived meanwhile."""
    source = Quotas()
    checks = QuotaChecks(source)
    first, second = source.callers("tenant-a", 2)
    source.gate.clear()
    early = asyncio.create_task(checks.check(first))
    await source.called.wait()
    late = asyncio.create_task(checks.check(second))
    await asyncio.sleep(0.01)
    source.used.add("tenant-a")  # the crossing answer is stored while the first call is out
    source.gate.set()
    assert (await early).used_tokens == 1
    with pytest.raises(errors.ResourceExhausted):
        await late
    assert source.calls == [first.token, second.token]


async def test_a_used_up_quota_refuses_every_sharer() -> None:
    source = Quotas()
    source.used.add("tenant-a")
    checks = QuotaChecks(source)
    results = await asyncio.gather(
        *(checks.check(c) for c in source.callers("tenant-a", 6)), return_exceptions=True
    )
    assert all(isinstance(r, errors.ResourceExhausted) for r in results)
    assert len(source.calls) == 1


async def test_a_failure_of_the_shared_token_is_not_passed_to_the_others() -> None:
    source = Quotas()
    checks = QuotaChecks(source)
    callers = source.callers("tenant-a", 4)
    source.refused.add(callers[0].token)
    results = await asyncio.gather(*(checks.check(c) for c in callers), return_exceptions=True)
    assert isinstance(results[0], errors.Unauthenticated)
    assert all(isinstance(r, QuotaState) for r in results[1:])
    # The shared call, then each caller's own.
    assert source.calls == [callers[0].token] + [c.token for c in callers]


# The run rows -------------------------------------------------------------------------------------


class CountingStore(OrchestrationStore):
    """Notes the size of every shared insert and start."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.inserts: list[int] = []
        self.starts: list[int] = []
        self.reads: list[int] = []
        super().__init__(*args, **kwargs)

    async def _insert_runs(self, batch: list[dict[str, Any]]) -> list[BaseException | None]:
        self.inserts.append(len(batch))
        return await super()._insert_runs(batch)

    async def _begin_runs(self, batch: list[tuple[str, str, int, int]]) -> list[bool]:
        self.starts.append(len(batch))
        return await super()._begin_runs(batch)

    async def _read_sessions(self, ids: list[str]) -> list[Session | None]:
        self.reads.append(len(ids))
        return await super()._read_sessions(ids)

    async def _read_live_runs(self, session_ids: list[str]) -> list[list[Run]]:
        self.reads.append(len(session_ids))
        return await super()._read_live_runs(session_ids)


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The session's PostgreSQL database, or a new SQLite file (the embedded default's)."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/admission.db"


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[CountingStore]:
    engine = create_engine(database_url)
    autocommit: AutocommitPool | None = None
    if engine.dialect.name == "postgresql":
        autocommit = AutocommitPool(engine)
    else:
        await migrations.upgrade(engine, ["orchestration"])
    try:
        yield CountingStore(engine, autocommit=autocommit)  # SQLite: no autocommit pool, no shared reads
    finally:
        if autocommit is not None:
            await autocommit.close()
        await engine.dispose()


def new_session(tenant: str) -> Session:
    return Session(
        id=str(uuid.uuid4()),
        tenant_id=tenant,
        user_id="u1",
        agent_id="a1",
        agent_version=1,
        conversation_id="c1",
        title="",
        state=SessionState.ACTIVE,
        active_run_id="",
        create_time_us=1,
        update_time_us=1,
    )


def new_run(session: Session, n: int) -> Run:
    return Run(
        id=str(uuid.uuid4()),
        tenant_id=session.tenant_id,
        session_id=session.id,
        user_id=session.user_id,
        state=RunState.QUEUED,
        agent_version=1,
        input_text=f"message {n}",
        last_event_id=1,
        create_time_us=1000 + n,
    )


async def test_concurrent_run_inserts_share_a_statement_and_a_twin_fails_alone(store: CountingStore) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    session = new_session(tenant)
    await store.insert_session(session, request_id=None)
    first = new_run(session, 0)
    await store.insert_run(first, request_id="req-0")
    batch = [new_run(session, n) for n in range(1, 11)]
    # The last one repeats request_id req-0 in the same session (a twin that raced past the lookup).
    results = await asyncio.gather(
        *(store.insert_run(r, request_id=f"req-{n + 1}" if n < 9 else "req-0") for n, r in enumerate(batch)),
        return_exceptions=True,
    )
    assert all(r is None for r in results[:9]), results
    assert isinstance(results[9], sa.exc.IntegrityError | psycopg.IntegrityError)
    assert max(store.inserts) > 1, store.inserts  # shared, not ten statements
    stored = await store.list_runs(tenant, session.id, after=None, limit=50)
    assert {r.id for r in stored} == {first.id, *(r.id for r in batch[:9])}
    again = await store.run_by_request(session.id, "req-5")
    assert again is not None and again.id == batch[4].id and again.input_text == "message 5"
    assert again.state is RunState.QUEUED


async def test_concurrent_run_starts_share_a_statement_and_name_each_sessions_active_run(
    store: CountingStore,
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    pairs = []
    for n in range(6):
        session = new_session(tenant)
        await store.insert_session(session, request_id=None)
        run = new_run(session, n)
        await store.insert_run(run, request_id=None)
        pairs.append((session, run))
    # The last run was cancelled before its worker started: it must not start, nor become active.
    cancelled_session, cancelled = pairs[-1]
    await store.finish_run(cancelled.id, state=RunState.CANCELLED, now_us=5, last_event_id=2)
    started = await asyncio.gather(
        *(
            store.begin_run(run.id, session_id=session.id, agent_version=10 + n, now_us=7_000 + n)
            for n, (session, run) in enumerate(pairs)
        )
    )
    assert started == [True] * 5 + [False]
    assert max(store.starts) > 1, store.starts
    for n, (session, run) in enumerate(pairs[:5]):
        row = await store.get_run(tenant, run.id)
        assert row is not None and row.state is RunState.RUNNING and row.agent_version == 10 + n
        assert row.start_time_us >= 7_000
        got = await store.get_session(tenant, session.id)
        assert got is not None and got.active_run_id == run.id
    row = await store.get_run(tenant, cancelled.id)
    assert row is not None and row.state is RunState.CANCELLED
    got = await store.get_session(tenant, cancelled_session.id)
    assert got is not None and got.active_run_id == ""
    # Started once: a second start of a running run changes nothing.
    assert not await store.begin_run(pairs[0][1].id, session_id=pairs[0][0].id, agent_version=99, now_us=9)


async def test_live_runs_and_sessions_read_the_same_on_both_paths(store: CountingStore) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    session = new_session(tenant)
    await store.insert_session(session, request_id=None)
    runs_ = [new_run(session, n) for n in range(3)]
    for r in runs_:
        await store.insert_run(r, request_id=None)
    await store.finish_run(runs_[1].id, state=RunState.COMPLETED, now_us=5, last_event_id=3)
    assert [r.id for r in await store.live_runs(session.id)] == [runs_[0].id, runs_[2].id]
    assert await store.get_session(tenant, session.id) == session
    assert await store.get_session("another-tenant", session.id) is None


@pytest.fixture(params=["redis", "fakeredis"])
async def lock_redis(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Any]:
    """The suite's Redis, or the embedded default's in-process one (fakeredis with Lua)."""
    client = (
        create_redis(redis_url, mode=REDIS_MODE)
        if request.param == "redis"
        else fakeredis.aioredis.FakeRedis()
    )
    try:
        yield client
    finally:
        await client.aclose()


async def test_concurrent_session_and_live_run_reads_share_a_statement_and_keep_tenancy(
    store: CountingStore,
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    made = []
    for n in range(8):
        session = new_session(tenant)
        await store.insert_session(session, request_id=None)
        run = new_run(session, n)
        await store.insert_run(run, request_id=None)
        made.append((session, run))
    await store.finish_run(made[0][1].id, state=RunState.COMPLETED, now_us=5, last_event_id=3)
    sessions_ = await asyncio.gather(
        *(store.get_session(tenant, s.id) for s, _ in made),
        store.get_session("another-tenant", made[1][0].id),
    )
    assert sessions_[:-1] == [s for s, _ in made] and sessions_[-1] is None
    live = await asyncio.gather(*(store.live_runs(s.id) for s, _ in made), store.live_runs("no-such-session"))
    assert live[0] == [] and live[-1] == []
    assert [[r.id for r in runs_] for runs_ in live[1:-1]] == [[r.id] for _, r in made[1:]]
    if store._autocommit is not None:  # PostgreSQL's reads are shared
        assert max(store.reads) > 1, store.reads


async def test_the_session_lock_is_released_only_by_its_holder(lock_redis: Any) -> None:
    locks = SessionLocks(lock_redis, ttl_ms=200)
    session_id = uuid.uuid4().hex
    key = SESSION_LOCK_KEY.format(session_id=session_id)
    async with locks.session(session_id):
        assert await lock_redis.exists(key)
    assert not await lock_redis.exists(key)
    # A holder whose lock lapsed and was taken by another does not delete the other's.
    async with locks.session(session_id):
        await asyncio.sleep(0.3)
        await lock_redis.set(key, b"someone-else", px=5000)
    assert await lock_redis.get(key) == b"someone-else"


async def test_concurrent_lockers_share_round_trips_and_still_exclude_each_other(lock_redis: Any) -> None:
    locks = SessionLocks(lock_redis)
    shared = uuid.uuid4().hex
    inside, most = 0, 0

    async def hold(session_id: str) -> None:
        nonlocal inside, most
        async with locks.session(session_id):
            if session_id == shared:
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.01)
                inside -= 1

    # 8 admissions of one session and 20 of others, at once.
    await asyncio.gather(*(hold(shared) for _ in range(8)), *(hold(uuid.uuid4().hex) for _ in range(20)))
    assert most == 1
    assert not await lock_redis.exists(SESSION_LOCK_KEY.format(session_id=shared))


async def test_concurrent_rate_checks_and_slots_refuse_exactly_what_one_at_a_time_would(
    redis_url: str,
) -> None:
    """A tenant's concurrent admissions share a round trip for the rate window and one MULTI for
    the slots; the counts are still per request: of 10 at once with 6 per minute, 4 are refused,
    and of 10 slots with 3 allowed, 3 are taken and the set holds exactly those."""
    client = create_redis(redis_url, mode=REDIS_MODE)
    try:
        limits = RunLimits(client, slot_ttl_seconds=30)
        tier = dataclasses.replace(TIERS["free"], requests_per_minute=6, concurrent_runs=3)
        tenant = f"t-{uuid.uuid4().hex[:8]}"
        other = f"t-{uuid.uuid4().hex[:8]}"
        rates = await asyncio.gather(
            *(limits.check_rate(t, tier) for t in [tenant] * 10 + [other] * 2), return_exceptions=True
        )
        assert [isinstance(r, errors.ResourceExhausted) for r in rates] == [False] * 6 + [True] * 4 + [
            False
        ] * 2
        runs_ = [uuid.uuid4().hex for _ in range(10)]
        slots = await asyncio.gather(
            *(limits.reserve(tenant, r, tier) for r in runs_), return_exceptions=True
        )
        taken = [r for r, outcome in zip(runs_, slots, strict=True) if outcome is None]
        assert len(taken) == 3, slots
        assert all(isinstance(o, errors.ResourceExhausted) for o in slots if o is not None)
        members = await client.zrange(ACTIVE_KEY.format(tenant=tenant), 0, -1)
        assert sorted(m.decode() for m in members) == sorted(taken)
        await limits.release(tenant, taken[0])
        await limits.reserve(tenant, "one-more", tier)  # a freed slot is taken again
    finally:
        await client.aclose()
