"""SQL for the tables orchestration owns: sessions and runs (SQLAlchemy 2 async Core); the per-session
lock in Redis beside it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import psycopg
import redis.asyncio as aioredis
import sqlalchemy as sa
from psycopg.rows import namedtuple_row
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import Executable

from services.orchestration.models import (
    ModelFallback,
    ResponseFormat,
    Run,
    RunError,
    RunState,
    RunToolCall,
    Session,
    SessionState,
    ToolCallStatus,
    ToolExecution,
    Usage,
)
from services.platform import db, errors
from services.platform.batching import Batcher
from services.platform.db import AutocommitPool

metadata = sa.MetaData()

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant_id", sa.String(64)),
    sa.Column("user_id", sa.String(64)),
    sa.Column("agent_id", sa.String(64)),
    sa.Column("agent_version", sa.BigInteger),
    sa.Column("conversation_id", sa.String(64)),
    sa.Column("title", sa.String(256)),
    sa.Column("state", sa.SmallInteger),
    sa.Column("active_run_id", sa.String(36)),
    sa.Column("request_id", sa.String(128)),
    sa.Column("create_time_us", sa.BigInteger),
    sa.Column("update_time_us", sa.BigInteger),
    sa.Column("end_time_us", sa.BigInteger),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant_id", sa.String(64)),
    sa.Column("session_id", sa.String(36)),
    sa.Column("user_id", sa.String(64)),
    sa.Column("state", sa.SmallInteger),
    sa.Column("agent_version", sa.BigInteger),
    sa.Column("input_text", sa.Text),
    sa.Column("request_id", sa.String(128)),
    sa.Column("user_message_id", sa.String(64)),
    sa.Column("assistant_message_id", sa.String(64)),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("last_event_id", sa.BigInteger),
    sa.Column("create_time_us", sa.BigInteger),
    sa.Column("start_time_us", sa.BigInteger),
    sa.Column("end_time_us", sa.BigInteger),
    sa.Column("model", sa.String(128)),
    sa.Column("usage_source", sa.String(16)),
    sa.Column("tool_calls", sa.Integer),
    sa.Column("duration_ms", sa.BigInteger),
    sa.Column("fallbacks", sa.Text),
    sa.Column("model_override", sa.String(128)),
    sa.Column("steps", sa.Integer),
    sa.Column("wait_expire_us", sa.BigInteger),
    sa.Column("heartbeat_us", sa.BigInteger),
    sa.Column("response_format", sa.Text),
)

# A waiting run's calls (and the calls of its earlier steps, with their results).
tool_call_table = sa.Table(
    "tool_calls",
    metadata,
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column("call_id", sa.String(128), primary_key=True),
    sa.Column("step", sa.Integer),
    sa.Column("position", sa.Integer),
    sa.Column("name", sa.String(64)),
    sa.Column("arguments_json", sa.Text),
    sa.Column("execution", sa.String(16)),
    sa.Column("requires_approval", sa.Boolean),
    sa.Column("status", sa.String(32)),
    sa.Column("output", sa.Text),
    sa.Column("is_error", sa.Boolean),
    sa.Column("duration_ms", sa.BigInteger),
    sa.Column("create_time_us", sa.BigInteger),
    sa.Column("update_time_us", sa.BigInteger),
)

tool_secrets = sa.Table(
    "tool_secrets",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("secret", sa.String(128)),
    sa.Column("rotated_us", sa.BigInteger),
)

# The stored codes of the states (the rows' SmallInteger columns).
SESSION_STATE_CODES = {SessionState.ACTIVE: 1, SessionState.ENDED: 2}
RUN_STATE_CODES = {
    RunState.QUEUED: 1,
    RunState.RUNNING: 2,
    RunState.COMPLETED: 3,
    RunState.FAILED: 4,
    RunState.CANCELLED: 5,
    RunState.REQUIRES_ACTION: 6,
    RunState.REQUIRES_APPROVAL: 7,
}
_SESSION_STATES = {code: state for state, code in SESSION_STATE_CODES.items()}
_RUN_STATES = {code: state for state, code in RUN_STATE_CODES.items()}
# Runs that hold a worker and a lease; live runs also include those waiting (no worker, no lease).
LEASED_STATES = (RUN_STATE_CODES[RunState.QUEUED], RUN_STATE_CODES[RunState.RUNNING])
WAITING_STATES = (RUN_STATE_CODES[RunState.REQUIRES_ACTION], RUN_STATE_CODES[RunState.REQUIRES_APPROVAL])
LIVE_STATES = LEASED_STATES + WAITING_STATES
PENDING_CALLS = (ToolCallStatus.AWAITING_APPROVAL.value, ToolCallStatus.AWAITING_OUTPUT.value)


def _session(row: Any) -> Session:
    return Session(
        id=row.id,
        tenant_id=row.tenant_id,
        user_id=row.user_id,
        agent_id=row.agent_id,
        agent_version=row.agent_version,
        conversation_id=row.conversation_id,
        title=row.title or "",
        state=_SESSION_STATES[row.state],
        active_run_id=row.active_run_id or "",
        create_time_us=row.create_time_us,
        update_time_us=row.update_time_us,
        end_time_us=row.end_time_us or 0,
    )


def _format_text(fmt: ResponseFormat | None) -> str | None:
    """A message's response format as its row keeps it (None: the agent's format applies)."""
    if fmt is None:
        return None
    return json.dumps({"json": fmt.json, "schema": fmt.schema, "name": fmt.name})


def _format_of(text: str | None) -> ResponseFormat | None:
    if not text:
        return None
    stored = json.loads(text)
    return ResponseFormat(json=bool(stored["json"]), schema=stored["schema"], name=stored["name"])


def _run(row: Any) -> Run:
    return Run(
        id=row.id,
        tenant_id=row.tenant_id,
        session_id=row.session_id,
        user_id=row.user_id,
        state=_RUN_STATES[row.state],
        agent_version=row.agent_version or 0,
        input_text=row.input_text,
        user_message_id=row.user_message_id or "",
        assistant_message_id=row.assistant_message_id or "",
        usage=Usage(
            row.prompt_tokens or 0,
            row.completion_tokens or 0,
            model=row.model or "",
            source=row.usage_source or "",
            tool_calls=row.tool_calls or 0,
            duration_ms=row.duration_ms or 0,
        ),
        model=row.model or "",
        fallbacks=tuple(ModelFallback(*f) for f in json.loads(row.fallbacks or "[]")),
        model_override=row.model_override or "",
        response_format=_format_of(row.response_format),
        error=RunError(row.error_code, row.error_message or "") if row.error_code else None,
        last_event_id=row.last_event_id or 0,
        create_time_us=row.create_time_us,
        start_time_us=row.start_time_us or 0,
        end_time_us=row.end_time_us or 0,
        steps=row.steps or 0,
        wait_expire_time_us=row.wait_expire_us or 0,
    )


# Run admission's statements on PostgreSQL (OrchestrationStore._fetch); SQLite takes the Core ones.
_SESSIONS_SQL = "SELECT * FROM sessions WHERE id = ANY(%(ids)s)"
_LIVE_RUNS_SQL = (
    "SELECT * FROM runs WHERE session_id = ANY(%(sessions)s) AND state = ANY(%(states)s)"
    " ORDER BY create_time_us, id"
)
# QUEUED -> RUNNING for a batch of runs, and each started run's session names it as its active run,
# in one statement (a data-modifying CTE runs exactly once, read or not).
_BEGIN_RUNS_SQL = """
WITH input AS (
    SELECT * FROM json_to_recordset(%(batch)s::json) AS i(run_id text, session_id text, version bigint)
), moved AS (
    UPDATE runs SET state = %(running)s, agent_version = input.version, start_time_us = %(now)s
    FROM input WHERE runs.id = input.run_id AND runs.state = %(queued)s
    RETURNING runs.id, input.session_id
), active AS (
    UPDATE sessions SET active_run_id = moved.id, update_time_us = %(now)s
    FROM moved WHERE sessions.id = moved.session_id
)
SELECT id FROM moved
"""


def _run_values(run: Run, request_id: str | None) -> dict[str, Any]:
    """A new run's row."""
    return {
        "id": run.id,
        "tenant_id": run.tenant_id,
        "session_id": run.session_id,
        "user_id": run.user_id,
        "state": RUN_STATE_CODES[run.state],
        "agent_version": run.agent_version,
        "input_text": run.input_text,
        "request_id": request_id or None,
        "user_message_id": "",
        "assistant_message_id": "",
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "last_event_id": run.last_event_id,
        "create_time_us": run.create_time_us,
        "model_override": run.model_override or None,
        "response_format": _format_text(run.response_format),
        "steps": 0,
    }


