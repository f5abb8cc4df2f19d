"""PostgreSQL (or SQLite) access for conversations, messages and retention policies.

No proto objects and no rules here: the service decides who may see what and passes it in as a
tenant and `only_user` (None: every user of the tenant). Appends have two implementations behind
`Appends`, chosen once when the store is made: one batched autocommit statement on PostgreSQL, one
transaction per message on any other database (SQLite, the embedded default).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Sequence
from typing import Any, Protocol, cast

import psycopg
import sqlalchemy as sa
from psycopg.rows import namedtuple_row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.conversation.models import (
    ACTIVE,
    CLOSED,
    DAY_US,
    Appended,
    AppendRefused,
    BranchRefused,
    Conversation,
    Message,
    MessageUsage,
    NewMessage,
    Price,
    QuotaLimit,
    Siblings,
    UsageRow,
    new_id,
    tool_calls_from_json,
    tool_calls_to_json,
)
from services.conversation.tables import (
    conversations,
    messages,
    model_prices,
    retention_policies,
    tenant_quotas,
    usage_daily,
)
from services.platform import db
from services.platform.batching import Batcher
from services.platform.db import AutocommitPool

# Appends as one statement, one round trip (PostgreSQL), for any number of conversations (one message
# each): the UPDATE takes each conversation's row lock and numbers its message (one deeper than the
# active leaf, which becomes its parent; the message is the new leaf), the INSERT uses that number; a stored request_id, another tenant's or user's conversation or a closed one makes the UPDATE
# match nothing for that row. The locks are taken in id order first, so two batches (from two
# processes) that share conversations wait for each other instead of deadlocking. An assistant
# message's usage is priced with the model's price as the statement sees it and added to its
# usage_daily row (one row per key per statement, in key order, so concurrent statements queue on the
# row instead of deadlocking): the aggregates commit or roll back with the message.
_APPEND_SQL = """
    WITH i AS (
        SELECT * FROM json_to_recordset(%(batch)s::json) AS i(
            cid text, tenant text, usr text, tokens bigint, now bigint, rid text, mid text, role text,
            content text, metadata json, tool text, usage jsonb, model text, pt bigint, ct bigint,
            tc bigint, day bigint, tool_calls json)
    ), locked AS MATERIALIZED (
        SELECT conv.id, conv.active_leaf_id AS leaf
        FROM conversations conv JOIN i ON conv.id = i.cid ORDER BY conv.id FOR UPDATE OF conv
    ), c AS (
        UPDATE conversations AS conv
        SET message_count = conv.message_count + 1, token_count = conv.token_count + i.tokens,
            update_time = i.now, last_message_time = i.now, path_length = conv.path_length + 1,
            active_leaf_id = i.mid
        FROM i JOIN locked ON locked.id = i.cid
        WHERE conv.id = i.cid AND conv.tenant_id = i.tenant AND (i.usr IS NULL OR conv.user_id = i.usr)
          AND conv.status = 'ACTIVE'
          AND NOT (i.rid <> '' AND EXISTS (
              SELECT 1 FROM messages WHERE conversation_id = i.cid AND request_id = i.rid))
        RETURNING conv.*, i.mid, locked.leaf AS parent
    ), p AS (
        SELECT c.mid, c.tenant_id, c.user_id, c.agent_id, i.day, i.model, i.pt, i.ct, i.tc,
               COALESCE((i.pt * pr.input_micros + i.ct * pr.output_micros + 500000) / 1000000, 0) AS cost
        FROM c JOIN i ON i.mid = c.mid LEFT JOIN model_prices pr ON pr.model = i.model
        WHERE i.model IS NOT NULL
    ), m AS (
        INSERT INTO messages (id, conversation_id, tenant_id, sequence, role, content, token_count,
                              metadata, tool_call_id, request_id, create_time, usage, tool_calls,
                              parent_id, on_path)
        SELECT c.mid, c.id, c.tenant_id, c.path_length, i.role, i.content, i.tokens,
               i.metadata, i.tool, i.rid, i.now,
               (i.usage || jsonb_build_object('cost_micros', p.cost, 'user_id', p.user_id))::json,
               i.tool_calls, c.parent, true
        FROM c JOIN i ON i.mid = c.mid LEFT JOIN p ON p.mid = c.mid
        RETURNING id
    ), u AS (
        INSERT INTO usage_daily AS d (tenant_id, day, user_id, agent_id, model, messages, prompt_tokens,
                                      completion_tokens, total_tokens, tool_calls, cost_micros)
        SELECT tenant_id, day, user_id, agent_id, model, count(*), sum(pt), sum(ct), sum(pt + ct),
               sum(tc), sum(cost)
        FROM p GROUP BY tenant_id, day, user_id, agent_id, model
        ORDER BY tenant_id, day, user_id, agent_id, model
        ON CONFLICT (tenant_id, day, user_id, agent_id, model) DO UPDATE SET
            messages = d.messages + excluded.messages,
            prompt_tokens = d.prompt_tokens + excluded.prompt_tokens,
            completion_tokens = d.completion_tokens + excluded.completion_tokens,
            total_tokens = d.total_tokens + excluded.total_tokens,
            tool_calls = d.tool_calls + excluded.tool_calls,
            cost_micros = d.cost_micros + excluded.cost_micros
        RETURNING 1
    )
    SELECT c.*, p.cost FROM c LEFT JOIN p ON p.mid = c.mid
