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


class _Group:
    """The write transaction shared by the works of one group commit (SqliteWriter._commit)."""

    __slots__ = ("aborted", "mark")

    def __init__(self, changes: int):
        self.mark = changes  # total_changes when the current work began or last committed
        self.aborted = False


class _InlineConnection(aiosqlite.Connection):
    """aiosqlite's connection with every call made at once on the calling thread, no worker thread:
    an await on it never yields to the loop, so a whole write transaction runs in one loop turn.

    Inside a group commit (`group` set) a work's commit keeps its writes in the group's transaction,
    and a rollback with writes to undo rolls back the whole group (whose works then run one by one);
    a rollback with nothing to undo (a read, the pool's reset) does nothing."""

    def __init__(self, connector: Callable[[], sqlite3.Connection]):
        super().__init__(connector, iter_chunk_size=64)
        self.group: _Group | None = None

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

    async def commit(self) -> None:
        if self.group is None:
            await super().commit()
        elif self._connection is not None:
            self.group.mark = self._connection.total_changes

    async def rollback(self) -> None:
        group = self.group
        if group is None or self._connection is None:
            await super().rollback()
        elif self._connection.total_changes != group.mark:
            group.aborted = True
            self._connection.rollback()

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

    Group commit: the writes submitted during one loop iteration run together in the next, in one
    transaction with one COMMIT (one fsync), and each caller gets its outcome once that COMMIT is
    done. A transaction's BEGIN and COMMIT cost more than its statements: each releases the GIL,
    which another thread (the gRPC server's) then holds for up to the switch interval, and COMMIT
    syncs the WAL (docs/orchestration.md, "Group commit"). A work that fails or rolls back writes
    undoes the group; its works then run one by one, as they would have alone.
    """

    RETRY_SECONDS = 30.0  # as the pool connections' busy_timeout

    def __init__(self, path: str):
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(path, timeout=0, check_same_thread=False)
            for pragma in (*_SQLITE_PRAGMAS, "busy_timeout=0"):
                conn.execute(f"PRAGMA {pragma}")
            return conn

        self._inline: _InlineConnection | None = None

        async def creator() -> aiosqlite.Connection:
            self._inline = _InlineConnection(connect)
            return await self._inline

        self._queue: list[tuple[Callable[[AsyncEngine], Awaitable[Any]], asyncio.Future[Any]]] = []
        self._committer: asyncio.Task[None] | None = None
        self.engine = create_async_engine(
            f"sqlite+aiosqlite:///{path}", async_creator=creator, pool_size=1, max_overflow=0, pool_timeout=60
        )

    async def run(self, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
        """`work` in the next group commit; its outcome once the group is committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((work, future))
        if self._committer is None:
            self._committer = asyncio.get_running_loop().create_task(self._commit())
        return await future

    async def run_now(self, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
        """`work` at once, in a transaction of its own (retried whole while the lock is taken)."""
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

    async def _commit(self) -> None:
        batch: list[tuple[Callable[[AsyncEngine], Awaitable[Any]], asyncio.Future[Any]]] = []
        try:
            # Loops while writes queue up during a retry's sleep (the group itself never yields).
            while self._queue:
                batch = [(work, future) for work, future in self._queue if not future.cancelled()]
                self._queue = []
                outcomes = await self._group([work for work, _ in batch]) if len(batch) > 1 else None
                if outcomes is None:
                    outcomes = [await _outcome(self.run_now(work)) for work, _ in batch]
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        except asyncio.CancelledError:  # the loop is closing: no caller waits forever
            for _, future in [*batch, *self._queue]:
                future.cancel()
            raise
        finally:
            self._committer = None

    async def _group(self, works: list[Callable[[AsyncEngine], Awaitable[Any]]]) -> list[Any] | None:
        """The works' results in one transaction, committed; None when they must run one by one (a
        work failed or rolled back writes, the lock is taken, the commit failed): nothing of the
        group is left behind then."""
        try:
            async with self.engine.connect():
                pass  # opens the connection the first time
        except Exception:  # each work meets (and reports) it alone
            return None
        inline = self._inline
        raw = None if inline is None else inline._connection
        if inline is None or raw is None:
            return None
        try:
            raw.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return None  # another connection writes: one by one, each waiting its turn
        group = inline.group = _Group(raw.total_changes)
        results: list[Any] = []
        try:
            for work in works:
                group.mark = raw.total_changes
                results.append(await work(self.engine))
                if group.aborted or inline._connection is not raw:
                    break
            else:
                raw.commit()
                return results
        except Exception:  # that work runs again alone, and reports its own failure then
            pass
        finally:
            inline.group = None
        if inline._connection is raw and raw.in_transaction:
            raw.rollback()
        return None

    def close(self) -> None:
        """The engine's dispose() closes the writer's connection too (a later write reopens it)."""
        self.engine.sync_engine.dispose()


async def _outcome(call: Awaitable[T]) -> T | Exception:
    """A work's result, or its failure as a value (as platform.batching.Batcher's outcomes)."""
    try:
        return await call
    except Exception as exc:
        return exc


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
    writer = _WRITERS.get(engine.sync_engine)
    if writer is None:
        return await work(engine)
    return await writer.run_now(work)


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
