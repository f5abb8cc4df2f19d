"""Durability, the hot window, replay, concurrency and the context window through real gRPC, on real
PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import psycopg
import redis.asyncio as aioredis

from agentmesh.conversation.v1 import conversation_service_pb2 as pb
from agentmesh.conversation.v1 import conversation_service_pb2_grpc as pb_grpc
from services import conversation
from services.conversation.hot_window import HotWindow
from services.conversation.models import Message, NewMessage
from services.conversation.search import MessageSearch
from services.conversation.service import ConversationService
from services.conversation.servicer import ConversationServicer
from services.conversation.store import ConversationStore
from services.conversation.tokens import ApproximateTokenCounter
from services.platform import errors
from services.platform.auth import Principal
from services.platform.metrics import USAGE
from services.platform.server import ServiceRegistration
from tests.helpers import expect_status, flush_redis, sync_redis_client
from tests.system.faults import sync_url

A, T = pb.MESSAGE_ROLE_ASSISTANT, pb.MESSAGE_ROLE_TOOL


async def test_flushdb_loses_nothing_and_changes_no_answer(serve, make_caller, tenant, flushable_redis_url):
    running = await serve("conversation")
    alice = make_caller(running.channel, tenant, "alice")
    conv = await alice.create()
    await alice.append(conv.id, "hello there")
    await alice.append(conv.id, "calling a tool", role=A, tool_call_id="call-1")
    await alice.append(conv.id, "tool output", role=T, tool_call_id="call-1")
    await alice.append(conv.id, "the answer", role=A)

    async def answers():
        ctx = await alice.call(
            "GetContext", conversation_id=conv.id, token_budget=1000, system_prompt="be brief"
        )
        listed = await alice.call("ListMessages", conversation_id=conv.id)
        return ctx, listed

    before_ctx, before_list = await answers()
    assert [m.sequence for m in before_ctx.messages] == [0, 1, 2, 3, 4]
    assert before_list.messages[0].content == "hello there"
    client = sync_redis_client(flushable_redis_url)
    try:
        # The read filled the hot window: Redis is really in use.
        assert client.zcard(HotWindow.key(conv.id)) == 4
        flush_redis(flushable_redis_url)
        after_ctx, after_list = await answers()
        assert after_ctx == before_ctx
        assert after_list == before_list
        assert client.zcard(HotWindow.key(conv.id)) == 4  # refilled from PostgreSQL
        # A hole (a write lost while Redis was away) is noticed, not served.
        await alice.append(conv.id, "fifth")
        client.zremrangebyscore(HotWindow.key(conv.id), 3, 3)
        ctx = await alice.call("GetContext", conversation_id=conv.id, token_budget=1000)
        assert [m.sequence for m in ctx.messages] == [1, 2, 3, 4, 5]
    finally:
        client.close()


async def test_request_id_replay_gives_one_message(serve, make_caller, tenant):
    running = await serve("conversation")
    alice = make_caller(running.channel, tenant, "alice")
    conv = await alice.create()
    first = await alice.append(conv.id, "once", request_id="req-1")
    again = await alice.append(conv.id, "once", request_id="req-1")
    both = await asyncio.gather(*(alice.append(conv.id, "twice", request_id="req-2") for _ in range(5)))
    assert again.message == first.message
    assert len({r.message.id for r in both}) == 1
    listed = await alice.call("ListMessages", conversation_id=conv.id)
    assert [m.sequence for m in listed.messages] == [1, 2]
    assert (await alice.call("GetConversation", conversation_id=conv.id)).conversation.message_count == 2


async def test_concurrent_appends_get_distinct_gap_free_sequences(serve, make_caller, tenant):
    running = await serve("conversation")
    alice = make_caller(running.channel, tenant, "alice")
    conv = await alice.create()
    replies = await asyncio.gather(*(alice.append(conv.id, f"m{i}") for i in range(50)))
    assert sorted(r.message.sequence for r in replies) == list(range(1, 51))
    got = await alice.call("GetConversation", conversation_id=conv.id)
    assert got.conversation.message_count == 50
    assert got.conversation.token_count == sum(r.message.token_count for r in replies)
    listed = await alice.call("ListMessages", conversation_id=conv.id, page_size=100)
    assert [m.sequence for m in listed.messages] == list(range(1, 51))


async def test_context_truncation_through_grpc(serve, make_caller, tenant):
    running = await serve("conversation")
    alice = make_caller(running.channel, tenant, "alice")
    conv = await alice.create()
    for content, role, tool in [
        ("a" * 36, pb.MESSAGE_ROLE_USER, ""),  # 13 tokens each: 9 + 4 overhead
        ("b" * 36, A, "call-9"),
        ("c" * 36, T, "call-9"),
        ("d" * 36, A, ""),
    ]:
        await alice.append(conv.id, content, role=role, tool_call_id=tool)
    prompt = "s" * 36  # 13 tokens
    # 13 (prompt) + 13 (d) + 26 (the b/c unit) = 52: a budget of 51 must drop the whole unit.
    ctx = await alice.call("GetContext", conversation_id=conv.id, token_budget=51, system_prompt=prompt)
    assert [m.sequence for m in ctx.messages] == [0, 4]
    assert ctx.total_tokens == 26 and ctx.system_prompt_tokens == 13
    assert [(r.first, r.last) for r in ctx.kept] == [(4, 4)]
    assert [(r.first, r.last) for r in ctx.dropped] == [(1, 3)]
    ctx = await alice.call("GetContext", conversation_id=conv.id, token_budget=52, system_prompt=prompt)
    assert [m.sequence for m in ctx.messages] == [0, 2, 3, 4]
    assert ctx.total_tokens == 52 == ctx.token_budget
    ctx = await alice.call("GetContext", conversation_id=conv.id, token_budget=10, system_prompt=prompt * 10)
    assert (
        ctx.system_prompt_truncated
        and ctx.total_tokens <= 10
        and ctx.messages[0].role == pb.MESSAGE_ROLE_SYSTEM
    )
    # The budget is capped at the tier's max_context_tokens.
    free = make_caller(running.channel, tenant, "alice", tier="free")
    ctx = await free.call("GetContext", conversation_id=conv.id, token_budget=1_000_000)
    assert ctx.token_budget == 8_000


async def test_redis_down_append_still_succeeds(serve, runtime, make_caller, tenant):
    # The hot window points at a port nothing listens on; the verifier keeps the working Redis.
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1, socket_timeout=1)
    try:
        # The graph build() makes, but with the dead Redis behind the hot window.
        service = ConversationService(
            store=ConversationStore(runtime.engine, autocommit=runtime.autocommit),
            search=MessageSearch(runtime.engine),
            hot=HotWindow(dead),
            counter=ApproximateTokenCounter(),
            meter=USAGE,
            page_tokens=runtime.page_tokens,
            clock=runtime.clock,
        )
        servicer = ConversationServicer(service=service)
        running = await serve(
            ServiceRegistration(
                name=conversation.SERVICE_NAME,
                add_to_server=lambda server: pb_grpc.add_ConversationServiceServicer_to_server(
                    servicer, server
                ),
            )
        )
        alice = make_caller(running.channel, tenant, "alice")
        conv = await alice.create()
        reply = await alice.append(conv.id, "stored anyway")
        assert reply.message.sequence == 1
        ctx = await alice.call("GetContext", conversation_id=conv.id, token_budget=100)
        assert [m.content for m in ctx.messages] == ["stored anyway"]
    finally:
        await dead.aclose()


async def test_closed_conversation_refuses_appends(serve, make_caller, tenant):
    running = await serve("conversation")
    alice = make_caller(running.channel, tenant, "alice")
    conv = await alice.create()
    await alice.append(conv.id, "before", request_id="r1")
    closed = await alice.call("CloseConversation", conversation_id=conv.id)
    assert closed.conversation.status == pb.CONVERSATION_STATUS_CLOSED
    await expect_status(alice.append(conv.id, "after"), grpc.StatusCode.FAILED_PRECONDITION)
    # A retry of an append that did happen still returns it.
    assert (await alice.append(conv.id, "before", request_id="r1")).message.sequence == 1
    got = await alice.call("GetConversation", conversation_id=conv.id)
    assert got.conversation.message_count == 1


async def test_list_messages_pages_and_bounds(serve, make_caller, tenant):
    running = await serve("conversation")
    alice = make_caller(running.channel, tenant, "alice")
    conv = await alice.create()
    for i in range(7):
        await alice.append(conv.id, f"m{i + 1}")
    seen, token = [], ""
    while True:
        page = await alice.call("ListMessages", conversation_id=conv.id, page_size=3, page_token=token)
        seen += [m.sequence for m in page.messages]
        token = page.next_page_token
        if not token:
            break
    assert seen == [1, 2, 3, 4, 5, 6, 7]
    desc = await alice.call(
        "ListMessages",
        conversation_id=conv.id,
        before_sequence=6,
        after_sequence=1,
        order=pb.SORT_ORDER_DESCENDING,
        page_size=2,
    )
    assert [m.sequence for m in desc.messages] == [5, 4]
    rest = await alice.call(
        "ListMessages",
        conversation_id=conv.id,
        before_sequence=6,
        after_sequence=1,
        order=pb.SORT_ORDER_DESCENDING,
        page_size=2,
        page_token=desc.next_page_token,
    )
    assert [m.sequence for m in rest.messages] == [3, 2] and rest.next_page_token == ""


def _who(tenant: str, user: str, role: str = "member") -> Principal:
    return Principal(user_id=user, tenant_id=tenant, roles=frozenset({role}), tier="pro")


def _spy_batches(service: ConversationService) -> list[int]:
    """The sizes of the append statements the store sends from now on."""
    sizes: list[int] = []
    batcher = service.store.appends._batcher
    run = batcher._run

    async def recorded(items: list[Any]) -> Any:
        sizes.append(len(items))
        return await run(items)

    batcher._run = recorded
    return sizes


async def test_appends_sharing_a_statement_keep_every_rule(runtime, tenant):
    service = (await conversation.build(runtime)).service
    sizes = _spy_batches(service)
    alice, bob, admin = _who(tenant, "alice"), _who(tenant, "bob"), _who(tenant, "root", "admin")
    stranger = _who(f"{tenant}-other", "alice")

    async def create(who: Principal) -> str:
        made = await service.create_conversation(
            who, agent_id="a", agent_version=1, title="", metadata={}, request_id=""
        )
        return made.id

    mine = [await create(alice) for _ in range(6)]
    bobs, closed, elsewhere = await create(bob), await create(alice), await create(stranger)
    await service.close_conversation(alice, closed)

    def append(who: Principal, cid: str, text: str, request_id: str = "") -> Any:
        return service.append_message(who, cid, NewMessage(role="user", content=text), request_id=request_id)

    calls = [append(alice, cid, f"{cid}-{n}") for n in range(2) for cid in mine]
    calls += [
        append(alice, bobs, "not hers"),
        append(admin, bobs, "an admin may"),
        append(alice, closed, "closed"),
        append(stranger, mine[0], "another tenant's"),
        *(append(alice, mine[1], "twin", request_id="r") for _ in range(3)),
        append(alice, mine[2], "same request id, other conversation", request_id="r"),
    ]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert max(sizes) > 1, sizes  # the statements were shared

    assert all(not isinstance(o, BaseException) for o in outcomes[:12]), outcomes[:12]
    not_hers, admins, to_closed, foreign, *twins, other = outcomes[12:]
    assert isinstance(not_hers, errors.NotFound) and isinstance(foreign, errors.NotFound)
    assert isinstance(to_closed, errors.FailedPrecondition)
    assert admins[0].sequence == 1 and admins[0].content == "an admin may"
    assert len({t[0].id for t in twins}) == 1
    assert other[0].conversation_id == mine[2]

    expected = {cid: [f"{cid}-0", f"{cid}-1"] for cid in mine}
    expected[mine[1]].append("twin")
    expected[mine[2]].append("same request id, other conversation")
    for cid, contents in expected.items():
        rows = await service.store.list_messages(cid, after=0, before=0, descending=False, limit=10)
        assert [m.sequence for m in rows] == list(range(1, len(contents) + 1))
        assert sorted(m.content for m in rows) == sorted(contents)
        assert (await service.get_conversation(alice, cid)).message_count == len(contents)
    for cid, who, count in ((bobs, bob, 1), (closed, alice, 0), (elsewhere, stranger, 0)):
        assert (await service.get_conversation(who, cid)).message_count == count
        assert (
            len(await service.store.list_messages(cid, after=0, before=0, descending=False, limit=10))
            == count
        )


async def test_a_twin_committed_by_another_process_fails_only_itself(runtime, tenant, pg_url):
    """Two stores (two processes' batchers) append the same request id while a third connection
    holds the conversation's row lock: both statements pass the replay check, so the later one hits
    the unique index and its whole statement is undone; its other message is appended alone."""
    first, second = (await conversation.build(runtime)).service, (await conversation.build(runtime)).service
    alice = _who(tenant, "alice")
    cids = []
    for _ in range(3):
        made = await first.create_conversation(
            alice, agent_id="a", agent_version=1, title="", metadata={}, request_id=""
        )
        cids.append(made.id)
    twin_cid, own_a, own_b = cids
    retried: list[str] = []
    for service in (first, second):
        alone = service.store.appends._append_alone

        async def recorded(item: dict[str, Any], alone: Any = alone) -> Any:
            retried.append(item["content"])
            return await alone(item)

        service.store.appends._append_alone = recorded  # type: ignore[method-assign]

    def append(service: ConversationService, cid: str, text: str, request_id: str = "") -> Any:
        return service.append_message(
            alice, cid, NewMessage(role="user", content=text), request_id=request_id
        )

    dsn = sync_url(pg_url)
    async with (
        await psycopg.AsyncConnection.connect(dsn) as holder,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as watcher,
    ):
        await holder.execute("SELECT 1 FROM conversations WHERE id = %s FOR UPDATE", (twin_cid,))
        waiting = [
            asyncio.gather(append(first, twin_cid, "twin", "r"), append(first, own_a, "a")),
            asyncio.gather(append(second, twin_cid, "twin", "r"), append(second, own_b, "b")),
        ]
        tasks = [asyncio.ensure_future(w) for w in waiting]
        for _ in range(100):
            # From another connection: a transaction sees one snapshot of pg_stat_activity.
            blocked = await (
                await watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            ).fetchone()
            if blocked and blocked[0] >= 2:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the two statements never waited for the row lock")
        await holder.commit()
        (twin_1, a), (twin_2, b) = await asyncio.gather(*tasks)
    assert sorted(retried) in (["a", "twin"], ["b", "twin"])  # the later statement, one by one
    assert twin_1[0].id == twin_2[0].id and twin_1[0].sequence == 1
    assert a[0].content == "a" and b[0].content == "b"
    for cid, count in ((twin_cid, 1), (own_a, 1), (own_b, 1)):
        assert (await first.get_conversation(alice, cid)).message_count == count
        assert (
            len(await first.store.list_messages(cid, after=0, before=0, descending=False, limit=10)) == count
        )


async def test_concurrent_hot_window_appends_reach_only_the_windows_that_exist(runtime):
    window = HotWindow(runtime.redis, size=3)
    warm, cold = f"warm-{uuid.uuid4().hex}", f"cold-{uuid.uuid4().hex}"

    def message(cid: str, sequence: int) -> Message:
        return Message(
            id=f"{cid}-{sequence}", conversation_id=cid, sequence=sequence, role="user",
            content=f"m{sequence}", token_count=1, metadata={}, tool_call_id="", create_time=sequence,
        )  # fmt: skip

    await window.fill(warm, [message(warm, 1)])
    try:
        await asyncio.gather(*(window.append(message(cid, s)) for s in range(2, 6) for cid in (warm, cold)))
        kept = await window.read(warm, max_sequence=100, count=10)
        assert [m.sequence for m in kept or []] == [5, 4, 3]  # capped at the newest `size`
        assert kept and kept[0] == message(warm, 5)
        assert not await runtime.redis.exists(HotWindow.key(cold))
        assert await runtime.redis.ttl(HotWindow.key(warm)) > 0
    finally:
        await window.drop(warm, cold)