"""


def _conversation(row: Any) -> Conversation:
    return Conversation(
        id=row.id,
        tenant_id=row.tenant_id,
        user_id=row.user_id,
        agent_id=row.agent_id,
        agent_version=row.agent_version,
        title=row.title,
        status=row.status,
        metadata=dict(row.metadata or {}),
        message_count=row.message_count,
        token_count=row.token_count,
        create_time=row.create_time,
        update_time=row.update_time,
        last_message_time=row.last_message_time,
        close_time=row.close_time,
        active_leaf_id=row.active_leaf_id,
        path_length=row.path_length,
    )


def _message(row: Any) -> Message:
    return Message(
        id=row.id,
        conversation_id=row.conversation_id,
        sequence=row.sequence,
        role=row.role,
        content=row.content,
        token_count=row.token_count,
        metadata=dict(row.metadata or {}),
        tool_call_id=row.tool_call_id,
        create_time=row.create_time,
        usage=None if row.usage is None else MessageUsage(**row.usage),
        tool_calls=tool_calls_from_json(row.tool_calls),
        parent_id=row.parent_id,
        on_path=bool(row.on_path),
    )


def _priced(usage: MessageUsage | None, cost: int, user_id: str) -> MessageUsage | None:
    return None if usage is None else dataclasses.replace(usage, cost_micros=cost, user_id=user_id)


def day_of(us: int) -> int:
    """The UTC midnight (microseconds) of the day `us` falls in."""
    return us - us % DAY_US


def scoped(tenant_id: str, only_user: str | None) -> list[sa.ColumnElement[bool]]:
    where = [conversations.c.tenant_id == tenant_id]
    if only_user is not None:
        where.append(conversations.c.user_id == only_user)
    return where


def _bound_scope(scope_user: bool) -> list[sa.ColumnElement[bool]]:
    """`scoped` for a statement built once: parameters p_tenant and, when `scope_user`, p_user
    (`_scope_params` gives them)."""
    where = [conversations.c.tenant_id == sa.bindparam("p_tenant")]
    if scope_user:
        where.append(conversations.c.user_id == sa.bindparam("p_user"))
    return where


def _scope_params(tenant_id: str, only_user: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"p_tenant": tenant_id}
    if only_user is not None:
        params["p_user"] = only_user
    return params


def _append_update(scope_user: bool) -> sa.Update:
    """PortableAppends' numbering UPDATE, built once (building a statement per call, its operators
    and its cache key, cost more than SQLite running it). Parameters: the scope's, p_id, p_tokens,
    p_now, p_leaf."""
    c = conversations.c
    return (
        conversations.update()
        .where(*_bound_scope(scope_user), c.id == sa.bindparam("p_id"), c.status == ACTIVE)
        .values(
            message_count=c.message_count + 1,
            token_count=c.token_count + sa.bindparam("p_tokens", type_=sa.BigInteger),
            update_time=sa.bindparam("p_now", type_=sa.BigInteger),
            last_message_time=sa.bindparam("p_now", type_=sa.BigInteger),
            path_length=c.path_length + 1,
            active_leaf_id=sa.bindparam("p_leaf"),
        )
        .returning(*conversations.c)
    )


_APPEND_UPDATE = {False: _append_update(False), True: _append_update(True)}
# The active path's message at a sequence (the new message's parent); the message of a request id.
_PATH_AT = sa.select(messages.c.id).where(
    messages.c.conversation_id == sa.bindparam("p_id"),
    messages.c.on_path,
    messages.c.sequence == sa.bindparam("p_sequence"),
)
_BY_REQUEST_ID = sa.select(messages).where(
    messages.c.conversation_id == sa.bindparam("p_id"), messages.c.request_id == sa.bindparam("p_request")
)
_INSERT_MESSAGE = messages.insert()


_GET = {
    scope_user: sa.select(conversations).where(
        *_bound_scope(scope_user), conversations.c.id == sa.bindparam("p_id")
    )
    for scope_user in (False, True)
}
_BEFORE = (
    sa.select(messages)
    .where(
        messages.c.conversation_id == sa.bindparam("p_id"),
        messages.c.on_path,
        messages.c.sequence < sa.bindparam("p_before"),
    )
    .order_by(messages.c.sequence.desc())
    .limit(sa.bindparam("p_limit"))
)


async def _get(
    conn: AsyncConnection, tenant_id: str, only_user: str | None, conversation_id: str
) -> Conversation | None:
    params = {**_scope_params(tenant_id, only_user), "p_id": conversation_id}
    row = (await conn.execute(_GET[only_user is not None], params)).first()
    return _conversation(row) if row else None


async def _message_by_request_id(
    conn: AsyncConnection, conversation_id: str, request_id: str
) -> Message | None:
    row = (await conn.execute(_BY_REQUEST_ID, {"p_id": conversation_id, "p_request": request_id})).first()
    return _message(row) if row else None


async def _message_in(conn: AsyncConnection, conversation_id: str, message_id: str) -> Message | None:
    row = (
        await conn.execute(
            sa.select(messages).where(
                messages.c.conversation_id == conversation_id, messages.c.id == message_id
            )
        )
    ).first()
    return _message(row) if row else None


class _Undone(Exception):
    """Raised inside a transaction to roll it back and answer `result` (a refusal, a replay): the
    row lock's update_time must not stay behind on a call that changed nothing."""

    def __init__(self, result: object):
        self.result = result


