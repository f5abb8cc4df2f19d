"""The conversation rules on the service layer alone, over the in-memory fakes (no gRPC, no
PostgreSQL, no Redis): numbering, replays, closing, visibility, the context window's sources."""

from __future__ import annotations

import dataclasses

import pytest

from services.conversation.hot_window import NoHotWindow
from services.conversation.models import NewMessage
from services.conversation.service import ConversationService
from services.conversation.tokens import ApproximateTokenCounter
from services.platform import errors
from services.platform.auth import Principal
from services.platform.metrics import USAGE
from services.platform.pagination import PageTokens
from tests.fakes.conversation import FakeHotWindow, FakeSearchIndex, FakeStore


def who(user: str = "alice", role: str = "member", tenant: str = "t1", tier: str = "pro") -> Principal:
    return Principal(user_id=user, tenant_id=tenant, roles=frozenset({role}), tier=tier)


@dataclasses.dataclass
class Parts:
    service: ConversationService
    store: FakeStore
    hot: FakeHotWindow
    search: FakeSearchIndex


@pytest.fixture
def parts() -> Parts:
    store, hot, search = FakeStore(), FakeHotWindow(size=4), FakeSearchIndex()
    ticks = iter(range(1, 100_000))
    service = ConversationService(
        store=store,
        search=search,
        hot=hot,
        counter=ApproximateTokenCounter(),
        meter=USAGE,
        page_tokens=PageTokens(b"k"),
        clock=lambda: float(next(ticks)),
    )
    return Parts(service, store, hot, search)


async def _create(service: ConversationService, p: Principal, request_id: str = "") -> str:
    made = await service.create_conversation(
        p, agent_id="agent-1", agent_version=1, title="", metadata={}, request_id=request_id
    )
    return made.id


def _say(text: str) -> NewMessage:
    return NewMessage(role="user", content=text)


async def test_appends_are_numbered_from_one_without_gaps_per_conversation(parts: Parts) -> None:
    alice = who()
    first, second = await _create(parts.service, alice), await _create(parts.service, alice)
    for n in range(3):
        message, conversation = await parts.service.append_message(alice, first, _say(f"m{n}"))
        assert message.sequence == conversation.message_count == n + 1
    message, _ = await parts.service.append_message(alice, second, _say("other"))
    assert message.sequence == 1
    conversation = await parts.service.get_conversation(alice, first)
    assert conversation.token_count == sum(m.token_count for m in parts.store.messages[first])
    assert [m.sequence for m in parts.store.messages[first]] == [1, 2, 3]


async def test_a_repeated_request_id_returns_the_first_message_and_stores_nothing(parts: Parts) -> None:
    alice = who()
    cid, other = await _create(parts.service, alice), await _create(parts.service, alice)
    first, _ = await parts.service.append_message(alice, cid, _say("once"), request_id="r1")
    again, conversation = await parts.service.append_message(alice, cid, _say("twice?"), request_id="r1")
    assert again == first and again.content == "once"
    assert conversation.message_count == 1 and len(parts.store.messages[cid]) == 1
    # The key is the conversation's: the same id elsewhere is a new message.
    elsewhere, _ = await parts.service.append_message(alice, other, _say("there"), request_id="r1")
    assert elsewhere.conversation_id == other and elsewhere.sequence == 1


async def test_a_repeated_create_request_id_returns_the_first_conversation(parts: Parts) -> None:
    alice, bob = who("alice"), who("bob")
    first = await _create(parts.service, alice, request_id="c1")
    assert await _create(parts.service, alice, request_id="c1") == first
    assert await _create(parts.service, bob, request_id="c1") != first
    assert len(parts.store.conversations) == 2


async def test_a_closed_conversation_refuses_appends_but_still_replays(parts: Parts) -> None:
    alice = who()
    cid = await _create(parts.service, alice)
    stored, _ = await parts.service.append_message(alice, cid, _say("before"), request_id="r1")
    closed = await parts.service.close_conversation(alice, cid)
    assert closed.status == "CLOSED" and closed.close_time > 0
    with pytest.raises(errors.FailedPrecondition) as refused:
        await parts.service.append_message(alice, cid, _say("after"))
    assert refused.value.reason == "CONVERSATION_CLOSED"
    replayed, _ = await parts.service.append_message(alice, cid, _say("before"), request_id="r1")
    assert replayed == stored
    assert len(parts.store.messages[cid]) == 1
    # Closing again changes nothing (the first close time stays).
    assert (await parts.service.close_conversation(alice, cid)).close_time == closed.close_time


