"""The SQLAlchemy 2 async engine: SQLite (aiosqlite) by default, PostgreSQL (psycopg) by URL."""

from __future__ import annotations

import pathlib

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def create_engine(url: str, *, pool_size: int = 16) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            pathlib.Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            # WAL lets readers run beside the writer; foreign keys are off by default in SQLite.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_async_engine(
        url,
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
        # TCP keepalives: a connection whose peer vanished without a reset (a cut network, a stalled
        # proxy) is found dead in about 20 s instead of hanging its query forever.
        connect_args={
            "connect_timeout": 3,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 2,
        },
    )


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
