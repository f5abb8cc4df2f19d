"""Issue 17: conversation branches on PostgreSQL (batched appends, real Redis hot window, gRPC) and
on SQLite (the embedded default, fakeredis): edit, switch, the active path in ListMessages, the
context window, search and stats; siblings with their index; sequence numbers gap-free along a
path; nothing deleted; bad input; the migration that makes existing messages one path; and
UpdateConversation."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fakeredis
import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmesh.conversation.v1 import conversation_service_pb2 as pb
from services.conversation.hot_window import HotWindow
from services.conversation.models import NewMessage
from services.conversation.search import MessageSearch
from services.conversation.service import ConversationService
from services.conversation.store import ConversationStore
from services.conversation.tokens import ApproximateTokenCounter
from services.platform import db, errors, migrations
from services.platform.auth import Principal
from services.platform.metrics import USAGE
from services.platform.pagination import PageTokens
from tests.conftest import fresh_database
from tests.helpers import alembic, expect_status

USER = pb.MESSAGE_ROLE_USER
ASSISTANT = pb.MESSAGE_ROLE_ASSISTANT
C = grpc.StatusCode


# Through gRPC on PostgreSQL -----------------------------------------------------------------------


@pytest.fixture
async def alice(serve, make_caller, tenant):
    server = await serve("conversation")
    return make_caller(server.channel, tenant, "alice")


async def _listed(caller: Any, conversation_id: str, **kw: Any) -> list[pb.Message]:
    reply = await caller.call("ListMessages", conversation_id=conversation_id, **{"page_size": 100, **kw})
    return list(reply.messages)


async def test_edit_makes_a_sibling_and_the_active_path_follows_it(alice) -> None:
    conv = await alice.create()
    u1 = (await alice.append(conv.id, "what is two plus two")).message
    a1 = (await alice.append(conv.id, "four", role=ASSISTANT)).message
    u2 = (await alice.append(conv.id, "and times three", role=USER)).message
    await alice.append(conv.id, "twelve", role=ASSISTANT)
    assert [m.parent_id for m in await _listed(alice, conv.id)] == ["", u1.id, a1.id, u2.id]

    edited = await alice.call(
        "EditMessage", conversation_id=conv.id, message_id=u2.id, content="and times five"
    )
    assert edited.message.parent_id == a1.id and edited.message.sequence == 3
    assert edited.conversation.active_message_id == edited.message.id
    assert edited.conversation.path_length == 3 and edited.conversation.message_count == 5
    a2 = (await alice.append(conv.id, "twenty", role=ASSISTANT)).message
    assert a2.parent_id == edited.message.id and a2.sequence == 4

    path = await _listed(alice, conv.id)
    assert [m.content for m in path] == ["what is two plus two", "four", "and times five", "twenty"]
    assert [m.sequence for m in path] == [1, 2, 3, 4]  # gap-free along the path
    third = path[2]
    assert list(third.sibling_ids) == [u2.id, edited.message.id] and third.sibling_index == 2
    assert path[0].sibling_index == 1 and list(path[0].sibling_ids) == [u1.id]

    # The old branch is kept and can be listed by naming one of its messages.
    old = await _listed(alice, conv.id, branch_message_id=u2.id)
    assert [m.content for m in old] == ["what is two plus two", "four", "and times three", "twelve"]
    assert [m.active for m in old] == [True, True, False, False]

    # The context window follows the active path.
    window = await alice.call("GetContext", conversation_id=conv.id, token_budget=1000)
    assert [m.content for m in window.messages if m.role != pb.MESSAGE_ROLE_SYSTEM] == [
        m.content for m in path
    ]

    # Search and stats see the active path only; switching back brings the old branch.
    hits = await alice.call("SearchConversations", query="three")
    assert not hits.results
    hits = await alice.call("SearchConversations", query="five")
    assert [r.message.id for r in hits.results] == [edited.message.id]
    stats = await alice.call("GetTenantStats")
    assert stats.totals.messages == 4

    switched = await alice.call("SwitchBranch", conversation_id=conv.id, message_id=u2.id)
    assert switched.conversation.path_length == 4
    path = await _listed(alice, conv.id)
    assert [m.content for m in path] == ["what is two plus two", "four", "and times three", "twelve"]
    window = await alice.call("GetContext", conversation_id=conv.id, token_budget=1000)
    assert [m.content for m in window.messages if m.role != pb.MESSAGE_ROLE_SYSTEM] == [
        m.content for m in path
    ]
    hits = await alice.call("SearchConversations", query="three")
    assert [r.message.id for r in hits.results] == [u2.id]
    # Descending pages of the path, by sequence.
    desc = await _listed(alice, conv.id, order=pb.SORT_ORDER_DESCENDING, page_size=2)
    assert [m.sequence for m in desc] == [4, 3]


async def test_exact_switch_rewinds_and_the_next_append_is_a_sibling(alice) -> None:
    conv = await alice.create()
    u1 = (await alice.append(conv.id, "hi")).message
    a1 = (await alice.append(conv.id, "first answer", role=ASSISTANT)).message
    rewound = await alice.call("SwitchBranch", conversation_id=conv.id, message_id=u1.id, exact=True)
    assert rewound.conversation.active_message_id == u1.id and rewound.conversation.path_length == 1
    a2 = (await alice.append(conv.id, "second answer", role=ASSISTANT)).message
    assert a2.parent_id == u1.id and a2.sequence == 2
    path = await _listed(alice, conv.id)
    assert [m.id for m in path] == [u1.id, a2.id]
    assert list(path[1].sibling_ids) == [a1.id, a2.id] and path[1].sibling_index == 2
    got = await alice.call("GetMessage", conversation_id=conv.id, message_id=a1.id)
    assert got.message.content == "first answer" and got.message.sibling_index == 1 and not got.message.active


async def test_bad_branch_requests_change_nothing(alice, make_caller, serve) -> None:
    conv = await alice.create()
    u1 = (await alice.append(conv.id, "hi")).message
    a1 = (await alice.append(conv.id, "answer", role=ASSISTANT)).message
    before = await _listed(alice, conv.id)

    error = await expect_status(
        alice.call("EditMessage", conversation_id=conv.id, message_id=a1.id, content="x"), C.INVALID_ARGUMENT
    )
    assert "message_id" in (error.details() or "")
    await expect_status(
        alice.call("EditMessage", conversation_id=conv.id, message_id=u1.id, content="  "), C.INVALID_ARGUMENT
    )
    await expect_status(
        alice.call("EditMessage", conversation_id=conv.id, message_id=str(uuid.uuid4()), content="x"),
        C.NOT_FOUND,
    )
    await expect_status(
        alice.call("SwitchBranch", conversation_id=conv.id, message_id=str(uuid.uuid4())), C.NOT_FOUND
    )
    await expect_status(_listed(alice, conv.id, branch_message_id=str(uuid.uuid4())), C.NOT_FOUND)
    await expect_status(alice.call("GetMessage", conversation_id=conv.id, message_id=""), C.INVALID_ARGUMENT)
    # Another tenant's conversation and message do not exist for the caller.
    server = await serve("conversation")
    eve = make_caller(server.channel, f"tenant-{uuid.uuid4().hex[:8]}", "eve", roles=("owner",))
    for call in (
        eve.call("EditMessage", conversation_id=conv.id, message_id=u1.id, content="x"),
        eve.call("SwitchBranch", conversation_id=conv.id, message_id=u1.id),
        eve.call("GetMessage", conversation_id=conv.id, message_id=u1.id),
    ):
        await expect_status(call, C.NOT_FOUND)
    # A closed conversation takes no new version.
    await alice.call("CloseConversation", conversation_id=conv.id)
    await expect_status(
        alice.call("EditMessage", conversation_id=conv.id, message_id=u1.id, content="x"),
        C.FAILED_PRECONDITION,
    )
    assert await _listed(alice, conv.id) == before


async def test_edit_replays_its_request_id(alice) -> None:
    conv = await alice.create()
    u1 = (await alice.append(conv.id, "hi")).message
    first = await alice.call(
        "EditMessage", conversation_id=conv.id, message_id=u1.id, content="hey", request_id="r1"
    )
    again = await alice.call(
        "EditMessage", conversation_id=conv.id, message_id=u1.id, content="hey", request_id="r1"
    )
    assert again.message.id == first.message.id
    listed = await _listed(alice, conv.id)
    assert len(listed[0].sibling_ids) == 2


# The service layer on SQLite (the embedded default) -----------------------------------------------


async def test_branches_on_sqlite(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'conv.db'}")
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    try:
        assert await migrations.upgrade(engine, ["conversation"]) == ["conversation"]
        service = ConversationService(
            store=ConversationStore(engine),
            search=MessageSearch(engine),
            hot=HotWindow(redis),
            counter=ApproximateTokenCounter(),
            meter=USAGE,
            page_tokens=PageTokens(b"secret"),
        )
        alice = Principal(user_id="alice", tenant_id="t1", roles=frozenset({"member"}), tier="pro")
        conv = await service.create_conversation(
            alice, agent_id="a", agent_version=1, title="", metadata={}, request_id=""
        )
        u1, _ = await service.append_message(alice, conv.id, NewMessage(role="user", content="hello"))
        a1, _ = await service.append_message(alice, conv.id, NewMessage(role="assistant", content="hi there"))
        # Read once so the hot window holds the old path.
        await service.get_context(alice, conv.id, token_budget=1000, system_prompt="")
        e1, after = await service.edit_message(alice, conv.id, u1.id, content="good morning", metadata={})
        assert after.path_length == 1 and e1.parent_id == "" and e1.sequence == 1
        a2, _ = await service.append_message(alice, conv.id, NewMessage(role="assistant", content="morning!"))
        window = await service.get_context(alice, conv.id, token_budget=1000, system_prompt="")
        assert [m.content for m in window.messages if m.role != "system"] == ["good morning", "morning!"]
        page, siblings = await service.list_messages(alice, conv.id, page_size=10, page_token="")
        assert [m.id for m in page.items] == [e1.id, a2.id]
        assert siblings[""].ids == (u1.id, e1.id)
        with pytest.raises(errors.InvalidArgument):
            await service.edit_message(alice, conv.id, a1.id, content="x", metadata={})
        await service.switch_branch(alice, conv.id, u1.id)
        window = await service.get_context(alice, conv.id, token_budget=1000, system_prompt="")
        assert [m.content for m in window.messages if m.role != "system"] == ["hello", "hi there"]
        hits = (await service.search(alice, "morning", page_size=10, page_token="")).items
        assert not hits
    finally:
        await redis.aclose()
        await engine.dispose()


# The migration: existing messages become one path ------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        sqlite = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/conv.db")
        yield sqlite
        await sqlite.dispose()
        return
    with fresh_database(()) as url:
        pg = db.create_engine(url)
        try:
            yield pg
        finally:
            await pg.dispose()


async def test_existing_messages_become_one_path(engine: AsyncEngine) -> None:
    await alembic(engine, "conversation", "upgrade", "conversation_0003")
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO conversations (id, tenant_id, user_id, agent_id, agent_version, title, status,"
                " metadata, message_count, token_count, request_id, create_time, update_time,"
                " last_message_time, close_time) VALUES"
                " ('c1', 't', 'u', 'a', 1, '', 'ACTIVE', '{}', 3, 3, '', 1, 1, 1, 0),"
                " ('c2', 't', 'u', 'a', 1, '', 'ACTIVE', '{}', 0, 0, '', 1, 1, 0, 0)"
            )
        )
        for seq in (1, 2, 3):
            await conn.execute(
                sa.text(
                    "INSERT INTO messages (id, conversation_id, tenant_id, sequence, role, content, token_count,"
                    " metadata, tool_call_id, request_id, create_time) VALUES"
                    " (:id, 'c1', 't', :seq, 'user', 'x', 1, '{}', '', '', :seq)"
                ),
                {"id": f"m{seq}", "seq": seq},
            )
    await alembic(engine, "conversation", "upgrade", "conversation_0004")
    async with engine.connect() as conn:
        rows = (
            await conn.execute(sa.text("SELECT id, parent_id, on_path FROM messages ORDER BY sequence"))
        ).all()
        convs = (
            await conn.execute(
                sa.text("SELECT id, active_leaf_id, path_length FROM conversations ORDER BY id")
            )
        ).all()
    assert [(r[0], r[1], bool(r[2])) for r in rows] == [
        ("m1", "", True),
        ("m2", "m1", True),
        ("m3", "m2", True),
    ]
    assert [tuple(c) for c in convs] == [("c1", "m3", 3), ("c2", "", 0)]
    await alembic(engine, "conversation", "downgrade", "conversation_0003")


# UpdateConversation ------------------------------------------------------------------------------


async def test_update_conversation_title_and_metadata(alice, make_caller, serve) -> None:
    from google.protobuf import field_mask_pb2

    def update(conversation_id: str, *paths: str, **fields: Any) -> pb.UpdateConversationRequest:
        return pb.UpdateConversationRequest(
            conversation=pb.Conversation(id=conversation_id, **fields),
            update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
        )

    conv = await alice.create(title="old", metadata={"k": "v"})
    reply = await alice.call("UpdateConversation", update(conv.id, "title", title="new", metadata={"x": "y"}))
    assert reply.conversation.title == "new" and dict(reply.conversation.metadata) == {"k": "v"}
    reply = await alice.call("UpdateConversation", update(conv.id, "*", title="both", metadata={"x": "y"}))
    assert reply.conversation.title == "both" and dict(reply.conversation.metadata) == {"x": "y"}
    # Bad masks and values change nothing.
    for request in (
        update(conv.id, title="x"),
        update(conv.id, "status", title="x"),
        update(conv.id, "title", title="x" * 513),
    ):
        await expect_status(alice.call("UpdateConversation", request), C.INVALID_ARGUMENT)
    # Another tenant's conversation does not exist for the caller.
    server = await serve("conversation")
    eve = make_caller(server.channel, f"tenant-{uuid.uuid4().hex[:8]}", "eve", roles=("owner",))
    await expect_status(eve.call("UpdateConversation", update(conv.id, "title", title="stolen")), C.NOT_FOUND)
    # A closed conversation can still be renamed.
    await alice.call("CloseConversation", conversation_id=conv.id)
    reply = await alice.call("UpdateConversation", update(conv.id, "title", title="archived"))
    assert reply.conversation.title == "archived"
    got = await alice.call("GetConversation", conversation_id=conv.id)
    assert got.conversation.title == "archived" and dict(got.conversation.metadata) == {"x": "y"}