async def test_members_see_their_own_admins_their_tenant_and_nobody_another_tenant(parts: Parts) -> None:
    alice, bob, admin, stranger = who("alice"), who("bob"), who("root", "admin"), who("alice", tenant="t2")
    cid = await _create(parts.service, alice)
    for outsider in (bob, stranger):
        with pytest.raises(errors.NotFound):
            await parts.service.get_conversation(outsider, cid)
        with pytest.raises(errors.NotFound):
            await parts.service.append_message(outsider, cid, _say("not mine"))
        with pytest.raises(errors.NotFound):
            await parts.service.close_conversation(outsider, cid)
    assert parts.store.messages[cid] == []
    message, _ = await parts.service.append_message(admin, cid, _say("an admin may"))
    assert message.sequence == 1
    listed = await parts.service.list_conversations(bob, page_size=10, page_token="")
    assert listed.items == []
    await parts.service.search(bob, "hello", page_size=10, page_token="")
    await parts.service.search(admin, "hello", page_size=10, page_token="")
    assert parts.search.scopes == [("t1", "bob"), ("t1", None)]


async def test_bad_appends_are_invalid_argument_and_store_nothing(parts: Parts) -> None:
    alice = who()
    cid = await _create(parts.service, alice)
    bad = [
        NewMessage(role="user", content=""),
        NewMessage(role="", content="no role"),
        NewMessage(role="tool", content="result", tool_call_id=""),
        NewMessage(role="user", content="x", tool_call_id="call-1"),
    ]
    for new in bad:
        with pytest.raises(errors.InvalidArgument):
            await parts.service.append_message(alice, cid, new)
    assert parts.store.messages[cid] == []
    assert (await parts.service.get_conversation(alice, cid)).message_count == 0


async def test_context_reads_the_record_when_the_hot_window_is_missing_or_down(parts: Parts) -> None:
    alice = who()
    cid = await _create(parts.service, alice)
    for n in range(1, 7):
        await parts.service.append_message(alice, cid, _say(f"message {n}"))
    # No window yet: the read rebuilds it (the newest `size`) from the store.
    window = await parts.service.get_context(alice, cid, token_budget=1000, system_prompt="")
    assert [m.sequence for m in window.messages] == [1, 2, 3, 4, 5, 6]
    assert sorted(parts.hot.windows[cid]) == [3, 4, 5, 6]
    # A hole in the window is not served: the answer is the same.
    del parts.hot.windows[cid][5]
    assert await parts.service.get_context(alice, cid, token_budget=1000, system_prompt="") == window
    parts.hot.down = True
    assert await parts.service.get_context(alice, cid, token_budget=1000, system_prompt="") == window


async def test_without_a_hot_window_the_context_pages_through_the_record() -> None:
    """The embedded default's NoHotWindow: every message from the store, newest first, in pages."""
    store = FakeStore()
    service = ConversationService(
        store=store,
        search=FakeSearchIndex(),
        hot=NoHotWindow(),
        counter=ApproximateTokenCounter(),
        meter=USAGE,
        page_tokens=PageTokens(b"k"),
    )
    service.db_page = 2
    alice = who()
    cid = await _create(service, alice)
    for n in range(1, 8):
        await service.append_message(alice, cid, _say(f"message {n}"))
    window = await service.get_context(alice, cid, token_budget=1000, system_prompt="")
    assert [m.sequence for m in window.messages] == [1, 2, 3, 4, 5, 6, 7]
    assert [m.content for m in window.messages] == [f"message {n}" for n in range(1, 8)]
    # A budget that holds two messages gets the newest two.
    one = window.messages[-1].token_count
    tight = await service.get_context(alice, cid, token_budget=2 * one, system_prompt="")
    assert [m.sequence for m in tight.messages] == [6, 7]


async def test_the_context_budget_is_capped_by_the_tier(parts: Parts) -> None:
    free = who(tier="free")
    cid = await _create(parts.service, free)
    await parts.service.append_message(free, cid, _say("hi"))
    window = await parts.service.get_context(free, cid, token_budget=1_000_000, system_prompt="")
    assert window.token_budget == 8_000


async def test_retention_policy_is_for_owners_and_admins(parts: Parts) -> None:
    with pytest.raises(errors.PermissionDenied):
        await parts.service.update_retention_policy(who(), 30)
    with pytest.raises(errors.InvalidArgument):
        await parts.service.update_retention_policy(who("root", "owner"), -1)
    assert await parts.service.update_retention_policy(who("root", "owner"), 30) == 30
    assert await parts.service.get_retention_policy(who("root", "admin")) == 30
    assert parts.store.retention == {"t1": 30}
