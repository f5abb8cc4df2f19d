"""Full-text search over messages, and the tenant usage statistics.

PostgreSQL: `to_tsvector('simple', content) @@ websearch_to_tsquery('simple', query)`, served by the
GIN expression index of the migration, ranked by ts_rank, snippets by ts_headline. The 'simple'
configuration lowercases and splits on non-letters but does not stem, so it works for every language
alike (and "running" does not match "run"). Relevance ranks the newest RANK_WINDOW matches, so a
common word costs the same in a small tenant and a huge one.

SQLite (the embedded default) has no such index: the fallback is a case-insensitive (ASCII) substring
match of the whole query (`LIKE '%query%'`), newest first, score 1.0, a snippet cut around the first
hit. It scans the tenant's messages, which is fine for a laptop's data and nothing more.
"""

from __future__ import annotations

import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.conversation.models import Conversation, Message, SearchHit, TenantStats, Totals
from services.conversation.store import _conversation, _message, scoped
from services.conversation.tables import conversations, messages

_HEADLINE = "StartSel=[[, StopSel=]], MaxWords=30, MinWords=12, MaxFragments=2, FragmentDelimiter=' … '"
DAY_US = 86_400 * 1_000_000
# How many of the newest matching messages are ranked by relevance (see MessageSearch._postgres).
RANK_WINDOW = 5_000


def _scope_sql(tenant_id: str, only_user: str | None, agent_id: str, params: dict[str, Any]) -> str:
    sql = "m.tenant_id = :tenant"
    params["tenant"] = tenant_id
    if only_user is not None:
        sql += " AND c.user_id = :user"
        params["user"] = only_user
    if agent_id:
        sql += " AND c.agent_id = :agent"
        params["agent"] = agent_id
    return sql


