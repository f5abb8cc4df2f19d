"""platform.db.write on a SQLite file (SqliteWriter): write transactions run inline and one at a
time, a transaction that meets the lock held by another connection is run again instead of failing
'database is locked' or blocking the event loop in SQLite's busy handler, and dispose() closes it.
The writes of one loop iteration share a transaction and its COMMIT (group commit): a caller hears
back only once its write is committed, and one write's failure or rollback is its own."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.platform import db


async def _counter(path: Path) -> AsyncEngine:
    engine = db.create_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        await conn.execute(sa.text("INSERT INTO counter VALUES (0)"))
    return engine


async def _increment(engine: AsyncEngine) -> int:
    # Read, then write from what was read: concurrent transactions interleaved would lose updates.
    async with engine.begin() as conn:
        n = (await conn.execute(sa.text("SELECT n FROM counter"))).scalar_one()
        await conn.execute(sa.text("UPDATE counter SET n = :n"), {"n": n + 1})
        return int(n + 1)


async def test_concurrent_writes_each_see_the_one_before(tmp_path: Path) -> None:
    engine = await _counter(tmp_path / "w.db")
    try:
        got = await asyncio.gather(*(db.write(engine, _increment) for _ in range(200)))
        assert sorted(got) == list(range(1, 201))
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT n FROM counter"))).scalar_one() == 200
    finally:
        await engine.dispose()


async def test_a_write_waits_out_another_connections_lock_without_blocking_the_loop(tmp_path: Path) -> None:
    engine = await _counter(tmp_path / "w.db")
    ticks = 0
    holding = asyncio.Event()
    release = asyncio.Event()
    ticked = asyncio.Event()

    async def hold_the_lock() -> None:
        # A write through the engine's own pool (not the writer) keeps SQLite's write lock.
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE counter SET n = n + 100"))
            holding.set()
            await release.wait()

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1
            if ticks == 20:
                ticked.set()

    holder = asyncio.create_task(hold_the_lock())
    await holding.wait()
    write = asyncio.create_task(db.write(engine, _increment))
    ticker = asyncio.create_task(tick())
    try:
        await ticked.wait()  # the loop runs while the write waits
        assert not write.done()
        release.set()
        await holder
        assert await write == 101
    finally:
        ticker.cancel()
        release.set()
        await asyncio.gather(holder, ticker, write, return_exceptions=True)
        await engine.dispose()


async def test_dispose_closes_the_writer_and_a_later_write_reopens_it(tmp_path: Path) -> None:
    engine = await _counter(tmp_path / "w.db")
    try:
        assert await db.write(engine, _increment) == 1
        await engine.dispose()
        assert await db.write(engine, _increment) == 2
    finally:
        await engine.dispose()


def _commits(engine: AsyncEngine) -> list[str]:
    """The COMMITs the engine's writer connection runs from now on."""
    writer = db._WRITERS[engine.sync_engine]
    assert writer._inline is not None and writer._inline._connection is not None
    seen: list[str] = []
    writer._inline._connection.set_trace_callback(
        lambda sql: seen.append(sql) if sql.strip().upper() == "COMMIT" else None
    )
    return seen


async def _committed_n(path: Path) -> int:
    # Another connection: what it sees is on disk, not in the writer's open transaction.
    with sqlite3.connect(path) as other:
        return int(other.execute("SELECT n FROM counter").fetchone()[0])


async def test_concurrent_writes_share_one_commit_and_hear_back_once_committed(tmp_path: Path) -> None:
    engine = await _counter(tmp_path / "w.db")
    try:
        await db.write(engine, _increment)
        commits = _commits(engine)
        seen_on_disk: list[int] = []

        async def write_then_look() -> None:
            got = await db.write(engine, _increment)
            seen_on_disk.append(await _committed_n(tmp_path / "w.db") - got)

        await asyncio.gather(*(write_then_look() for _ in range(50)))
        assert len(commits) == 1
        assert await _committed_n(tmp_path / "w.db") == 51
        assert min(seen_on_disk) >= 0  # every caller's write was on disk when it heard back
    finally:
        await engine.dispose()


def _transaction(sql: str, *, fails: bool = False) -> Callable[[AsyncEngine], Awaitable[str]]:
    """A write transaction that runs `sql`, then fails (an exception inside it) or rolls back."""

    async def work(engine: AsyncEngine) -> str:
        async with engine.connect() as conn:
            transaction = await conn.begin()
            await conn.execute(sa.text(sql))
            if fails:
                raise RuntimeError("the work's own failure")
            await transaction.rollback()
            return "rolled back"

    return work


async def test_a_failed_write_undoes_only_itself(tmp_path: Path) -> None:
    engine = await _counter(tmp_path / "w.db")
    try:
        outcomes = await asyncio.gather(
            *(db.write(engine, _increment) for _ in range(5)),
            db.write(engine, _transaction("UPDATE counter SET n = n + 1000", fails=True)),
            *(db.write(engine, _increment) for _ in range(5)),
            return_exceptions=True,
        )
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        assert [str(f) for f in failed] == ["the work's own failure"]
        assert sorted(o for o in outcomes if isinstance(o, int)) == list(range(1, 11))
        assert await _committed_n(tmp_path / "w.db") == 10
    finally:
        await engine.dispose()


async def test_a_rollback_with_nothing_to_undo_keeps_the_group(tmp_path: Path) -> None:
    engine = await _counter(tmp_path / "w.db")
    # As an append to a closed conversation: the UPDATE matches nothing, then a rollback.
    refuse = _transaction("UPDATE counter SET n = -1 WHERE n < 0")
    # As a replayed request: writes, finds it must not have, rolls back.
    undo = _transaction("UPDATE counter SET n = n + 1000")
    try:
        await db.write(engine, _increment)
        commits = _commits(engine)
        got = await asyncio.gather(
            db.write(engine, _increment), db.write(engine, refuse), db.write(engine, _increment)
        )
        assert got == [2, "rolled back", 3]
        assert len(commits) == 1
        got = await asyncio.gather(
            db.write(engine, _increment), db.write(engine, undo), db.write(engine, _increment)
        )
        assert got == [4, "rolled back", 5]
        assert await _committed_n(tmp_path / "w.db") == 5
    finally:
        await engine.dispose()


async def test_a_write_whose_caller_left_before_its_group_does_not_run(tmp_path: Path) -> None:
    engine = await _counter(tmp_path / "w.db")
    try:
        left = asyncio.ensure_future(db.write(engine, _increment))
        stays = asyncio.ensure_future(db.write(engine, _increment))
        await asyncio.sleep(0)  # both queued, the group not yet run
        left.cancel()
        assert await stays == 1
        assert await _committed_n(tmp_path / "w.db") == 1
    finally:
        await engine.dispose()