def _call(row: Any) -> RunToolCall:
    return RunToolCall(
        id=row.call_id,
        name=row.name,
        arguments_json=row.arguments_json,
        status=ToolCallStatus(row.status),
        step=row.step,
        execution=ToolExecution(row.execution),
        requires_approval=bool(row.requires_approval),
        output=row.output or "",
        is_error=bool(row.is_error),
        duration_ms=row.duration_ms or 0,
    )


def _call_values(run_id: str, position: int, call: RunToolCall, now_us: int) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "call_id": call.id,
        "step": call.step,
        "position": position,
        "name": call.name,
        "arguments_json": call.arguments_json,
        "execution": call.execution.value,
        "requires_approval": call.requires_approval,
        "status": call.status.value,
        "output": call.output,
        "is_error": call.is_error,
        "duration_ms": call.duration_ms,
        "create_time_us": now_us,
        "update_time_us": now_us,
    }


_FINISH: dict[frozenset[str], sa.Update] = {}
# The session's active run cleared, if still the run (finish_run(free_session)).
_FREE_SESSION = (
    sa.update(sessions)
    .where(
        sessions.c.id
        == sa.select(runs.c.session_id).where(runs.c.id == sa.bindparam("p_run")).scalar_subquery(),
        sessions.c.active_run_id == sa.bindparam("p_run"),
    )
    .values(active_run_id=None, update_time_us=sa.bindparam("p_now"))
)