class MessageSearch:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def search(
        self,
        tenant_id: str,
        only_user: str | None,
        query: str,
        *,
        agent_id: str,
        after: list[Any] | None,
        limit: int,
    ) -> list[tuple[SearchHit, list[Any]]]:
        """Up to `limit` hits after the cursor, each with its own cursor."""
        read = self._postgres if self.engine.dialect.name == "postgresql" else self._substring
        hits, cursors = await read(tenant_id, only_user, query, agent_id=agent_id, after=after, limit=limit)
        return list(zip(hits, cursors, strict=True))

    async def _postgres(
        self,
        tenant_id: str,
        only_user: str | None,
        query: str,
        *,
        agent_id: str,
        after: list[Any] | None,
        limit: int,
    ) -> tuple[list[SearchHit], list[list[Any]]]:
        params: dict[str, Any] = {"q": query, "limit": limit}
        where = _scope_sql(tenant_id, only_user, agent_id, params)
        keyset = ""
        if after is not None:
            keyset = "WHERE s.score < :score OR (s.score = :score AND s.id > :after_id)"
            params["score"], params["after_id"] = float(after[0]), str(after[1])
        # Rank the newest RANK_WINDOW matches only: ranking every match of a common word took
        # seconds over a million messages, while the newest matches come straight off the
        # (tenant_id, create_time) index. Rare words still use the GIN index. The headline is
        # computed for the page's rows alone.
        params["window"] = RANK_WINDOW
        ranked = f"""
            SELECT s.id, s.score FROM (
                SELECT cand.id, ts_rank(to_tsvector('simple', cand.content), q.q)::float8 AS score
                FROM (
                    SELECT m.id, m.content
                    FROM messages m JOIN conversations c ON c.id = m.conversation_id,
                         websearch_to_tsquery('simple', :q) AS q(q)
                    WHERE {where} AND m.on_path AND to_tsvector('simple', m.content) @@ q.q
                    ORDER BY m.create_time DESC LIMIT :window
                ) cand, websearch_to_tsquery('simple', :q) AS q(q)
            ) s {keyset}
            ORDER BY s.score DESC, s.id ASC LIMIT :limit
        """
        async with self.engine.connect() as conn:
            page = (await conn.execute(sa.text(ranked), params)).all()
            if not page:
                return [], []
            scores = {row.id: float(row.score) for row in page}
            detail = sa.text(
                """
                SELECT m.id AS mid, ts_headline('simple', m.content, websearch_to_tsquery('simple', :q),
                                                :options) AS snippet
                FROM messages m WHERE m.id = ANY(:ids)
                """
            )
            snippets = {
                r.mid: r.snippet
                for r in await conn.execute(detail, {"q": query, "ids": list(scores), "options": _HEADLINE})
            }
            rows = await self._rows(conn, list(scores))
        hits = [
            SearchHit(conversation=rows[i][0], message=rows[i][1], snippet=snippets[i], score=scores[i])
            for i in scores
            if i in rows
        ]
        return hits, [[h.score, h.message.id] for h in hits]

    async def _substring(
        self,
        tenant_id: str,
        only_user: str | None,
        query: str,
        *,
        agent_id: str,
        after: list[Any] | None,
        limit: int,
    ) -> tuple[list[SearchHit], list[list[Any]]]:
        m, c = messages.c, conversations.c
        escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where = [
            *scoped(tenant_id, only_user),
            m.tenant_id == tenant_id,
            m.on_path,
            m.content.like(f"%{escaped}%", escape="\\"),
        ]
        if agent_id:
            where.append(c.agent_id == agent_id)
        if after is not None:
            t, i = int(after[0]), str(after[1])
            where.append(sa.or_(m.create_time < t, sa.and_(m.create_time == t, m.id > i)))
        stmt = (
            sa.select(messages, *[col.label(f"c_{col.name}") for col in conversations.c])
            .select_from(messages.join(conversations, conversations.c.id == m.conversation_id))
            .where(*where)
            .order_by(m.create_time.desc(), m.id.asc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            result = (await conn.execute(stmt)).all()
        hits = []
        for row in result:
            message = _message(row)
            conv = _conversation(_Prefixed(row, "c_"))
            hits.append(
                SearchHit(
                    conversation=conv, message=message, snippet=snippet(message.content, query), score=1.0
                )
            )
        return hits, [[h.message.create_time, h.message.id] for h in hits]

    async def _rows(self, conn: Any, ids: list[str]) -> dict[str, tuple[Conversation, Message]]:
        stmt = (
            sa.select(messages, *[col.label(f"c_{col.name}") for col in conversations.c])
            .select_from(messages.join(conversations, conversations.c.id == messages.c.conversation_id))
            .where(messages.c.id.in_(ids))
        )
        out = {}
        for row in await conn.execute(stmt):
            out[row.id] = (_conversation(_Prefixed(row, "c_")), _message(row))
        return out

    async def stats(
        self, tenant_id: str, only_user: str | None, *, start_time: int, end_time: int
    ) -> TenantStats:
        """Conversations (by creation time), messages and tokens (by message time) in [start, end)."""
        c, m = conversations.c, messages.c
        conv_day = c.create_time // DAY_US
        msg_day = m.create_time // DAY_US
        conv_where = scoped(tenant_id, only_user)
        # Messages of the active paths: another branch's versions are not the conversation's history.
        msg_where = [*scoped(tenant_id, only_user), m.tenant_id == tenant_id, m.on_path]
        if start_time:
            conv_where.append(c.create_time >= start_time)
            msg_where.append(m.create_time >= start_time)
        if end_time:
            conv_where.append(c.create_time < end_time)
            msg_where.append(m.create_time < end_time)
        conv_q = (
            sa.select(c.agent_id, conv_day.label("day"), sa.func.count())
            .where(*conv_where)
            .group_by(c.agent_id, conv_day)
        )
        msg_q = (
            sa.select(
                c.agent_id,
                msg_day.label("day"),
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(m.token_count), 0),
            )
            .select_from(messages.join(conversations, c.id == m.conversation_id))
            .where(*msg_where)
            .group_by(c.agent_id, msg_day)
        )
        by_agent: dict[str, Totals] = {}
        by_day: dict[int, Totals] = {}
        async with self.engine.connect() as conn:
            rows = [(a, int(d), Totals(conversations=int(n))) for a, d, n in await conn.execute(conv_q)]
            rows += [
                (a, int(d), Totals(messages=int(n), tokens=int(t)))
                for a, d, n, t in await conn.execute(msg_q)
            ]
        total = Totals()
        for agent, day, totals in rows:
            by_agent[agent] = by_agent.get(agent, Totals()) + totals
            by_day[day] = by_day.get(day, Totals()) + totals
            total = total + totals
        days = {
            datetime.datetime.fromtimestamp(d * 86_400, datetime.UTC).strftime("%Y-%m-%d"): by_day[d]
            for d in sorted(by_day)
        }
        return TenantStats(totals=total, by_agent=dict(sorted(by_agent.items())), by_day=days)


class _Prefixed:
    """Row attribute access with a column-label prefix (the joined conversation's columns)."""

    def __init__(self, row: Any, prefix: str):
        self._row, self._prefix = row, prefix

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, self._prefix + name)


def snippet(content: str, query: str, *, radius: int = 80) -> str:
    """The text around the first case-insensitive hit of `query`, with the hit marked [[ ]]."""
    at = content.lower().find(query.lower())
    if at < 0:
        return content[: 2 * radius]
    start, end = max(0, at - radius), min(len(content), at + len(query) + radius)
    prefix = "…" if start > 0 else ""
    suffix = "…" if end < len(content) else ""
    return f"{prefix}{content[start:at]}[[{content[at : at + len(query)]}]]{content[at + len(query) : end]}{suffix}"
