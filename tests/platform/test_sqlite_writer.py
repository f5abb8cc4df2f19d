"""platform.db.write on a SQLite file (SqliteWriter): write transactions run inline and one at a
time, a transaction that meets the lock held by another connection is run again instead of failing
'database is locked' or blocking the event loop in SQLite's busy handler, and dispose() closes it."""

from __future__ import annotations

import asyncio
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
