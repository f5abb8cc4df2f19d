"""orchestration_0002: the float-seconds time columns become int microseconds with their data, on
SQLite (embedded) and PostgreSQL, and back on downgrade."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.platform.db import create_engine
from tests.conftest import fresh_database
from tests.helpers import alembic

# 2025-06-01T12:00:00.123456Z and a second later, as float seconds (not exactly representable).
T0, T1 = 1748779200.123456, 1748779201.654321


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        db = create_engine(f"sqlite+aiosqlite:///{tmp_path}/orch.db")
        yield db
        await db.dispose()
        return
    with fresh_database(()) as url:
        db = create_engine(url)
        try:
            yield db
        finally:
            await db.dispose()


async def _rows(engine: AsyncEngine, query: str) -> list[tuple[object, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(sa.text(query))]


async def test_times_become_microseconds_with_their_data_and_back(engine: AsyncEngine) -> None:
    await alembic(engine, "orchestration", "upgrade", "orchestration_0001")
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO sessions (id, tenant_id, user_id, agent_id, agent_version, conversation_id,"
                " title, state, create_time, update_time, end_time)"
                " VALUES ('s1', 't', 'u', 'a', 1, 'c', '', 2, :t0, :t1, :t1)"
            ),
            {"t0": T0, "t1": T1},
        )
        await conn.execute(
            sa.text(
                "INSERT INTO runs (id, tenant_id, session_id, user_id, state, input_text, create_time,"
                " start_time, end_time) VALUES ('r1', 't', 's1', 'u', 1, 'hi', :t0, NULL, NULL)"
            ),
            {"t0": T0},
        )

    await alembic(engine, "orchestration", "upgrade", "orchestration_0002")
    assert await _rows(engine, "SELECT create_time_us, update_time_us, end_time_us FROM sessions") == [
        (1748779200123456, 1748779201654321, 1748779201654321)
    ]
    assert await _rows(engine, "SELECT create_time_us, start_time_us, end_time_us FROM runs") == [
        (1748779200123456, None, None)
    ]
    async with engine.begin() as conn:
        # A required time stays required.
        with pytest.raises(sa.exc.IntegrityError):
            async with conn.begin_nested():
                await conn.execute(sa.text("UPDATE runs SET create_time_us = NULL"))

    await alembic(engine, "orchestration", "downgrade", "orchestration_0001")
    [(create, update, end)] = await _rows(engine, "SELECT create_time, update_time, end_time FROM sessions")
    assert (create, update, end) == pytest.approx((T0, T1, T1), abs=1e-6)
    assert await _rows(engine, "SELECT start_time, end_time FROM runs") == [(None, None)]