async def _lock(
    conn: AsyncConnection, tenant_id: str, only_user: str | None, conversation_id: str, now: int
) -> Conversation | None:
    """Takes the conversation's row lock for the transaction (the one appends take), so a branch
    change and an append never interleave; None when the conversation is not visible."""
    c = conversations.c
    updated = await conn.execute(
        conversations.update()
        .where(*scoped(tenant_id, only_user), c.id == conversation_id)
        .values(update_time=now)
    )
    if not updated.rowcount:
        return None
    return await _get(conn, tenant_id, only_user, conversation_id)


async def _newest_leaf(conn: AsyncConnection, conversation_id: str, message_id: str) -> Message | None:
    """From a message down, the newest child at each step, to a leaf (one indexed read a level)."""
    m = messages.c
    current = await _message_in(conn, conversation_id, message_id)
    while current is not None:
        row = (
            await conn.execute(
                sa.select(messages)
                .where(m.conversation_id == conversation_id, m.parent_id == current.id)
                .order_by(m.create_time.desc(), m.id.desc())
                .limit(1)
            )
        ).first()
        if row is None:
            return current
        current = _message(row)
    return None


def _ancestors(leaf_id: str) -> sa.CTE:
    """The ids of a message and its ancestors (a recursive walk up the parent links)."""
    m = messages.c
    path = sa.select(m.id, m.parent_id).where(m.id == leaf_id).cte("path", recursive=True)
    parent = messages.alias("parent")
    return path.union_all(sa.select(parent.c.id, parent.c.parent_id).where(parent.c.id == path.c.parent_id))


async def _path_to(conn: AsyncConnection, leaf: Message) -> list[Message]:
    path = _ancestors(leaf.id)
    rows = await conn.execute(sa.select(messages).where(messages.c.id.in_(sa.select(path.c.id))))
    return sorted((_message(r) for r in rows), key=lambda message: message.sequence)


async def _activate(conn: AsyncConnection, conversation_id: str, leaf_id: str) -> None:
    """Marks the path from the root to `leaf_id` as the active path and nothing else. Two
    statements, off first: the active path's (conversation, sequence) is unique at every row."""
    m = messages.c
    on = sa.select(_ancestors(leaf_id).c.id)
    await conn.execute(
        messages.update()
        .where(m.conversation_id == conversation_id, m.on_path, m.id.not_in(on))
        .values(on_path=False)
    )
    await conn.execute(
        messages.update()
        .where(m.conversation_id == conversation_id, ~m.on_path, m.id.in_(on))
        .values(on_path=True)
    )


async def _not_appended(
    conn: AsyncConnection, tenant_id: str, only_user: str | None, conversation_id: str, request_id: str
) -> Appended | AppendRefused:
    """Why an append matched no conversation row: the UPDATE of either implementation refuses only
    a conversation outside the scope, a closed one, and (PostgreSQL) a request_id already stored."""
    conversation = await _get(conn, tenant_id, only_user, conversation_id)
    if conversation is None:
        return AppendRefused.MISSING
    if request_id:
        replay = await _message_by_request_id(conn, conversation_id, request_id)
        if replay is not None:
            return Appended(replay, conversation, replayed=True)
    return AppendRefused.CLOSED


_PRICE = sa.select(model_prices).where(model_prices.c.model == sa.bindparam("p_model"))


async def _price(conn: AsyncConnection, model: str) -> Price | None:
    row = (await conn.execute(_PRICE, {"p_model": model})).first()
    return None if row is None else Price(**row._mapping)


def _add_usage_update() -> sa.Update:
    d = usage_daily.c

    def plus(column: sa.Column[int], name: str) -> sa.ColumnElement[int]:
        return column + sa.bindparam(name, type_=sa.BigInteger)

    return (
        usage_daily.update()
        .where(
            d.tenant_id == sa.bindparam("p_tenant"),
            d.day == sa.bindparam("p_day"),
            d.user_id == sa.bindparam("p_user"),
            d.agent_id == sa.bindparam("p_agent"),
            d.model == sa.bindparam("p_model"),
        )
        .values(
            messages=d.messages + 1,
            prompt_tokens=plus(d.prompt_tokens, "p_prompt"),
            completion_tokens=plus(d.completion_tokens, "p_completion"),
            total_tokens=plus(d.total_tokens, "p_total"),
            tool_calls=plus(d.tool_calls, "p_calls"),
            cost_micros=plus(d.cost_micros, "p_cost"),
        )
    )


