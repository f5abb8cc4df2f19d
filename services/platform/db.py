"""The SQLAlchemy 2 async engine: SQLite (aiosqlite) by default, PostgreSQL (psycopg) by URL; and,
on PostgreSQL, a small psycopg pool of autocommit connections for the hottest single-statement
writes; on a SQLite file, one inline writer for the hot write transactions (`write`)."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any, TypeVar

import aiosqlite
import psycopg
import sqlalchemy.exc
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
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


T = TypeVar("T")


# WAL lets readers run beside the writer; foreign keys are off by default in SQLite. Every connection,
# the pool's and the inline writer's (which adds busy_timeout=0: it must never block the loop).
_SQLITE_PRAGMAS = ("journal_mode=WAL", "foreign_keys=ON")


def _sqlite_engine(url: str, **pool: Any) -> AsyncEngine:
    engine = create_async_engine(url, connect_args={"timeout": 30}, **pool)

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in (*_SQLITE_PRAGMAS, "busy_timeout=30000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    return engine


def create_engine(url: str, *, pool_size: int = 16) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            pathlib.Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Readers only wait for a connection (WAL: they never wait for the writer), and each is a
        # file handle and a thread: enough for every call in flight, not SQLAlchemy's 5 + 10, which
        # 500 concurrent chats queued behind for seconds (reads cancelled at the 10 s peer deadline).
        engine = _sqlite_engine(url, pool_size=pool_size, max_overflow=48, pool_timeout=60)
        if parsed.database and parsed.database != ":memory:":
            writer = SqliteWriter(parsed.database)
            _WRITERS[engine.sync_engine] = writer
            event.listen(engine.sync_engine, "engine_disposed", lambda _engine: writer.close())
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


class _InlineConnection(aiosqlite.Connection):
    """aiosqlite's connection with every call made at once on the calling thread, no worker thread:
    an await on it never yields to the loop, so a whole write transaction runs in one loop turn."""

    def __init__(self, connector: Callable[[], sqlite3.Connection]):
        super().__init__(connector, iter_chunk_size=64)

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._connection is None:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    async def _connect(self) -> aiosqlite.Connection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    def __await__(self) -> Generator[Any, None, aiosqlite.Connection]:
        return self._connect().__await__()

    def stop(self) -> None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class SqliteWriter:
    """The one writer of a SQLite database in this process, for the hot write transactions: each
    runs at once on the event loop's own thread, on a connection of its own.

    SQLite has one write lock per database. Through aiosqlite a transaction holds it across two
    loop turns and two GIL handovers per statement (each statement goes to a thread and back):
    under 500 concurrent chats tens of milliseconds a statement, so writes of a few statements held
    the lock for hundreds of milliseconds while the other writers slept in SQLite's busy handler
    (1 to 100 ms naps) holding pool connections, and reads waited for connections past their
    deadlines (bench/chat_load.py: most chats failed). A small write takes well under a millisecond
    done inline. Writers never wait in the busy handler here (busy_timeout 0, which would block the
    loop): a transaction that finds the lock taken by another connection (a write not made through
    here, another process) rolls back and is run again after a short sleep.
    """

    RETRY_SECONDS = 30.0  # as the pool connections' busy_timeout

    def __init__(self, path: str):
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(path, timeout=0, check_same_thread=False)
            for pragma in (*_SQLITE_PRAGMAS, "busy_timeout=0"):
                conn.execute(f"PRAGMA {pragma}")
            return conn

        async def creator() -> aiosqlite.Connection:
            return await _InlineConnection(connect)

        self.engine = create_async_engine(
            f"sqlite+aiosqlite:///{path}", async_creator=creator, pool_size=1, max_overflow=0, pool_timeout=60
        )

    async def run(self, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
        pause = 0.001
        deadline = time.monotonic() + self.RETRY_SECONDS
        while True:
            try:
                return await work(self.engine)
            except sqlalchemy.exc.OperationalError as exc:
                code = getattr(exc.orig, "sqlite_errorcode", None)
                if code is None or code & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
                if time.monotonic() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    def close(self) -> None:
        """The engine's dispose() closes the writer's connection too (a later write reopens it)."""
        self.engine.sync_engine.dispose()


_WRITERS: weakref.WeakKeyDictionary[Engine, SqliteWriter] = weakref.WeakKeyDictionary()


async def write(engine: AsyncEngine, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Runs `work`, a write transaction on the engine it is given: on a file SQLite database its
    SqliteWriter's (inline, retried whole while another connection holds the lock), elsewhere
    `engine` itself. `work` awaits nothing but its statements, and may run more than once."""
    writer = _WRITERS.get(engine.sync_engine)
    if writer is None:
        return await work(engine)
    return await writer.run(work)


async def read(engine: AsyncEngine, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Runs `work`, a read of a few rows by index, where `write` runs writes: inline on a file
    SQLite database (its SqliteWriter's connection; a reader never waits for the write lock in WAL
    mode), elsewhere on `engine` itself. Through the pool's aiosqlite each statement crosses to a
    thread and back, which under a burst of chats cost more than the statement. Inline the loop
    waits for the read, so only bounded index reads on the hot path belong here."""
    return await write(engine, work)


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
