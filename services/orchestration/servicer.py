"""gRPC transport of OrchestrationService: proto in, domain call, proto out. Nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import status_pb2

from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from agentmesh.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from services.orchestration.chat import (
    Action,
    CancelAction,
    ChatFailure,
    ChatSession,
    ResumeAction,
    SendAction,
)
from services.orchestration.events import RunEvents
from services.orchestration.models import Caller, Run, RunEvent, Session, Usage
from services.orchestration.service import OrchestrationService
from services.platform import errors
from services.platform.auth import principal


def _ts(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _usage(usage: Usage | None) -> pb.Usage | None:
    return (
        None
        if usage is None
        else pb.Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
    )


def session_pb(s: Session) -> pb.Session:
    return pb.Session(
        id=s.id,
        agent_id=s.agent_id,
        agent_version=s.agent_version,
        conversation_id=s.conversation_id,
        user_id=s.user_id,
        state=int(s.state),
        active_run_id=s.active_run_id,
        create_time=_ts(s.create_time),
        update_time=_ts(s.update_time),
        end_time=_ts(s.end_time),
    )


def run_pb(r: Run) -> pb.Run:
    return pb.Run(
        id=r.id,
        session_id=r.session_id,
        state=int(r.state),
        agent_version=r.agent_version,
        user_message_id=r.user_message_id,
        assistant_message_id=r.assistant_message_id,
        usage=_usage(r.usage),
        error=pb.RunError(code=r.error.code, message=r.error.message) if r.error else None,
        last_event_id=r.last_event_id,
        create_time=_ts(r.create_time),
        start_time=_ts(r.start_time),
        end_time=_ts(r.end_time),
    )


def event_pb(e: RunEvent) -> pb.RunEvent:
    return pb.RunEvent(
        event_id=e.event_id,
        run_id=e.run_id,
        session_id=e.session_id,
        type=int(e.type),
        text_delta=e.text_delta,
        final_message=e.final_message,
        usage=_usage(e.usage),
        error=pb.RunError(code=e.error.code, message=e.error.message) if e.error else None,
        agent_version=e.agent_version,
        event_time=_ts(e.event_time),
    )


def status_pb(error: errors.AgentmeshError) -> status_pb2.Status:
    """The google.rpc.Status a unary call failing with `error` carries (code, message, details)."""
    # to_status is the one mapping of domain errors; its trailers hold the serialized Status.
    trailers = dict(errors.to_status(error).trailing_metadata)
    return status_pb2.Status.FromString(trailers["grpc-status-details-bin"])


def caller() -> Caller:
    p = principal()
    return Caller(tenant_id=p.tenant_id, user_id=p.user_id, token=p.token, tier=p.tier, is_admin=p.is_admin)


class OrchestrationServicer(pb_grpc.OrchestrationServiceServicer):
    def __init__(self, service: OrchestrationService, events: RunEvents):
        self._service = service
        self._events = events

    async def StartSession(
        self, request: pb.StartSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartSessionResponse:
        session = await self._service.start_session(
            caller(), agent_id=request.agent_id, title=request.title, request_id=request.request_id
        )
        return pb.StartSessionResponse(session=session_pb(session))

    async def EndSession(
        self, request: pb.EndSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.EndSessionResponse:
        return pb.EndSessionResponse(
            session=session_pb(await self._service.end_session(caller(), request.session_id))
        )

    async def GetSession(
        self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSessionResponse:
        return pb.GetSessionResponse(
            session=session_pb(await self._service.get_session(caller(), request.session_id))
        )

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSessionsResponse:
        sessions, token = await self._service.list_sessions(
            caller(), page_size_=request.page_size, page_token=request.page_token, agent_id=request.agent_id
        )
        return pb.ListSessionsResponse(sessions=[session_pb(s) for s in sessions], next_page_token=token)

    async def SendMessage(
        self, request: pb.SendMessageRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SendMessageResponse]:
        run = await self._service.send_message(
            caller(),
            session_id=request.session_id,
            text=request.text,
            request_id=request.request_id,
            busy_policy=request.busy_policy,
        )
        async for event in self._service.events(run.id, 0):
            yield pb.SendMessageResponse(event=event_pb(event))

    async def Chat(
        self, request_iterator: AsyncIterator[pb.ChatRequest], context: grpc.aio.ServicerContext
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
                kind = request.WhichOneof("action")
                if kind == "message":
                    m = request.message
                    yield SendAction(m.text, m.request_id, m.busy_policy)
                elif kind == "cancel":
                    yield CancelAction(request.cancel.run_id)
                elif kind == "resume":
                    yield ResumeAction(request.resume.run_id, request.resume.after_event_id)
                request = await anext(requests, None)

        chat = ChatSession(self._service, self._events, caller(), first.session_id)
        async for item in chat.run(actions()):
            if isinstance(item, ChatFailure):
                yield pb.ChatResponse(status=status_pb(item.error), request_id=item.request_id)
            else:
                yield pb.ChatResponse(run_event=event_pb(item))

    async def GetRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.GetRunResponse:
        return pb.GetRunResponse(run=run_pb(await self._service.get_run(caller(), request.run_id)))

    async def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRunsResponse:
        runs, token = await self._service.list_runs(
            caller(),
            session_id=request.session_id,
            page_size_=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListRunsResponse(runs=[run_pb(r) for r in runs], next_page_token=token)

    async def CancelRun(
        self, request: pb.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelRunResponse:
        return pb.CancelRunResponse(run=run_pb(await self._service.cancel_run(caller(), request.run_id)))

    async def JoinRun(
        self, request: pb.JoinRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.JoinRunResponse]:
        stream = await self._service.join_run(caller(), request.run_id, request.after_event_id)
        async for event in stream:
            yield pb.JoinRunResponse(event=event_pb(event))
