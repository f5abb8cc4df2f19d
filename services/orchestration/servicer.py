"""gRPC transport of OrchestrationService: proto in, domain call, proto out. Nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from agentmesh.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from services.orchestration.chat import ChatFailure, ChatSession
from services.orchestration.convert import (
    action_from_proto,
    busy_policy_from_proto,
    event_to_proto,
    response_format_from_proto,
    run_to_proto,
    session_to_proto,
    status_pb,
    tool_decisions_from_proto,
    tool_outputs_from_proto,
)
from services.orchestration.events import RunEvents
from services.orchestration.models import Action
from services.orchestration.service import OrchestrationService
from services.platform import errors
from services.platform.auth import principal

__all__ = ["OrchestrationServicer", "status_pb"]

Ctx = grpc.aio.ServicerContext


class OrchestrationServicer(pb_grpc.OrchestrationServiceServicer):
    def __init__(self, service: OrchestrationService, events: RunEvents) -> None:
        self._service = service
        self._events = events

    async def StartSession(
        self, request: pb.StartSessionRequest, context: Ctx[pb.StartSessionRequest, pb.StartSessionResponse]
    ) -> pb.StartSessionResponse:
        session = await self._service.start_session(
            principal(), agent_id=request.agent_id, title=request.title, request_id=request.request_id
        )
        return pb.StartSessionResponse(session=session_to_proto(session))

    async def EndSession(
        self, request: pb.EndSessionRequest, context: Ctx[pb.EndSessionRequest, pb.EndSessionResponse]
    ) -> pb.EndSessionResponse:
        return pb.EndSessionResponse(
            session=session_to_proto(await self._service.end_session(principal(), request.session_id))
        )

    async def GetSession(
        self, request: pb.GetSessionRequest, context: Ctx[pb.GetSessionRequest, pb.GetSessionResponse]
    ) -> pb.GetSessionResponse:
        return pb.GetSessionResponse(
            session=session_to_proto(await self._service.get_session(principal(), request.session_id))
        )

    async def UpdateSession(
        self,
        request: pb.UpdateSessionRequest,
        context: Ctx[pb.UpdateSessionRequest, pb.UpdateSessionResponse],
    ) -> pb.UpdateSessionResponse:
        session = await self._service.update_session(
            principal(),
            request.session.id,
            paths=list(request.update_mask.paths),
            title=request.session.title,
        )
        return pb.UpdateSessionResponse(session=session_to_proto(session))

    async def DeleteSession(
        self,
        request: pb.DeleteSessionRequest,
        context: Ctx[pb.DeleteSessionRequest, pb.DeleteSessionResponse],
    ) -> pb.DeleteSessionResponse:
        await self._service.delete_session(principal(), request.session_id)
        return pb.DeleteSessionResponse()

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: Ctx[pb.ListSessionsRequest, pb.ListSessionsResponse]
    ) -> pb.ListSessionsResponse:
        sessions, token = await self._service.list_sessions(
            principal(),
            page_size_=request.page_size,
            page_token=request.page_token,
            agent_id=request.agent_id,
        )
        return pb.ListSessionsResponse(
            sessions=[session_to_proto(s) for s in sessions], next_page_token=token
        )

    async def SendMessage(
        self, request: pb.SendMessageRequest, context: Ctx[pb.SendMessageRequest, pb.SendMessageResponse]
    ) -> AsyncIterator[pb.SendMessageResponse]:
        run = await self._service.send_message(
            principal(),
            session_id=request.session_id,
            text=request.text,
            request_id=request.request_id,
            busy_policy=busy_policy_from_proto(request.busy_policy),
            model_override=request.model_override,
            response_format=response_format_from_proto(
                request.response_format, present=request.HasField("response_format")
            ),
        )
        async for event in self._service.events(run.id, 0):
            yield pb.SendMessageResponse(event=event_to_proto(event))
            if event.type.pauses:
                break  # the run waits for tool outputs or approvals; JoinRun picks it up again

    async def EditMessage(
        self, request: pb.EditMessageRequest, context: Ctx[pb.EditMessageRequest, pb.EditMessageResponse]
    ) -> pb.EditMessageResponse:
        run = await self._service.edit_message(
            principal(),
            session_id=request.session_id,
            message_id=request.message_id,
            text=request.text,
            request_id=request.request_id,
            busy_policy=busy_policy_from_proto(request.busy_policy),
        )
        return pb.EditMessageResponse(run=run_to_proto(run))

    async def RegenerateAnswer(
        self,
        request: pb.RegenerateAnswerRequest,
        context: Ctx[pb.RegenerateAnswerRequest, pb.RegenerateAnswerResponse],
    ) -> pb.RegenerateAnswerResponse:
        run = await self._service.regenerate_answer(
            principal(),
            session_id=request.session_id,
            message_id=request.message_id,
            request_id=request.request_id,
            busy_policy=busy_policy_from_proto(request.busy_policy),
        )
        return pb.RegenerateAnswerResponse(run=run_to_proto(run))

    async def SwitchBranch(
        self, request: pb.SwitchBranchRequest, context: Ctx[pb.SwitchBranchRequest, pb.SwitchBranchResponse]
    ) -> pb.SwitchBranchResponse:
        session, leaf = await self._service.switch_branch(
            principal(), session_id=request.session_id, message_id=request.message_id
        )
        return pb.SwitchBranchResponse(session=session_to_proto(session), active_message_id=leaf)

    async def Chat(
        self, request_iterator: AsyncIterator[pb.ChatRequest], context: Ctx[pb.ChatRequest, pb.ChatResponse]
    ) -> AsyncIterator[pb.ChatResponse]:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None:
            return
        if not first.session_id:
            raise errors.InvalidArgument.field("session_id", "is required on the first ChatRequest")

        async def actions() -> AsyncIterator[Action]:
            request: pb.ChatRequest | None = first
            while request is not None:
                action = action_from_proto(request)
                if action is not None:
                    yield action
                request = await anext(requests, None)

        chat = ChatSession(self._service, self._events, principal(), first.session_id)
        async for item in chat.run(actions()):
            if isinstance(item, ChatFailure):
                yield pb.ChatResponse(status=status_pb(item.error), request_id=item.request_id)
            else:
                yield pb.ChatResponse(run_event=event_to_proto(item))

    async def GetRun(
        self, request: pb.GetRunRequest, context: Ctx[pb.GetRunRequest, pb.GetRunResponse]
    ) -> pb.GetRunResponse:
        return pb.GetRunResponse(run=run_to_proto(await self._service.get_run(principal(), request.run_id)))

    async def ListRuns(
        self, request: pb.ListRunsRequest, context: Ctx[pb.ListRunsRequest, pb.ListRunsResponse]
    ) -> pb.ListRunsResponse:
        runs, token = await self._service.list_runs(
            principal(),
            session_id=request.session_id,
            page_size_=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListRunsResponse(runs=[run_to_proto(r) for r in runs], next_page_token=token)

    async def CancelRun(
        self, request: pb.CancelRunRequest, context: Ctx[pb.CancelRunRequest, pb.CancelRunResponse]
    ) -> pb.CancelRunResponse:
        return pb.CancelRunResponse(
            run=run_to_proto(await self._service.cancel_run(principal(), request.run_id))
        )

    async def JoinRun(
        self, request: pb.JoinRunRequest, context: Ctx[pb.JoinRunRequest, pb.JoinRunResponse]
    ) -> AsyncIterator[pb.JoinRunResponse]:
        stream = await self._service.join_run(principal(), request.run_id, request.after_event_id)
        async for event in stream:
            yield pb.JoinRunResponse(event=event_to_proto(event))
            if event.type.pauses:
                break

    async def SubmitToolOutputs(
        self,
        request: pb.SubmitToolOutputsRequest,
        context: Ctx[pb.SubmitToolOutputsRequest, pb.SubmitToolOutputsResponse],
    ) -> pb.SubmitToolOutputsResponse:
        run = await self._service.submit_tool_outputs(
            principal(), request.run_id, tool_outputs_from_proto(request.outputs)
        )
        return pb.SubmitToolOutputsResponse(run=run_to_proto(run))

    async def DecideToolCalls(
        self,
        request: pb.DecideToolCallsRequest,
        context: Ctx[pb.DecideToolCallsRequest, pb.DecideToolCallsResponse],
    ) -> pb.DecideToolCallsResponse:
        run = await self._service.decide_tool_calls(
            principal(), request.run_id, tool_decisions_from_proto(request.decisions)
        )
        return pb.DecideToolCallsResponse(run=run_to_proto(run))

    async def RotateToolSigningSecret(
        self,
        request: pb.RotateToolSigningSecretRequest,
        context: Ctx[pb.RotateToolSigningSecretRequest, pb.RotateToolSigningSecretResponse],
    ) -> pb.RotateToolSigningSecretResponse:
        secret = await self._service.rotate_tool_signing_secret(principal())
        return pb.RotateToolSigningSecretResponse(secret=secret)
