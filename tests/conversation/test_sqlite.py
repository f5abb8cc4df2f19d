"""The embedded default: the migration, appends, the context window and the substring search
fallback on SQLite with fakeredis, through the service layer."""

from __future__ import annotations

import fakeredis
import pytest

from services import conversation
from services.conversation.hot_window import HotWindow, NoHotWindow
from services.conversation.models import NewMessage
from services.conversation.search import MessageSearch, snippet
from services.conversation.service import ConversationService
from services.conversation.store import ConversationStore
from services.conversation.tokens import ApproximateTokenCounter
from services.platform import db, migrations
from services.platform.auth import Principal
from services.platform.metrics import USAGE
from services.platform.pagination import PageTokens
from services.platform.runtime import Runtime, with_embedded_secrets
from services.platform.settings import Settings


@pytest.mark.parametrize("window", ["fakeredis", "none"])
async def test_sqlite_migration_append_context_and_search(tmp_path, window):
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'conv.db'}")
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    try:
        assert await migrations.upgrade(engine, ["conversation"]) == ["conversation"]
        service = ConversationService(
            store=ConversationStore(engine),
            search=MessageSearch(engine),
            # `up` runs without one (conversation/__init__.py); a hot window over fakeredis works too.
            hot=HotWindow(redis) if window == "fakeredis" else NoHotWindow(),
            counter=ApproximateTokenCounter(),
            meter=USAGE,
            page_tokens=PageTokens(b"secret"),
        )
        alice = Principal(user_id="alice", tenant_id="t1", roles=frozenset({"member"}), tier="pro")
        eve = Principal(user_id="eve", tenant_id="t2", roles=frozenset({"owner"}), tier="pro")
        conv = await service.create_conversation(
            alice, agent_id="a", agent_version=1, title="", metadata={}, request_id=""
        )
        for text in ("Hello 100% World", "nothing here", "another hello"):
            await service.append_message(alice, conv.id, NewMessage(role="user", content=text))
        other = await service.create_conversation(
            eve, agent_id="a", agent_version=1, title="", metadata={}, request_id=""
        )
        await service.append_message(eve, other.id, NewMessage(role="user", content="hello from t2"))

        window = await service.get_context(alice, conv.id, token_budget=1000, system_prompt="")
        assert [m.sequence for m in window.messages] == [1, 2, 3]
        hits = (await service.search(alice, "HELLO", page_size=10, page_token="")).items
        assert sorted(h.message.sequence for h in hits) == [1, 3]
        assert all(h.conversation.tenant_id == "t1" for h in hits)
        # LIKE wildcards in the query are matched literally.
        hits = (await service.search(alice, "100%", page_size=10, page_token="")).items
        assert [h.snippet for h in hits] == ["Hello [[100%]] World"]
        hits = (await service.search(alice, "_", page_size=10, page_token="")).items
        assert hits == []
        page1 = await service.search(alice, "hello", page_size=1, page_token="")
        page2 = await service.search(alice, "hello", page_size=1, page_token=page1.next_page_token)
        assert len(page1.items) == len(page2.items) == 1 and page2.next_page_token == ""
        assert page1.items[0].message.id != page2.items[0].message.id
        stats = await service.tenant_stats(alice, start_time=0, end_time=0)
        assert stats.totals.messages == 3 and stats.totals.conversations == 1
    finally:
        await redis.aclose()
        await engine.dispose()


def test_snippet_marks_the_first_hit():
    assert snippet("a Zebra b", "zebra") == "a [[Zebra]] b"
    assert snippet("x" * 200 + "hit" + "y" * 200, "hit", radius=5) == "…xxxxx[[hit]]yyyyy…"


@pytest.mark.parametrize("with_redis", [False, True])
async def test_a_hot_window_only_over_a_redis_server(tmp_path, redis_url, with_redis):
    """`up` without a Redis URL (fakeredis in the process) keeps no window; with a Redis server,
    the window spares the database its reads."""
    settings = with_embedded_secrets(
        Settings.from_env(
            {}, data_dir=str(tmp_path), grpc_port=0, redis_url=redis_url if with_redis else ""
        ).embedded_defaults()
    )
    runtime = await Runtime.create(settings)
    try:
        built = await conversation.build(runtime)
        assert isinstance(built.service.hot, HotWindow if with_redis else NoHotWindow)
    finally:
        await runtime.close()