def _finish_statement(columns: frozenset[str]) -> sa.Update:
    """finish_run's UPDATE for the columns it sets, built once per set (a handful: with or without
    usage, an error, an answer): building it per run cost more than SQLite running it. Parameters:
    v_<column>, p_run, p_states."""
    stmt = _FINISH.get(columns)
    if stmt is None:
        stmt = _FINISH[columns] = (
            runs.update()
            .where(
                runs.c.id == sa.bindparam("p_run"), runs.c.state.in_(sa.bindparam("p_states", expanding=True))
            )
            .values({c: sa.bindparam(f"v_{c}", type_=runs.c[c].type) for c in sorted(columns)})
        )
    return stmt


class OrchestrationStore:
    """Sessions and runs. Every read is scoped by tenant; the sweeper's scan is the one exception."""

    def __init__(self, engine: AsyncEngine, *, autocommit: AutocommitPool | None = None):
        """`autocommit`: the runtime's psycopg pool, which it has exactly when the database is
        PostgreSQL; run admission's statements then go through it (`_fetch`)."""
        self._engine = engine
        self._autocommit = autocommit
        # Run admission's writes, shared by concurrent admissions (bench/admission.py).
        self._run_inserts: Batcher[dict[str, Any], None] = Batcher(self._insert_runs, max_batch=256)
        self._run_starts: Batcher[tuple[str, str, int, int], bool] = Batcher(
            self._begin_runs, key=lambda item: item[1], max_batch=256
        )
        self._start_records: Batcher[tuple[str, str], None] = Batcher(self._record_starts, max_batch=256)
        # The session and live-run reads of concurrent calls share a statement too.
        self._session_reads: Batcher[str, Session | None] = Batcher(self._read_sessions, max_batch=256)
        self._live_reads: Batcher[str, list[Run]] = Batcher(self._read_live_runs, max_batch=256)

    async def _execute(self, stmt: Executable, params: list[dict[str, Any]] | None = None) -> int:
        """One write statement in a transaction of its own (on SQLite by its one writer,
        platform.db.write); the rows it matched."""

        async def execute(engine: AsyncEngine) -> int:
            async with engine.begin() as conn:
                return (await conn.execute(stmt, params)).rowcount

        return await db.write(self._engine, execute)

    # Sessions -------------------------------------------------------------------------------------

    async def insert_session(self, session: Session, *, request_id: str | None) -> None:
        values = {
            "id": session.id,
            "tenant_id": session.tenant_id,
            "user_id": session.user_id,
            "agent_id": session.agent_id,
            "agent_version": session.agent_version,
            "conversation_id": session.conversation_id,
            "title": session.title,
            "state": SESSION_STATE_CODES[session.state],
            "active_run_id": None,
            "request_id": request_id or None,
            "create_time_us": session.create_time_us,
            "update_time_us": session.update_time_us,
            "end_time_us": None,
        }
        await self._execute(sessions.insert().values(**values))

    async def session_by_request(self, tenant_id: str, user_id: str, request_id: str) -> Session | None:
        query = sessions.select().where(
            sessions.c.tenant_id == tenant_id,
            sessions.c.user_id == user_id,
            sessions.c.request_id == request_id,
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _session(row) if row else None

    async def _fetch(self, sql: str, params: dict[str, Any] | list[Any]) -> list[Any]:
        """One autocommit statement on psycopg directly: run admission's reads and writes, where
        SQLAlchemy's checkout, statement and result layers cost about four times the statement's
        own CPU (bench/admission.py)."""
        assert self._autocommit is not None
        async with self._autocommit.connection() as raw, raw.cursor(row_factory=namedtuple_row) as cursor:
            await cursor.execute(sql, params)
            return await cursor.fetchall() if cursor.description is not None else []

    async def _read_sessions(self, ids: list[str]) -> list[Session | None]:
        """The sessions asked for meanwhile, in one statement (the tenant is checked per caller)."""
        unique = list(set(ids))
        if self._autocommit is not None:
            rows = await self._fetch(_SESSIONS_SQL, {"ids": unique})
        else:
            async with self._engine.connect() as conn:
                rows = list(await conn.execute(sessions.select().where(sessions.c.id.in_(unique))))
        found = {row.id: _session(row) for row in rows}
        return [found.get(i) for i in ids]

    async def _read_live_runs(self, session_ids: list[str]) -> list[list[Run]]:
        """The live runs of the sessions asked for meanwhile, in one statement; each read started
        after its caller asked (Batcher), as the busy-policy decision under the lock needs."""
        unique = list(set(session_ids))
        if self._autocommit is not None:
            rows = await self._fetch(_LIVE_RUNS_SQL, {"sessions": unique, "states": list(LIVE_STATES)})
        else:
            query = (
                runs.select()
                .where(runs.c.session_id.in_(unique), runs.c.state.in_(LIVE_STATES))
                .order_by(runs.c.create_time_us, runs.c.id)
            )
            async with self._engine.connect() as conn:
                rows = list(await conn.execute(query))
        by_session: dict[str, list[Run]] = {}
        for row in rows:
            by_session.setdefault(row.session_id, []).append(_run(row))
        return [list(by_session.get(i, ())) for i in session_ids]

    async def get_session(self, tenant_id: str, session_id: str) -> Session | None:
        found = await self._session_reads.submit(session_id)
        return found if found is not None and found.tenant_id == tenant_id else None

    async def list_sessions(
        self,
        tenant_id: str,
        *,
        user_id: str | None,
        agent_id: str | None,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[Session]:
        """Newest first; `after` is the (create_time, id) of the last session of the previous page."""
        query = sessions.select().where(sessions.c.tenant_id == tenant_id)
        if user_id is not None:
            query = query.where(sessions.c.user_id == user_id)
        if agent_id:
            query = query.where(sessions.c.agent_id == agent_id)
        if after is not None:
            query = query.where(sa.tuple_(sessions.c.create_time_us, sessions.c.id) < sa.tuple_(*after))
        query = query.order_by(sessions.c.create_time_us.desc(), sessions.c.id.desc()).limit(limit)
        async with self._engine.connect() as conn:
            return [_session(r) for r in await conn.execute(query)]

    async def end_session(self, tenant_id: str, session_id: str, now_us: int) -> bool:
        stmt = (
            sessions.update()
            .where(
                sessions.c.id == session_id,
                sessions.c.tenant_id == tenant_id,
                sessions.c.state == SESSION_STATE_CODES[SessionState.ACTIVE],
            )
            .values(state=SESSION_STATE_CODES[SessionState.ENDED], end_time_us=now_us, update_time_us=now_us)
        )
        async with self._engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount == 1

    async def rename_session(self, tenant_id: str, session_id: str, title: str, now_us: int) -> None:
        stmt = (
            sessions.update()
            .where(sessions.c.id == session_id, sessions.c.tenant_id == tenant_id)
            .values(title=title, update_time_us=now_us)
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt)

    async def delete_session(self, tenant_id: str, session_id: str) -> None:
        """The session's row, its runs and their tool calls, in one transaction."""
        run_ids = sa.select(runs.c.id).where(runs.c.session_id == session_id, runs.c.tenant_id == tenant_id)
        async with self._engine.begin() as conn:
            await conn.execute(tool_call_table.delete().where(tool_call_table.c.run_id.in_(run_ids)))
            await conn.execute(
                runs.delete().where(runs.c.session_id == session_id, runs.c.tenant_id == tenant_id)
            )
            await conn.execute(
                sessions.delete().where(sessions.c.id == session_id, sessions.c.tenant_id == tenant_id)
            )

    async def set_active_run(
        self, session_id: str, run_id: str | None, now_us: int, *, only_if: str | None = None
    ) -> None:
        stmt = sessions.update().where(sessions.c.id == session_id)
        if only_if is not None:
            stmt = stmt.where(sessions.c.active_run_id == only_if)
        await self._execute(stmt.values(active_run_id=run_id, update_time_us=now_us))

    # Runs -----------------------------------------------------------------------------------------

    async def insert_run(self, run: Run, *, request_id: str | None) -> None:
        """The run's row. Admissions that arrive while an insert is on the wire share the next one
        (one transaction, one multi-row INSERT: platform.batching.Batcher, no timer)."""
        await self._run_inserts.submit(_run_values(run, request_id))

    async def _insert_runs(self, batch: list[dict[str, Any]]) -> list[BaseException | None]:
        try:
            if self._autocommit is not None:
                columns = list(batch[0])
                row = "(" + ", ".join(["%s"] * len(columns)) + ")"
                sql = f"INSERT INTO runs ({', '.join(columns)}) VALUES " + ", ".join([row] * len(batch))
                await self._fetch(sql, [values[c] for values in batch for c in columns])
            else:
                await self._execute(runs.insert(), batch)
        except (sa.exc.IntegrityError, psycopg.IntegrityError):
            # A twin request_id undoes the whole statement: one by one, only the twin fails.
            if len(batch) == 1:
                raise
            return [await self._insert_alone(values) for values in batch]
        return [None] * len(batch)

    async def _insert_alone(self, values: dict[str, Any]) -> BaseException | None:
        try:
            await self._insert_runs([values])
        except Exception as exc:  # that run's failure, not its batch's
            return exc
        return None

    async def get_run(self, tenant_id: str, run_id: str) -> Run | None:
        return await self._one_run(runs.select().where(runs.c.id == run_id, runs.c.tenant_id == tenant_id))

    async def run_by_request(self, session_id: str, request_id: str) -> Run | None:
        return await self._one_run(
            runs.select().where(runs.c.session_id == session_id, runs.c.request_id == request_id)
        )

    async def _one_run(self, query: sa.Select[Any]) -> Run | None:
        async def fetch(engine: AsyncEngine) -> Run | None:
            async with engine.connect() as conn:
                row = (await conn.execute(query)).first()
            return _run(row) if row else None

        return await db.read(self._engine, fetch)

    async def live_runs(self, session_id: str) -> list[Run]:
        """The session's queued and running runs, oldest first."""
        return await self._live_reads.submit(session_id)

    async def all_live_runs(self) -> list[Run]:
        """Every queued or running run of every tenant (the lease sweeper's scan; waiting runs hold
        no lease)."""
        query = runs.select().where(runs.c.state.in_(LEASED_STATES))
        async with self._engine.connect() as conn:
            return [_run(r) for r in await conn.execute(query)]

    async def beat(self, run_ids: list[str], now_us: int) -> None:
        """The owner's heartbeat of its leased runs: one statement for all of them."""
        if not run_ids:
            return
        stmt = runs.update().where(runs.c.id.in_(run_ids), runs.c.state.in_(LEASED_STATES))
        await self._execute(stmt.values(heartbeat_us=now_us))

    async def heartbeats(self, run_ids: list[str]) -> dict[str, int | None]:
        """Each run's last heartbeat (None: never beaten)."""
        query = sa.select(runs.c.id, runs.c.heartbeat_us).where(runs.c.id.in_(run_ids))
        async with self._engine.connect() as conn:
            return {row.id: row.heartbeat_us for row in await conn.execute(query)}

    async def list_runs(
        self, tenant_id: str, session_id: str, *, after: tuple[int, str] | None, limit: int
    ) -> list[Run]:
        query = runs.select().where(runs.c.tenant_id == tenant_id, runs.c.session_id == session_id)
        if after is not None:
            query = query.where(sa.tuple_(runs.c.create_time_us, runs.c.id) < sa.tuple_(*after))
        query = query.order_by(runs.c.create_time_us.desc(), runs.c.id.desc()).limit(limit)
        async with self._engine.connect() as conn:
            return [_run(r) for r in await conn.execute(query)]

    async def begin_run(self, run_id: str, *, session_id: str, agent_version: int, now_us: int) -> bool:
        """QUEUED -> RUNNING and the session's active run, in one transaction shared with the runs
        that start meanwhile (one session once per batch); False when the run is no longer queued
        (cancelled or swept)."""
        return await self._run_starts.submit((run_id, session_id, agent_version, now_us))

    async def _begin_runs(self, batch: list[tuple[str, str, int, int]]) -> list[bool]:
        versions = {run_id: version for run_id, _, version, _ in batch}
        now = max(now for *_, now in batch)
        if self._autocommit is not None:
            rows = await self._fetch(
                _BEGIN_RUNS_SQL,
                {
                    "batch": json.dumps(
                        [{"run_id": r, "session_id": s, "version": v} for r, s, v, _ in batch]
                    ),
                    "now": now,
                    "running": RUN_STATE_CODES[RunState.RUNNING],
                    "queued": RUN_STATE_CODES[RunState.QUEUED],
                },
            )
            started = {row.id for row in rows}
            return [run_id in started for run_id, *_ in batch]

        async def begin(engine: AsyncEngine) -> set[str]:
            async with engine.begin() as conn:
                moved = await conn.execute(
                    runs.update()
                    .where(runs.c.id.in_(list(versions)), runs.c.state == RUN_STATE_CODES[RunState.QUEUED])
                    .values(
                        state=RUN_STATE_CODES[RunState.RUNNING],
                        agent_version=sa.case(versions, value=runs.c.id),
                        start_time_us=now,
                    )
                    .returning(runs.c.id)
                )
                started = {row.id for row in moved}
                active = {session_id: run_id for run_id, session_id, _, _ in batch if run_id in started}
                if active:
                    await conn.execute(
                        sessions.update()
                        .where(sessions.c.id.in_(list(active)))
                        .values(active_run_id=sa.case(active, value=sessions.c.id), update_time_us=now)
                    )
                return started

        started = await db.write(self._engine, begin)
        return [run_id in started for run_id, *_ in batch]

    async def record_start(self, run_id: str, *, user_message_id: str) -> None:
        """A started run's user message and first step, in one statement shared with the runs that
        start meanwhile (a burst of runs otherwise writes one transaction each on the way to their
        first deltas)."""
        await self._start_records.submit((run_id, user_message_id))

    async def _record_starts(self, batch: list[tuple[str, str]]) -> list[None]:
        messages = dict(batch)
        await self._execute(
            runs.update()
            .where(runs.c.id.in_(list(messages)))
            .values(user_message_id=sa.case(messages, value=runs.c.id), steps=1)
        )
        return [None] * len(batch)

    async def update_run(self, run_id: str, **values: Any) -> None:
        await self._execute(runs.update().where(runs.c.id == run_id).values(**values))

    async def finish_run(
        self,
        run_id: str,
        *,
        state: RunState,
        now_us: int,
        last_event_id: int,
        usage: Usage | None = None,
        error: RunError | None = None,
        assistant_message_id: str = "",
        from_states: Iterable[int] = LIVE_STATES,
        fallbacks: tuple[ModelFallback, ...] = (),
        free_session: bool = False,
    ) -> bool:
        """Moves a live run to its end state; False when another party (the sweeper) got there first.
        `free_session`: in the same statement, its session's active run is cleared (if still it)."""
        values: dict[str, Any] = {
            "state": RUN_STATE_CODES[state],
            "end_time_us": now_us,
            "last_event_id": last_event_id,
        }
        if usage is not None:
            values.update(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                model=usage.model or None,
                usage_source=usage.source or None,
                tool_calls=usage.tool_calls,
                duration_ms=usage.duration_ms,
            )
        if fallbacks:
            values["fallbacks"] = json.dumps([[f.model, f.reason] for f in fallbacks])
        if error is not None:
            values.update(error_code=error.code, error_message=error.message)
        if assistant_message_id:
            values["assistant_message_id"] = assistant_message_id
        values["wait_expire_us"] = None
        if self._autocommit is not None:
            # One round trip for both rows, on psycopg directly (the end of every run).
            sets = ", ".join(f"{column} = %({column})s" for column in values)
            sql = (
                f"WITH ended AS (UPDATE runs SET {sets} WHERE id = %(run_id_)s"
                " AND state = ANY(%(from_states_)s) RETURNING session_id)"
            )
            if free_session:
                sql += (
                    ", freed AS (UPDATE sessions SET active_run_id = NULL, update_time_us = %(end_time_us)s"
                    " WHERE id IN (SELECT session_id FROM ended) AND active_run_id = %(run_id_)s)"
                )
            params = {**values, "run_id_": run_id, "from_states_": list(from_states)}
            rows = await self._fetch(sql + " SELECT count(*) AS n FROM ended", params)
            return bool(rows[0].n == 1)
        stmt = _finish_statement(frozenset(values))
        params = {f"v_{column}": value for column, value in values.items()}
        params.update(p_run=run_id, p_states=list(from_states))

        async def execute(engine: AsyncEngine) -> int:
            async with engine.begin() as conn:
                moved = (await conn.execute(stmt, params)).rowcount
                if moved == 1 and free_session:
                    await conn.execute(_FREE_SESSION, {"p_run": run_id, "p_now": now_us})
                return moved

        return await db.write(self._engine, execute) == 1

    # Waiting runs and their tool calls ----------------------------------------------------------

    async def wait_run(
        self,
        run_id: str,
        *,
        state: RunState,
        calls: list[RunToolCall],
        step: int,
        wait_expire_us: int,
        last_event_id: int,
        now_us: int,
    ) -> bool:
        """RUNNING -> waiting, with the step's calls (replacing any stored for that step), in one
        transaction; False when the run is no longer running (cancelled or swept)."""
        t = tool_call_table
        async with self._engine.begin() as conn:
            moved = await conn.execute(
                runs.update()
                .where(runs.c.id == run_id, runs.c.state == RUN_STATE_CODES[RunState.RUNNING])
                .values(
                    state=RUN_STATE_CODES[state],
                    wait_expire_us=wait_expire_us,
                    steps=step,
                    last_event_id=last_event_id,
                )
            )
            if moved.rowcount != 1:
                return False
            await conn.execute(t.delete().where(t.c.run_id == run_id, t.c.step == step))
            await conn.execute(t.insert(), [_call_values(run_id, i, c, now_us) for i, c in enumerate(calls)])
        return True

    async def record_calls(self, run_id: str, calls: list[RunToolCall], now_us: int) -> None:
        """A fresh step's calls, before its http calls run: a RUNNING row is what names a call in
        flight when the instance dies (the sweeper reads it); replaces the step's rows if any."""
        if not calls:
            return
        t = tool_call_table
        steps = {c.step for c in calls}
        async with self._engine.begin() as conn:
            await conn.execute(t.delete().where(t.c.run_id == run_id, t.c.step.in_(steps)))
            await conn.execute(t.insert(), [_call_values(run_id, i, c, now_us) for i, c in enumerate(calls)])

    async def running_calls(self, run_id: str) -> list[RunToolCall]:
        """The run's calls still RUNNING (for a run whose instance died: the calls it was in)."""
        t = tool_call_table
        query = (
            t.select()
            .where(t.c.run_id == run_id, t.c.status == ToolCallStatus.RUNNING.value)
            .order_by(t.c.step, t.c.position)
        )
        async with self._engine.connect() as conn:
            return [_call(r) for r in await conn.execute(query)]

    async def close_running_calls(self, run_id: str, output: str, now_us: int) -> None:
        """Every RUNNING call of the run gets `output` as its error result."""
        t = tool_call_table
        stmt = (
            t.update()
            .where(t.c.run_id == run_id, t.c.status == ToolCallStatus.RUNNING.value)
            .values(
                status=ToolCallStatus.COMPLETED.value, output=output, is_error=True, update_time_us=now_us
            )
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt)

    async def set_steps(self, run_id: str, steps: int) -> None:
        await self._execute(runs.update().where(runs.c.id == run_id).values(steps=steps))

    async def step_calls(self, run_id: str, step: int) -> list[RunToolCall]:
        t = tool_call_table
        query = t.select().where(t.c.run_id == run_id, t.c.step == step).order_by(t.c.position)
        async with self._engine.connect() as conn:
            return [_call(r) for r in await conn.execute(query)]

    async def pending_calls(self, run_id: str) -> list[RunToolCall]:
        t = tool_call_table
        query = (
            t.select()
            .where(t.c.run_id == run_id, t.c.status.in_(PENDING_CALLS))
            .order_by(t.c.step, t.c.position)
        )
        async with self._engine.connect() as conn:
            return [_call(r) for r in await conn.execute(query)]

    async def answer_call(
        self, run_id: str, call: RunToolCall, *, from_status: ToolCallStatus, now_us: int
    ) -> bool:
        """Records `call`'s new status, result and arguments if it still has `from_status`."""
        t = tool_call_table
        stmt = (
            t.update()
            .where(t.c.run_id == run_id, t.c.call_id == call.id, t.c.status == from_status.value)
            .values(
                status=call.status.value,
                output=call.output,
                is_error=call.is_error,
                arguments_json=call.arguments_json,
                duration_ms=call.duration_ms,
                update_time_us=now_us,
            )
        )
        async with self._engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount == 1

    async def resume_run(self, run_id: str, *, from_state: RunState, blocking: ToolCallStatus) -> bool:
        """Waiting -> RUNNING once no call of the run has the `blocking` status; exactly one caller
        wins (the one whose answer was the last)."""
        t = tool_call_table
        still_blocked = (
            sa.select(t.c.call_id).where(t.c.run_id == run_id, t.c.status == blocking.value).exists()
        )
        stmt = (
            runs.update()
            .where(runs.c.id == run_id, runs.c.state == RUN_STATE_CODES[from_state], ~still_blocked)
            .values(state=RUN_STATE_CODES[RunState.RUNNING], wait_expire_us=None)
        )
        async with self._engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount == 1

    async def close_pending_calls(self, run_id: str, status: ToolCallStatus, now_us: int) -> None:
        """Every unanswered call of the run gets `status` (EXPIRED, CANCELLED)."""
        t = tool_call_table
        stmt = (
            t.update()
            .where(t.c.run_id == run_id, t.c.status.in_(PENDING_CALLS))
            .values(status=status.value, update_time_us=now_us)
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt)

    async def expired_waiting_runs(self, now_us: int) -> list[Run]:
        """Every waiting run of every tenant whose wait has ended (the expiry sweep)."""
        query = runs.select().where(runs.c.state.in_(WAITING_STATES), runs.c.wait_expire_us <= now_us)
        async with self._engine.connect() as conn:
            return [_run(r) for r in await conn.execute(query)]

    # Tool signing secrets ---------------------------------------------------------------------

    async def tool_secret(self, tenant_id: str, *, new_secret: str, now_us: int) -> str:
        """The tenant's secret; `new_secret` becomes it when the tenant has none yet."""
        query = sa.select(tool_secrets.c.secret).where(tool_secrets.c.tenant_id == tenant_id)
        async with self._engine.connect() as conn:
            found = (await conn.execute(query)).scalar()
        if found is not None:
            return str(found)
        with contextlib.suppress(sa.exc.IntegrityError):
            async with self._engine.begin() as conn:
                await conn.execute(
                    tool_secrets.insert().values(tenant_id=tenant_id, secret=new_secret, rotated_us=now_us)
                )
        # Two first uses at once: the insert that lost reads the winner's secret.
        async with self._engine.connect() as conn:
            return str((await conn.execute(query)).scalar_one())

    async def set_tool_secret(self, tenant_id: str, secret: str, now_us: int) -> None:
        async with self._engine.begin() as conn:
            changed = await conn.execute(
                tool_secrets.update()
                .where(tool_secrets.c.tenant_id == tenant_id)
                .values(secret=secret, rotated_us=now_us)
            )
            if changed.rowcount == 0:
                await conn.execute(
                    tool_secrets.insert().values(tenant_id=tenant_id, secret=secret, rotated_us=now_us)
                )


SESSION_LOCK_KEY = "{{session:{session_id}}}:lock"


# Deletes the lock only while it is still the caller's (its TTL may have passed and another taken
# it): one command where GET then DEL took two round trips.
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class SessionLocks:
    """A short Redis lock per session (SET NX PX, released only by its holder)."""

    def __init__(self, redis: aioredis.Redis, *, wait_seconds: float = 5.0, ttl_ms: int = 5000):
        self._redis = redis
        self._wait = wait_seconds
        self._ttl_ms = ttl_ms
        # The locks taken and released meanwhile by other admissions share a pipeline (one round
        # trip): platform.batching.Batcher, no timer.
        self._takes: Batcher[tuple[str, bytes], bool] = Batcher(self._take_all, max_batch=512)
        self._releases: Batcher[tuple[str, bytes], None] = Batcher(self._release_all, max_batch=512)

    async def _take_all(self, locks: list[tuple[str, bytes]]) -> list[bool]:
        # NX with GET: a retried SET whose first try took the lock (its answer lost with the
        # connection) finds its own token, instead of waiting for its own lock to lapse (Redis 7.0+).
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, token in locks:
                pipe.set(key, token, nx=True, get=True, px=self._ttl_ms)
            before = await pipe.execute()
        return [held is None or held == token for held, (_, token) in zip(before, locks, strict=True)]

    async def _release_all(self, locks: list[tuple[str, bytes]]) -> list[None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, token in locks:
                pipe.eval(_RELEASE_LOCK, 1, key, token)
            await pipe.execute()
        return [None] * len(locks)

    @contextlib.asynccontextmanager
    async def session(self, session_id: str) -> AsyncIterator[None]:
        """Serialises the busy-policy decision of one session across instances."""
        key, token = SESSION_LOCK_KEY.format(session_id=session_id), uuid.uuid4().hex.encode()
        deadline = time.monotonic() + self._wait
        while not await self._takes.submit((key, token)):
            if time.monotonic() > deadline:
                raise errors.Unavailable("the session is busy; try again", reason="SESSION_LOCKED")
            await asyncio.sleep(0.005)
        try:
            yield
        finally:
            await self._releases.submit((key, token))
