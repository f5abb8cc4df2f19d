"""Tenancy, listing, search, stats, retention and bad input through real gRPC on PostgreSQL."""

from __future__ import annotations

import time
import uuid

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentmesh.conversation.v1 import conversation_service_pb2 as pb
from services.conversation import build
from services.conversation.hot_window import HotWindow
from services.conversation.retention import RetentionJob
from tests.helpers import REDIS_MODE, expect_status, sync_redis_client


def violations(error: grpc.aio.AioRpcError) -> set[str]:
    status = rpc_status.from_call(error)
    fields = set()
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields |= {v.field for v in bad.field_violations}
    return fields


async def test_members_see_their_own_admins_the_tenant_others_nothing(serve, make_caller, tenant):
    running = await serve("conversation")
    alice = make_caller(running.channel, tenant, "alice")
    bob = make_caller(running.channel, tenant, "bob")
    admin = make_caller(running.channel, tenant, "root", roles=("admin",))
    stranger = make_caller(running.channel, "other-" + tenant, "alice", roles=("owner",))
    mine = await alice.create(title="alice's")
    await bob.create(title="bob's")
    assert mine.user_id == "alice" and mine.tenant_id == tenant
    await expect_status(bob.call("GetConversation", conversation_id=mine.id), grpc.StatusCode.NOT_FOUND)
    await expect_status(bob.append(mine.id, "hi"), grpc.StatusCode.NOT_FOUND)
    await expect_status(bob.call("DeleteConversation", conversation_id=mine.id), grpc.StatusCode.NOT_FOUND)
    await expect_status(stranger.call("GetConversation", conversation_id=mine.id), grpc.StatusCode.NOT_FOUND)
    await expect_status(
        stranger.call("GetContext", conversation_id=mine.id, token_budget=10), grpc.StatusCode.NOT_FOUND
    )
    assert (await admin.call("GetConversation", conversation_id=mine.id)).conversation.id == mine.id
    listed = await alice.call("ListConversations")
    assert [c.title for c in listed.conversations] == ["alice's"]
    # A member's user filter cannot widen their view.
    assert not (await alice.call("ListConversations", user_id="bob")).conversations
    assert {c.title for c in (await admin.call("ListConversations")).conversations} == {"alice's", "bob's"}
    assert [c.title for c in (await admin.call("ListConversations", user_id="bob")).conversations] == [
        "bob's"
    ]
    assert not (await stranger.call("ListConversations")).conversations


