"""The bugs the fuzzers found, one test each (each failed before its fix)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import timestamp_pb2

from agentmesh.agents.v1 import agents_service_pb2 as agents_pb
from agentmesh.conversation.v1 import conversation_service_pb2 as conv_pb
from agentmesh.orchestration.v1 import orchestration_service_pb2 as orch_pb
from services.platform import errors
from tests.fuzz.stack import Snapshots, Stack, World, changed, make_world
from tests.helpers import bearer


@pytest.fixture(scope="module")
def world(stack: Stack) -> World:
    return make_world(stack, "regress")


def _violations(error: grpc.RpcError) -> list[str]:
    exc = errors.from_rpc_error(error)  # type: ignore[arg-type]
    assert isinstance(exc, errors.InvalidArgument), exc
    return [v.field for v in exc.violations]


def test_nul_in_a_string_is_invalid_argument_not_internal(
    stack: Stack, world: World, snapshots: Snapshots
) -> None:
    # PostgreSQL text cannot hold U+0000: the query failed and the call answered INTERNAL.
    s, auth = stack.stubs(), bearer(world.owner.access)
    with pytest.raises(grpc.RpcError) as caught:
        s.agents.GetAgent(agents_pb.GetAgentRequest(agent_id="a\x00b"), metadata=auth, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(caught.value) == ["agent_id"]

    before = snapshots.take()
    with pytest.raises(grpc.RpcError) as caught:
        s.agents.CreateAgent(
            agents_pb.CreateAgentRequest(
                agent=agents_pb.Agent(
                    display_name="ok",
                    config=agents_pb.AgentConfig(model="echo:default", metadata={"k": "v\x00"}),
                )
            ),
            metadata=auth,
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(caught.value) == ["agent.config.metadata['k']"]
    assert not changed(before, snapshots.take())


@pytest.mark.parametrize(
    "bad",
    [timestamp_pb2.Timestamp(nanos=1_000_000_000), timestamp_pb2.Timestamp(seconds=2**62)],
    ids=["nanos-past-a-second", "after-year-9999"],
)
def test_invalid_timestamps_are_invalid_argument(
    stack: Stack, world: World, bad: timestamp_pb2.Timestamp
) -> None:
    # protobuf's ToMicroseconds raised ValueError on them: INTERNAL.
    s, auth = stack.stubs(), bearer(world.owner.access)
    with pytest.raises(grpc.RpcError) as caught:
        s.conversation.ListConversations(
            conv_pb.ListConversationsRequest(end_time=bad), metadata=auth, timeout=10
        )
    assert _violations(caught.value) == ["end_time"]
    with pytest.raises(grpc.RpcError) as caught:
        s.conversation.GetTenantStats(
            conv_pb.GetTenantStatsRequest(start_time=bad), metadata=auth, timeout=10
        )
    assert _violations(caught.value) == ["start_time"]


def test_end_session_whose_conversation_was_deleted(stack: Stack, world: World, snapshots: Snapshots) -> None:
    # EndSession stored the session as ended, then answered NOT_FOUND from closing the conversation:
    # a rejected call that changed what was stored.
    s, auth = stack.stubs(), bearer(world.owner.access)
    session = s.orchestration.StartSession(
        orch_pb.StartSessionRequest(agent_id=world.ids["agent"]), metadata=auth, timeout=10
    ).session
    s.conversation.DeleteConversation(
        conv_pb.DeleteConversationRequest(conversation_id=session.conversation_id), metadata=auth, timeout=10
    )
    ended = s.orchestration.EndSession(
        orch_pb.EndSessionRequest(session_id=session.id), metadata=auth, timeout=10
    ).session
    assert ended.state == orch_pb.SESSION_STATE_ENDED


def test_chat_ends_with_invalid_argument_on_a_bad_later_request(stack: Stack, world: World) -> None:
    # A request that failed to read after the first one killed Chat's reader task silently: the
    # stream then hung until the client's deadline.
    s, auth = stack.stubs(), bearer(world.owner.access)
    session = s.orchestration.StartSession(
        orch_pb.StartSessionRequest(agent_id=world.ids["agent"]), metadata=auth, timeout=10
    ).session
    requests = [
        orch_pb.ChatRequest(session_id=session.id, resume=orch_pb.ChatResume(run_id="none")),
        orch_pb.ChatRequest(message=orch_pb.ChatMessage(text="bad\x00")),
    ]
    replies = s.orchestration.Chat(iter(requests), metadata=auth, timeout=10)
    with pytest.raises(grpc.RpcError) as caught:
        list(replies)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()


def test_refused_branch_changes_leave_the_conversation_untouched(
    stack: Stack, world: World, snapshots: Snapshots
) -> None:
    # SwitchBranch and EditMessage lock the conversation's row by writing its update_time, and a
    # refusal (no such message, not a user message, closed) returned from inside the transaction,
    # which committed that write: a rejected call that changed what was stored.
    s, auth = stack.stubs(), bearer(world.owner.access)
    conversation = world.ids["conversation"]
    snapshots.settle()
    before = snapshots.take()
    with pytest.raises(grpc.RpcError) as caught:
        s.conversation.SwitchBranch(
            conv_pb.SwitchBranchRequest(conversation_id=conversation, message_id="no-such-message"),
            metadata=auth,
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        s.conversation.EditMessage(
            conv_pb.EditMessageRequest(
                conversation_id=conversation, message_id="no-such-message", content="other words"
            ),
            metadata=auth,
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert not changed(before, snapshots.take())
