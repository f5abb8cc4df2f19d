"""The SQLAlchemy 2 async engine: SQLite (aiosqlite) by default, PostgreSQL (psycopg) by URL; and,
on PostgreSQL, a small psycopg pool of autocommit connections for the hottest single-statement
writes."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# TCP keepalives: a connection whose peer vanished without a reset (a cut network, a stalled proxy)
# is found dead in about 20 s instead of hanging its query forever.
_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 3,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 2,
}


def create_engine(url: str, *, pool_size: int = 16) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            pathlib.Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets readers run beside the writer; foreign keys are off by default in SQLite.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_async_engine(
        url,
        connect_args=_CONNECT_ARGS,
        # A fixed pool and no overflow: connections beyond the pool were opened and closed on every
        # burst (a PostgreSQL backend start costs milliseconds), which cut append throughput to a
        # fifth. Callers past the pool wait for a connection instead.
        pool_size=pool_size,
        max_overflow=0,
        # No pre-ping: it doubled the cost of a one-row read. A connection found dead fails its
        # call with UNAVAILABLE (retryable) and the pool is invalidated and refilled.
        pool_pre_ping=False,
        pool_recycle=1800,
        # A database that cannot give a connection in time makes the call UNAVAILABLE, not a hang.
        pool_timeout=10,
    )


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


class AutocommitPool:
    """psycopg's own pool of autocommit connections to the engine's PostgreSQL database.

    For single-statement writes on the hottest path (AppendMessage): a checkout from SQLAlchemy's
    async pool crosses greenlets and sets then resets the isolation level, which cost more CPU than
    the statement itself (bench/conversation.py). Opened on first use, so a service that never calls
    it opens no connection; small, because each statement holds its connection for one round trip.
    """

    def __init__(self, engine: AsyncEngine, *, size: int = 8):
        url = engine.url.set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._size = size
        self._pool: AsyncConnectionPool | None = None
        self._opening = asyncio.Lock()
        self._checks: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        pool = self._pool or await self._open()
        try:
            async with pool.connection() as conn:
                yield conn
        except psycopg.OperationalError:
            # The database went away (a restart, a cut network): the pool's other idle connections
            # died with this one. Checking them now spares the next callers the same failure.
            if not self._checks:
                check = asyncio.get_running_loop().create_task(pool.check())
                self._checks.add(check)
                check.add_done_callback(self._checks.discard)
            raise

    async def _open(self) -> AsyncConnectionPool:
        async with self._opening:
            if self._pool is None:
                pool = AsyncConnectionPool(
                    self._conninfo,
                    min_size=1,
                    max_size=self._size,
                    kwargs={"autocommit": True, **_CONNECT_ARGS},
                    # As the engine's pool_timeout: no connection in time is UNAVAILABLE, not a hang.
                    timeout=10,
                    open=False,
                    name="autocommit",
                )
                await pool.open(wait=False)
                self._pool = pool
            return self._pool

    async def close(self) -> None:
        for check in list(self._checks):
            check.cancel()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