async def test_list_conversations_keyset_pages_and_filters(serve, make_caller, tenant):
    running = await serve("conversation")
    alice = make_caller(running.channel, tenant, "alice")
    made = [await alice.create(agent_id=f"agent-{i % 2}", title=f"c{i}") for i in range(5)]
    await alice.call("CloseConversation", conversation_id=made[0].id)
    titles, token = [], ""
    while True:
        page = await alice.call("ListConversations", page_size=2, page_token=token)
        titles += [c.title for c in page.conversations]
        token = page.next_page_token
        if not token:
            break
    assert titles == ["c4", "c3", "c2", "c1", "c0"]
    agent0 = await alice.call("ListConversations", agent_id="agent-0")
    assert [c.title for c in agent0.conversations] == ["c4", "c2", "c0"]
    closed = await alice.call("ListConversations", status=pb.CONVERSATION_STATUS_CLOSED)
    assert [c.title for c in closed.conversations] == ["c0"]
    start = timestamp_pb2.Timestamp()
    start.CopyFrom(made[3].create_time)
    recent = await alice.call("ListConversations", start_time=start)
    assert [c.title for c in recent.conversations] == ["c4", "c3"]
    # A token from one filter is refused under another.
    first = await alice.call("ListConversations", page_size=1)
    err = await expect_status(
        alice.call("ListConversations", page_size=1, agent_id="agent-0", page_token=first.next_page_token),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "page_token" in violations(err)


async def test_request_id_makes_create_idempotent(serve, make_caller, tenant):
    running = await serve("conversation")
    alice = make_caller(running.channel, tenant, "alice")
    one = await alice.create(request_id="create-1")
    two = await alice.create(request_id="create-1")
    assert one.id == two.id
    assert len((await alice.call("ListConversations")).conversations) == 1


async def test_search_finds_words_across_conversations_never_another_tenants(serve, make_caller, tenant):
    running = await serve("conversation")
    alice = make_caller(running.channel, tenant, "alice")
    bob = make_caller(running.channel, tenant, "bob")
    admin = make_caller(running.channel, tenant, "root", roles=("owner",))
    stranger = make_caller(running.channel, "other-" + tenant, "eve", roles=("owner",))
    word = "quokka" + uuid.uuid4().hex[:6]
    c1, c2 = await alice.create(title="one"), await alice.create(title="two")
    await alice.append(c1.id, f"the {word} jumped over the fence")
    await alice.append(c1.id, "nothing to see here")
    await alice.append(c2.id, f"another {word.upper()} sighting today")
    cb = await bob.create()
    await bob.append(cb.id, f"bob saw a {word} too")
    cs = await stranger.create()
    await stranger.append(cs.id, f"a secret {word} of another tenant")

    mine = await alice.call("SearchConversations", query=word)
    assert {r.conversation.id for r in mine.results} == {c1.id, c2.id}
    assert all("[[" in r.snippet and "]]" in r.snippet for r in mine.results)
    assert all(r.message.content.lower().count(word) == 1 for r in mine.results)
    everyone = await admin.call("SearchConversations", query=word)
    assert {r.conversation.id for r in everyone.results} == {c1.id, c2.id, cb.id}
    theirs = await stranger.call("SearchConversations", query=word)
    assert [r.conversation.id for r in theirs.results] == [cs.id]
    phrase = await admin.call("SearchConversations", query=f'"{word} jumped"')
    assert [r.conversation.id for r in phrase.results] == [c1.id]
    # Paging walks every hit once.
    seen, token = [], ""
    while True:
        page = await admin.call("SearchConversations", query=word, page_size=1, page_token=token)
        seen += [r.message.id for r in page.results]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 3


async def test_tenant_stats_by_agent_and_day(serve, make_caller, tenant):
    running = await serve("conversation")
    alice = make_caller(running.channel, tenant, "alice")
    admin = make_caller(running.channel, tenant, "root", roles=("admin",))
    bob = make_caller(running.channel, tenant, "bob")
    c1 = await alice.create(agent_id="helper")
    c2 = await bob.create(agent_id="writer")
    r1 = await alice.append(c1.id, "x" * 40)
    r2 = await bob.append(c2.id, "y" * 8)
    await bob.append(c2.id, "z")
    stats = await admin.call("GetTenantStats")
    assert stats.totals.conversations == 2 and stats.totals.messages == 3
    assert stats.totals.tokens == r1.message.token_count + r2.message.token_count + 5
    by_agent = {a.agent_id: a.totals for a in stats.by_agent}
    assert by_agent["helper"].messages == 1 and by_agent["writer"].messages == 2
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert [d.day for d in stats.by_day] == [today]
    mine = await alice.call("GetTenantStats")
    assert mine.totals.conversations == 1 and mine.totals.messages == 1
    future = timestamp_pb2.Timestamp(seconds=int(time.time()) + 3600)
    empty = await admin.call("GetTenantStats", start_time=future)
    assert empty.totals.messages == 0


async def test_retention_erases_only_what_it_should(serve, runtime, make_caller, tenant, redis_url):
    running = await serve("conversation")
    owner = make_caller(running.channel, tenant, "root", roles=("owner",))
    member = make_caller(running.channel, tenant, "alice")
    keeper = make_caller(running.channel, "keep-" + tenant, "root", roles=("owner",))
    await expect_status(
        member.call("UpdateRetentionPolicy", policy=pb.RetentionPolicy(closed_retention_days=1)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert (await owner.call("GetRetentionPolicy")).policy.closed_retention_days == 0
    await owner.call("UpdateRetentionPolicy", policy=pb.RetentionPolicy(closed_retention_days=5))
    assert (await owner.call("GetRetentionPolicy")).policy.closed_retention_days == 5
    await keeper.call("UpdateRetentionPolicy", policy=pb.RetentionPolicy(closed_retention_days=30))

    expired = await owner.create(title="closed")
    await owner.append(expired.id, "old news")
    await owner.call("GetContext", conversation_id=expired.id, token_budget=100)  # fills the hot window
    await owner.call("CloseConversation", conversation_id=expired.id)
    active = await owner.create(title="active")
    await owner.append(active.id, "still going")
    kept_elsewhere = await keeper.create(title="kept")
    await keeper.call("CloseConversation", conversation_id=kept_elsewhere.id)

    service = (await build(runtime)).service
    job = RetentionJob(store=service.store, hot=service.hot, clock=lambda: time.time() + 6 * 86_400)
    assert await job.run_once(tenant) == 1
    assert await job.run_once("keep-" + tenant) == 0
    await expect_status(owner.call("GetConversation", conversation_id=expired.id), grpc.StatusCode.NOT_FOUND)
    assert await service.store.messages_before(expired.id, 10, limit=10) == []
    client = sync_redis_client(redis_url)
    try:
        assert not client.exists(HotWindow.key(expired.id))
    finally:
        client.close()
    assert (await owner.call("GetConversation", conversation_id=active.id)).conversation.message_count == 1
    assert (await keeper.call("GetConversation", conversation_id=kept_elsewhere.id)).conversation.id


async def test_delete_erases_conversation_and_messages(serve, runtime, make_caller, tenant):
    running = await serve("conversation")
    alice = make_caller(running.channel, tenant, "alice")
    conv = await alice.create()
    await alice.append(conv.id, "forget me")
    await alice.call("DeleteConversation", conversation_id=conv.id)
    await expect_status(alice.call("GetConversation", conversation_id=conv.id), grpc.StatusCode.NOT_FOUND)
    assert await (await build(runtime)).service.store.messages_before(conv.id, 10, limit=10) == []


async def test_bad_input_is_invalid_argument_and_changes_nothing(serve, make_caller, tenant):
    running = await serve("conversation")
    alice = make_caller(running.channel, tenant, "alice")
    owner = make_caller(running.channel, tenant, "root", roles=("owner",))
    conv = await alice.create()
    await alice.append(conv.id, "the only message")
    bad_appends = {
        "message.content": pb.Message(role=pb.MESSAGE_ROLE_USER, content=""),
        "message.role": pb.Message(role=pb.MESSAGE_ROLE_UNSPECIFIED, content="hi"),
        "message.tool_call_id": pb.Message(role=pb.MESSAGE_ROLE_TOOL, content="result without a call id"),
    }
    for field, message in bad_appends.items():
        err = await expect_status(
            alice.call("AppendMessage", conversation_id=conv.id, message=message),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert field in violations(err)
    huge = pb.Message(role=pb.MESSAGE_ROLE_USER, content="x" * (64 * 1024 + 1))
    err = await expect_status(
        alice.call("AppendMessage", conversation_id=conv.id, message=huge), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "message.content" in violations(err)
    role99 = pb.Message(role=99, content="hi")  # type: ignore[arg-type]
    await expect_status(
        alice.call("AppendMessage", conversation_id=conv.id, message=role99), grpc.StatusCode.INVALID_ARGUMENT
    )
    for budget in (0, -5):
        err = await expect_status(
            alice.call("GetContext", conversation_id=conv.id, token_budget=budget),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert "token_budget" in violations(err)
    for query in ("", "   ", "q" * 257):
        err = await expect_status(
            alice.call("SearchConversations", query=query), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert "query" in violations(err)
    for method in ("ListMessages", "ListConversations", "SearchConversations"):
        fields = {"conversation_id": conv.id} if method == "ListMessages" else {}
        if method == "SearchConversations":
            fields = {"query": "hello"}
        err = await expect_status(
            alice.call(method, page_token="not-a-token", **fields), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert "page_token" in violations(err)
    await expect_status(alice.call("ListConversations", page_size=-1), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_status(
        owner.call("UpdateRetentionPolicy", policy=pb.RetentionPolicy(closed_retention_days=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_status(alice.call("GetConversation", conversation_id=""), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_status(
        alice.call("GetConversation", conversation_id="no-such-id"), grpc.StatusCode.NOT_FOUND
    )
    await expect_status(alice.append("no-such-id", "hi"), grpc.StatusCode.NOT_FOUND)
    await expect_status(alice.call("CreateConversation", agent_id=""), grpc.StatusCode.INVALID_ARGUMENT)
    got = await alice.call("GetConversation", conversation_id=conv.id)
    assert got.conversation.message_count == 1
    assert [m.content for m in (await alice.call("ListMessages", conversation_id=conv.id)).messages] == [
        "the only message"
    ]
    assert len((await alice.call("ListConversations")).conversations) == 1
    assert (await owner.call("GetRetentionPolicy")).policy.closed_retention_days == 0


async def test_agentmesh_retention_command(pg_url, redis_url, monkeypatch, capsys):
    import asyncio

    from services import cli

    monkeypatch.setenv("DATABASE_URL", pg_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("AGENTMESH_REDIS_MODE", REDIS_MODE)
    monkeypatch.setenv("AGENTMESH_PAGE_TOKEN_SECRET", "x")
    code = await asyncio.to_thread(cli.main, ["retention", "--tenant", "no-such-tenant"])
    assert code == 0
    assert "retention erased 0" in capsys.readouterr().out