_ADD_USAGE = _add_usage_update()
_INSERT_USAGE = usage_daily.insert()


async def _add_usage(
    conn: AsyncConnection, tenant_id: str, day: int, user_id: str, agent_id: str, usage: MessageUsage
) -> None:
    """The portable twin of `_APPEND_SQL`'s upsert, inside the append's transaction (which SQLite
    serialises, so the read-then-insert cannot race)."""
    updated = await conn.execute(
        _ADD_USAGE,
        {
            "p_tenant": tenant_id,
            "p_day": day,
            "p_user": user_id,
            "p_agent": agent_id,
            "p_model": usage.model,
            "p_prompt": usage.prompt_tokens,
            "p_completion": usage.completion_tokens,
            "p_total": usage.total_tokens,
            "p_calls": usage.tool_calls,
            "p_cost": usage.cost_micros,
        },
    )
    if not updated.rowcount:
        await conn.execute(
            _INSERT_USAGE,
            {
                "tenant_id": tenant_id,
                "day": day,
                "user_id": user_id,
                "agent_id": agent_id,
                "model": usage.model,
                "messages": 1,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
                "tool_calls": usage.tool_calls,
                "cost_micros": usage.cost_micros,
            },
        )


class Appends(Protocol):
    async def append(
        self,
        tenant_id: str,
        only_user: str | None,
        conversation_id: str,
        new: NewMessage,
        *,
        token_count: int,
        request_id: str,
        now: int,
    ) -> Appended | AppendRefused:
        """Commits the next message (or finds the one its request_id already stored).

        Appends to one conversation are serialised by its row lock and each gets the next sequence
        number; a failure rolls the count back with the message, so sequence numbers have no gaps.
        """
        ...


