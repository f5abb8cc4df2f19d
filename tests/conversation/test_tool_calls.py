"""Message.tool_calls over gRPC on PostgreSQL and Redis: stored and read back (history, context
window from PostgreSQL and from the hot window), validated on append."""

from __future__ import annotations

import grpc

from agentmesh.conversation.v1 import conversation_service_pb2 as pb
from tests.conversation.test_conversations import violations
from tests.helpers import expect_status

A, T = pb.MESSAGE_ROLE_ASSISTANT, pb.MESSAGE_ROLE_TOOL
CALLS = [
    pb.ToolCallRef(id="call_1_0", name="get_weather", arguments_json='{"city": "Paris"}'),
    pb.ToolCallRef(id="call_1_1", name="get_time", arguments_json="{}"),
]


async def test_tool_calls_are_stored_and_read_back_with_their_results(serve, make_caller, tenant):
    running = await serve("conversation")
    alice = make_caller(running.channel, tenant, "alice")
    conv = await alice.create()
    await alice.append(conv.id, "weather and time?")
    calling = await alice.call(
        "AppendMessage", conversation_id=conv.id, message=pb.Message(role=A, tool_calls=CALLS)
    )
    assert list(calling.message.tool_calls) == CALLS and calling.message.content == ""
    assert calling.message.token_count > 0
    # The window leaves out a call still waiting for one of its results.
    await alice.append(conv.id, '{"sky": "clear"}', role=T, tool_call_id="call_1_0")
    waiting = await alice.call("GetContext", conversation_id=conv.id, token_budget=1000)
    assert [m.sequence for m in waiting.messages] == [1]
    await alice.append(conv.id, '"12:00"', role=T, tool_call_id="call_1_1")
    await alice.append(conv.id, "Clear, and noon.", role=A)

    listed = await alice.call("ListMessages", conversation_id=conv.id)
    assert [list(m.tool_calls) for m in listed.messages] == [[], CALLS, [], [], []]
    # The first read fills the hot window from PostgreSQL, the second is served from Redis.
    for _ in range(2):
        ctx = await alice.call("GetContext", conversation_id=conv.id, token_budget=1000)
        assert [m.sequence for m in ctx.messages] == [1, 2, 3, 4, 5]
        assert list(ctx.messages[1].tool_calls) == CALLS
        assert [m.tool_call_id for m in ctx.messages[2:4]] == ["call_1_0", "call_1_1"]


async def test_bad_tool_calls_are_refused_by_field(serve, make_caller, tenant):
    running = await serve("conversation")
    alice = make_caller(running.channel, tenant, "alice")
    conv = await alice.create()
    cases = {
        "message.tool_calls": pb.Message(role=pb.MESSAGE_ROLE_USER, content="x", tool_calls=CALLS[:1]),
        "message.tool_calls[1].id": pb.Message(role=A, tool_calls=[CALLS[0], CALLS[0]]),
        "message.tool_calls[0].name": pb.Message(
            role=A, tool_calls=[pb.ToolCallRef(id="c", name="no spaces", arguments_json="{}")]
        ),
        "message.tool_calls[0].arguments_json": pb.Message(
            role=A, tool_calls=[pb.ToolCallRef(id="c", name="ok", arguments_json="[1]")]
        ),
        "message.content": pb.Message(role=A),
    }
    for field, message in cases.items():
        error = await expect_status(
            alice.call("AppendMessage", conversation_id=conv.id, message=message),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violations(error) == {field}, (field, violations(error))
    listed = await alice.call("ListMessages", conversation_id=conv.id)
    assert list(listed.messages) == []