class PortableAppends:
    """Any database SQLAlchemy speaks: one transaction per message (on SQLite, by its one writer:
    platform.db.write)."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def append(
        self,
        tenant_id: str,
        only_user: str | None,
        conversation_id: str,
        new: NewMessage,
        *,
        token_count: int,
        request_id: str,
        now: int,
    ) -> Appended | AppendRefused:
        return await db.write(
            self.engine,
            lambda engine: self._append(
                engine,
                tenant_id,
                only_user,
                conversation_id,
                new,
                token_count=token_count,
                request_id=request_id,
                now=now,
            ),
        )

    @staticmethod
    async def _append(
        engine: AsyncEngine,
        tenant_id: str,
        only_user: str | None,
        conversation_id: str,
        new: NewMessage,
        *,
        token_count: int,
        request_id: str,
        now: int,
    ) -> Appended | AppendRefused:
        message_id = new_id()
        numbering = {
            **_scope_params(tenant_id, only_user),
            "p_id": conversation_id,
            "p_tokens": token_count,
            "p_now": now,
            "p_leaf": message_id,
        }
        # Leaving the block without a commit (an error) closes the connection, which rolls back.
        async with engine.connect() as conn:
            transaction = await conn.begin()
            row = (await conn.execute(_APPEND_UPDATE[only_user is not None], numbering)).first()
            # Under the row lock, so a concurrent twin has either committed (seen) or not begun.
            if row is None or (
                request_id and await _message_by_request_id(conn, conversation_id, request_id) is not None
            ):
                await transaction.rollback()
                return await _not_appended(conn, tenant_id, only_user, conversation_id, request_id)
            usage = new.usage
            if usage is not None:
                price = await _price(conn, usage.model)
                usage = dataclasses.replace(usage, cost_micros=usage.cost_at(price), user_id=row.user_id)
                await _add_usage(conn, tenant_id, day_of(now), row.user_id, row.agent_id, usage)
            # Under the write lock: the active path's message one above the new one is its parent.
            parent = (
                await conn.execute(_PATH_AT, {"p_id": conversation_id, "p_sequence": row.path_length - 1})
            ).scalar() or ""
            message = Message(
                id=message_id,
                parent_id=parent,
                conversation_id=conversation_id,
                sequence=row.path_length,
                role=new.role,
                content=new.content,
                token_count=token_count,
                metadata=dict(new.metadata),
                tool_call_id=new.tool_call_id,
                create_time=now,
                usage=usage,
                tool_calls=new.tool_calls,
            )
            row_values = {**dataclasses.asdict(message), "tool_calls": tool_calls_to_json(new.tool_calls)}
            await conn.execute(
                _INSERT_MESSAGE, {**row_values, "tenant_id": tenant_id, "request_id": request_id}
            )
            await transaction.commit()
        return Appended(message, _conversation(row), replayed=False)


class PostgresAppends:
    """PostgreSQL: the same append as one autocommit statement (`_APPEND_SQL`), shared with the
    appends to other conversations that arrive meanwhile. What it does not append (missing, closed,
    a stored request_id, or a twin that committed while this one waited and tripped the unique
    index) is then told apart by one read."""

    def __init__(self, engine: AsyncEngine, autocommit: AutocommitPool):
        self.engine = engine
        self._autocommit = autocommit
        # Concurrent appends share statements; one conversation appears once per statement, since
        # an UPDATE changes a row once however many input rows join it.
        self._batcher: Batcher[dict[str, Any], Any] = Batcher(self._append_rows, key=lambda item: item["cid"])

    async def append(
        self,
        tenant_id: str,
        only_user: str | None,
        conversation_id: str,
        new: NewMessage,
        *,
        token_count: int,
        request_id: str,
        now: int,
    ) -> Appended | AppendRefused:
        message_id = new_id()
        params: dict[str, Any] = {
            "cid": conversation_id,
            "tenant": tenant_id,
            "usr": only_user,
            "tokens": token_count,
            "now": now,
            "rid": request_id,
            "mid": message_id,
            "role": new.role,
            "content": new.content,
            "metadata": new.metadata,
            "tool": new.tool_call_id,
            "tool_calls": tool_calls_to_json(new.tool_calls),
        }
        usage = new.usage
        if usage is not None:
            params.update(
                usage=dataclasses.asdict(usage),
                model=usage.model,
                pt=usage.prompt_tokens,
                ct=usage.completion_tokens,
                tc=usage.tool_calls,
                day=day_of(now),
            )
        row = await self._batcher.submit(params)
        if row is None:
            async with self.engine.connect() as conn:
                return await _not_appended(conn, tenant_id, only_user, conversation_id, request_id)
        message = Message(
            id=message_id,
            conversation_id=conversation_id,
            sequence=row.path_length,
            parent_id=row.parent,
            role=new.role,
            content=new.content,
            token_count=token_count,
            metadata=dict(new.metadata),
            tool_call_id=new.tool_call_id,
            create_time=now,
            usage=_priced(usage, row.cost or 0, row.user_id),
            tool_calls=new.tool_calls,
        )
        return Appended(message, _conversation(row), replayed=False)

    async def _append_rows(self, batch: list[dict[str, Any]]) -> list[Any]:
        """Runs `_APPEND_SQL` for a batch (one message per conversation); the conversation row of
        each appended message, or None for each that was not. A unique-index violation undoes the
        whole statement: the batch is then retried one by one, so only the twin fails."""
        # One JSON parameter for the whole batch: json.dumps is far cheaper than psycopg's array dumpers.
        params = {"batch": json.dumps(batch)}
        try:
            # The hottest write of the mesh runs on psycopg directly: SQLAlchemy's statement and
            # result layers cost more than the round trip.
            async with self._autocommit.connection() as raw, raw.cursor(row_factory=namedtuple_row) as cursor:
                await cursor.execute(_APPEND_SQL, params)
                fetched: list[Any] = await cursor.fetchall()
                rows = {row.mid: row for row in fetched}
        except psycopg.IntegrityError:
            if len(batch) > 1:
                return [await self._append_alone(item) for item in batch]
            if not batch[0]["rid"]:
                raise
            return [None]
        return [rows.get(item["mid"]) for item in batch]

    async def _append_alone(self, item: dict[str, Any]) -> Any:
        try:
            return (await self._append_rows([item]))[0]
        except Exception as exc:  # that item's failure, not its batch's
            return exc


class ConversationStore:
    def __init__(self, engine: AsyncEngine, *, autocommit: AutocommitPool | None = None):
        """`autocommit`: the runtime's psycopg pool of autocommit connections, which it has exactly
        when the database is PostgreSQL; it selects the one-statement appends."""
        self.engine = engine
        self.appends: Appends = (
            PortableAppends(engine) if autocommit is None else PostgresAppends(engine, autocommit)
        )

    # -- conversations -------------------------------------------------------------------------

    async def create_conversation(self, conversation: Conversation, *, request_id: str) -> Conversation:
        """Inserts; with a request_id already used by this user, returns that first conversation."""
        if request_id:
            existing = await self._by_request_id(conversation.tenant_id, conversation.user_id, request_id)
            if existing is not None:
                return existing
        values = dataclasses.asdict(conversation)
        values["request_id"] = request_id

        async def insert(engine: AsyncEngine) -> None:
            async with engine.begin() as conn:
                await conn.execute(conversations.insert().values(**values))

        try:
            await db.write(self.engine, insert)
        except IntegrityError:
            # A twin with the same request_id committed between the check and the insert.
            if not request_id:
                raise
            existing = await self._by_request_id(conversation.tenant_id, conversation.user_id, request_id)
            if existing is None:
                raise
            return existing
        return conversation

    async def _by_request_id(self, tenant_id: str, user_id: str, request_id: str) -> Conversation | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(conversations).where(
                        *scoped(tenant_id, user_id), conversations.c.request_id == request_id
                    )
                )
            ).first()
        return _conversation(row) if row else None

    async def get_conversation(
        self, tenant_id: str, only_user: str | None, conversation_id: str
    ) -> Conversation | None:
        async def get(engine: AsyncEngine) -> Conversation | None:
            async with engine.connect() as conn:
                return await _get(conn, tenant_id, only_user, conversation_id)

        return await db.read(self.engine, get)

    async def list_conversations(
        self,
        tenant_id: str,
        only_user: str | None,
        *,
        agent_id: str,
        user_id: str,
        status: str,
        start_time: int,
        end_time: int,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[Conversation]:
        c = conversations.c
        where = scoped(tenant_id, only_user)
        if agent_id:
            where.append(c.agent_id == agent_id)
        if user_id:
            where.append(c.user_id == user_id)
        if status:
            where.append(c.status == status)
        if start_time:
            where.append(c.create_time >= start_time)
        if end_time:
            where.append(c.create_time < end_time)
        if after is not None:
            t, i = after
            where.append(sa.or_(c.create_time < t, sa.and_(c.create_time == t, c.id < i)))
        query = (
            sa.select(conversations).where(*where).order_by(c.create_time.desc(), c.id.desc()).limit(limit)
        )
        async with self.engine.connect() as conn:
            return [_conversation(r) for r in await conn.execute(query)]

    async def close_conversation(
        self, tenant_id: str, only_user: str | None, conversation_id: str, *, now: int
    ) -> Conversation | None:
        c = conversations.c
        async with self.engine.begin() as conn:
            await conn.execute(
                conversations.update()
                .where(*scoped(tenant_id, only_user), c.id == conversation_id, c.status == ACTIVE)
                .values(status=CLOSED, close_time=now, update_time=now)
            )
            return await _get(conn, tenant_id, only_user, conversation_id)

    async def update_conversation(
        self, tenant_id: str, only_user: str | None, conversation_id: str, values: dict[str, Any], *, now: int
    ) -> Conversation | None:
        """Sets `values` (title, metadata) on a visible conversation; None when it is not visible."""
        async with self.engine.begin() as conn:
            await conn.execute(
                conversations.update()
                .where(*scoped(tenant_id, only_user), conversations.c.id == conversation_id)
                .values(**values, update_time=now)
            )
            return await _get(conn, tenant_id, only_user, conversation_id)

    async def delete_conversations(self, conversation_ids: Sequence[str]) -> int:
        """Erases conversations and their messages; returns how many conversations went."""
        if not conversation_ids:
            return 0
        async with self.engine.begin() as conn:
            await conn.execute(messages.delete().where(messages.c.conversation_id.in_(conversation_ids)))
            result = await conn.execute(
                conversations.delete().where(conversations.c.id.in_(conversation_ids))
            )
        return result.rowcount or 0

    # -- messages ------------------------------------------------------------------------------

    async def append_message(
        self,
        tenant_id: str,
        only_user: str | None,
        conversation_id: str,
        new: NewMessage,
        *,
        token_count: int,
        request_id: str,
        now: int,
    ) -> Appended | AppendRefused:
        return await self.appends.append(
            tenant_id,
            only_user,
            conversation_id,
            new,
            token_count=token_count,
            request_id=request_id,
            now=now,
        )

    async def messages_before(self, conversation_id: str, before: int, *, limit: int) -> list[Message]:
        """The `limit` messages of the active path just below sequence `before`, newest first (one
        bounded index read)."""
        params = {"p_id": conversation_id, "p_before": before, "p_limit": limit}

        async def fetch(engine: AsyncEngine) -> list[Message]:
            async with engine.connect() as conn:
                return [_message(r) for r in await conn.execute(_BEFORE, params)]

        return await db.read(self.engine, fetch)

    async def list_messages(
        self, conversation_id: str, *, after: int, before: int, descending: bool, limit: int
    ) -> list[Message]:
        """Messages of the active path with after < sequence < before (0: no bound) in sequence order."""
        m = messages.c
        where = [m.conversation_id == conversation_id, m.on_path]
        if after:
            where.append(m.sequence > after)
        if before:
            where.append(m.sequence < before)
        order = m.sequence.desc() if descending else m.sequence.asc()
        query = sa.select(messages).where(*where).order_by(order).limit(limit)
        async with self.engine.connect() as conn:
            return [_message(r) for r in await conn.execute(query)]

    # -- branches ------------------------------------------------------------------------------

    async def get_message(self, conversation_id: str, message_id: str) -> Message | None:
        async with self.engine.connect() as conn:
            return await _message_in(conn, conversation_id, message_id)

    async def siblings(self, conversation_id: str, parent_ids: Sequence[str]) -> dict[str, Siblings]:
        """parent id -> the ids of its children, oldest first (one indexed read for a page)."""
        m = messages.c
        query = (
            sa.select(m.parent_id, m.id)
            .where(m.conversation_id == conversation_id, m.parent_id.in_(set(parent_ids)))
            .order_by(m.create_time, m.id)
        )
        found: dict[str, list[str]] = {}
        async with self.engine.connect() as conn:
            for parent_id, message_id in await conn.execute(query):
                found.setdefault(parent_id, []).append(message_id)
        return {parent: Siblings(tuple(ids)) for parent, ids in found.items()}

    async def path_through(self, conversation_id: str, message_id: str) -> list[Message] | None:
        """The branch through a message, root first: its ancestors, itself, then the newest child at
        each step down to a leaf. None when the message is not in the conversation."""
        async with self.engine.connect() as conn:
            leaf = await _newest_leaf(conn, conversation_id, message_id)
            if leaf is None:
                return None
            return await _path_to(conn, leaf)

    async def edit_message(
        self,
        tenant_id: str,
        only_user: str | None,
        conversation_id: str,
        message_id: str,
        new: NewMessage,
        *,
        token_count: int,
        request_id: str,
        now: int,
    ) -> Appended | BranchRefused:
        """Stores `new` as a sibling of a user message and makes it the active leaf, in one
        transaction under the conversation's lock (appends wait for it)."""
        c = conversations.c
        try:
            async with self.engine.begin() as conn:
                conversation = await _lock(conn, tenant_id, only_user, conversation_id, now)
                if conversation is None:
                    raise _Undone(BranchRefused.MISSING)
                if request_id and (replay := await _message_by_request_id(conn, conversation_id, request_id)):
                    raise _Undone(Appended(replay, conversation, replayed=True))
                if conversation.status != ACTIVE:
                    raise _Undone(BranchRefused.CLOSED)
                target = await _message_in(conn, conversation_id, message_id)
                if target is None:
                    raise _Undone(BranchRefused.NO_MESSAGE)
                if target.role != "user":
                    raise _Undone(BranchRefused.NOT_USER)
                message = Message(
                    id=new_id(),
                    parent_id=target.parent_id,
                    conversation_id=conversation_id,
                    sequence=target.sequence,
                    role="user",
                    content=new.content,
                    token_count=token_count,
                    metadata=dict(new.metadata),
                    tool_call_id="",
                    create_time=now,
                    on_path=False,
                )
                values = {**dataclasses.asdict(message), "tool_calls": None}
                await conn.execute(
                    messages.insert().values(**values, tenant_id=tenant_id, request_id=request_id)
                )
                await _activate(conn, conversation_id, message.id)
                await conn.execute(
                    conversations.update()
                    .where(c.id == conversation_id)
                    .values(
                        message_count=c.message_count + 1,
                        token_count=c.token_count + token_count,
                        last_message_time=now,
                        active_leaf_id=message.id,
                        path_length=message.sequence,
                    )
                )
                after = await _get(conn, tenant_id, only_user, conversation_id)
        except _Undone as undone:
            return cast(Appended | BranchRefused, undone.result)
        assert after is not None
        return Appended(dataclasses.replace(message, on_path=True), after, replayed=False)

    async def switch_branch(
        self,
        tenant_id: str,
        only_user: str | None,
        conversation_id: str,
        message_id: str,
        *,
        exact: bool,
        now: int,
    ) -> Conversation | BranchRefused:
        """Makes the path through a message active (its newest leaf, or itself when `exact`)."""
        c = conversations.c
        try:
            async with self.engine.begin() as conn:
                conversation = await _lock(conn, tenant_id, only_user, conversation_id, now)
                if conversation is None:
                    raise _Undone(BranchRefused.MISSING)
                leaf = (
                    await _message_in(conn, conversation_id, message_id)
                    if exact
                    else await _newest_leaf(conn, conversation_id, message_id)
                )
                if leaf is None:
                    raise _Undone(BranchRefused.NO_MESSAGE)
                await _activate(conn, conversation_id, leaf.id)
                await conn.execute(
                    conversations.update()
                    .where(c.id == conversation_id)
                    .values(active_leaf_id=leaf.id, path_length=leaf.sequence)
                )
                after = await _get(conn, tenant_id, only_user, conversation_id)
        except _Undone as undone:
            return cast(Conversation | BranchRefused, undone.result)
        assert after is not None
        return after

    # -- retention -----------------------------------------------------------------------------

    async def get_retention_days(self, tenant_id: str) -> int:
        async with self.engine.connect() as conn:
            value = (
                await conn.execute(
                    sa.select(retention_policies.c.closed_retention_days).where(
                        retention_policies.c.tenant_id == tenant_id
                    )
                )
            ).scalar()
        return int(value or 0)

    async def set_retention_days(self, tenant_id: str, days: int, *, now: int) -> None:
        async with self.engine.begin() as conn:
            updated = await conn.execute(
                retention_policies.update()
                .where(retention_policies.c.tenant_id == tenant_id)
                .values(closed_retention_days=days, update_time=now)
            )
            if not updated.rowcount:
                try:
                    async with conn.begin_nested():
                        await conn.execute(
                            retention_policies.insert().values(
                                tenant_id=tenant_id, closed_retention_days=days, update_time=now
                            )
                        )
                except IntegrityError:
                    await conn.execute(
                        retention_policies.update()
                        .where(retention_policies.c.tenant_id == tenant_id)
                        .values(closed_retention_days=days, update_time=now)
                    )

    async def retention_policies(self, tenant_id: str | None = None) -> list[tuple[str, int]]:
        """(tenant, days) for every tenant that erases closed conversations (days > 0)."""
        r = retention_policies.c
        query = sa.select(r.tenant_id, r.closed_retention_days).where(r.closed_retention_days > 0)
        if tenant_id is not None:
            query = query.where(r.tenant_id == tenant_id)
        async with self.engine.connect() as conn:
            return [(row[0], int(row[1])) for row in await conn.execute(query)]

    async def expired_conversations(self, tenant_id: str, *, closed_before: int, limit: int) -> list[str]:
        c = conversations.c
        query = (
            sa.select(c.id)
            .where(c.tenant_id == tenant_id, c.status == CLOSED, c.close_time < closed_before)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [row[0] for row in await conn.execute(query)]

    # -- usage, prices, quotas -----------------------------------------------------------------

    async def usage_rows(
        self,
        tenant_id: str,
        *,
        start_day: int,
        end_day: int,
        user_id: str,
        agent_id: str,
        model: str,
        group_by: Sequence[str],
    ) -> list[UsageRow]:
        """Sums of usage_daily over days in [start_day, end_day), one row per group (key order)."""
        d = usage_daily.c
        where = [d.tenant_id == tenant_id, d.day >= start_day, d.day < end_day]
        for column, value in ((d.user_id, user_id), (d.agent_id, agent_id), (d.model, model)):
            if value:
                where.append(column == value)
        keys = {"user": d.user_id, "agent": d.agent_id, "model": d.model, "day": d.day}
        grouped = [keys[g] for g in group_by]
        sums = [
            sa.func.sum(getattr(d, name)).label(name)
            for name in ("messages", "prompt_tokens", "completion_tokens", "total_tokens", "tool_calls")
        ]
        query = (
            sa.select(*grouped, *sums, sa.func.sum(d.cost_micros).label("cost_micros"))
            .where(*where)
            .group_by(*grouped)
            .order_by(*grouped)
        )
        async with self.engine.connect() as conn:
            result = (await conn.execute(query)).all()
        rows = []
        for row in result:
            if row.messages is None:  # no usage at all: the ungrouped SUM's one NULL row
                continue
            values = row._mapping
            rows.append(
                UsageRow(
                    user_id=values.get("user_id", ""),
                    agent_id=values.get("agent_id", ""),
                    model=values.get("model", ""),
                    day=_day_name(values["day"]) if "day" in values else "",
                    messages=int(row.messages),
                    prompt_tokens=int(row.prompt_tokens),
                    completion_tokens=int(row.completion_tokens),
                    total_tokens=int(row.total_tokens),
                    tool_calls=int(row.tool_calls),
                    cost_micros=int(row.cost_micros),
                )
            )
        return rows

    async def used_since(self, tenant_id: str, start_day: int) -> tuple[int, int]:
        """(tokens, cost_micros) the tenant used from `start_day` on: one index range of usage_daily."""
        d = usage_daily.c
        query = sa.select(
            sa.func.coalesce(sa.func.sum(d.total_tokens), 0), sa.func.coalesce(sa.func.sum(d.cost_micros), 0)
        ).where(d.tenant_id == tenant_id, d.day >= start_day)
        async with self.engine.connect() as conn:
            tokens, cost = (await conn.execute(query)).one()
        return int(tokens), int(cost)

    async def get_quota_limit(self, tenant_id: str) -> QuotaLimit | None:
        q = tenant_quotas.c
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(tenant_quotas).where(q.tenant_id == tenant_id))).first()
        return None if row is None else QuotaLimit(tokens=row.limit_tokens, cost_micros=row.limit_cost_micros)

    async def set_quota_limit(self, tenant_id: str, limit: QuotaLimit, *, now: int) -> None:
        values = {"limit_tokens": limit.tokens, "limit_cost_micros": limit.cost_micros, "update_time": now}
        await self._put(
            tenant_quotas, tenant_quotas.c.tenant_id == tenant_id, {"tenant_id": tenant_id}, values
        )

    async def set_price(self, price: Price) -> None:
        values = {
            "input_micros": price.input_micros,
            "output_micros": price.output_micros,
            "update_time": price.update_time,
        }
        await self._put(model_prices, model_prices.c.model == price.model, {"model": price.model}, values)

    async def list_prices(self) -> list[Price]:
        async with self.engine.connect() as conn:
            result = await conn.execute(sa.select(model_prices).order_by(model_prices.c.model))
            return [Price(**row._mapping) for row in result]

    async def _put(
        self, table: sa.Table, where: sa.ColumnElement[bool], key: dict[str, Any], values: dict[str, Any]
    ) -> None:
        """Update-or-insert of one row by key; a concurrent insert of the same key turns into the update."""
        async with self.engine.begin() as conn:
            if (await conn.execute(table.update().where(where).values(**values))).rowcount:
                return
            try:
                async with conn.begin_nested():
                    await conn.execute(table.insert().values(**key, **values))
            except IntegrityError:
                await conn.execute(table.update().where(where).values(**values))


def _day_name(day: int) -> str:
    return datetime.datetime.fromtimestamp(day // 1_000_000, datetime.UTC).strftime("%Y-%m-%d")
