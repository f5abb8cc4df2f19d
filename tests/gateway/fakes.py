"""Small in-memory servicers standing in for the real services, on a real grpc.aio server.

They raise services.platform.errors exceptions like the real ones, record what they received
(request and metadata) for the transcoding tests, and model runs the way orchestration does: a run
goes on by itself, and every stream (SendMessage, JoinRun, Chat) follows its events from an id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from typing import Any

import grpc

from agentmesh.agents.v1 import agents_service_pb2 as agents_pb
from agentmesh.agents.v1 import agents_service_pb2_grpc as agents_grpc
from agentmesh.conversation.v1 import conversation_service_pb2 as conv_pb
from agentmesh.conversation.v1 import conversation_service_pb2_grpc as conv_grpc
from agentmesh.identity.v1 import identity_service_pb2 as identity_pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as identity_grpc
from agentmesh.orchestration.v1 import orchestration_service_pb2 as orch_pb
from agentmesh.orchestration.v1 import orchestration_service_pb2_grpc as orch_grpc
from services.orchestration.servicer import status_pb
from services.platform import errors
from services.platform.auth import principal
from services.platform.server import ServiceRegistration

T = orch_pb.RunEventType


@dataclasses.dataclass
class Seen:
    method: str
    request: Any
    metadata: dict[str, str]


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Seen] = []

    def record(self, method: str, request: Any, context: Any) -> None:
        md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        self.seen.append(Seen(method, request, md))

    def last(self, method: str) -> Seen:
        return next(s for s in reversed(self.seen) if s.method == method)


def raise_for(name: str, context: Any) -> Any:
    """`err-NOT_FOUND` style ids raise the named status, as a service would."""
    code = name.removeprefix("err-")
    table: dict[str, Exception] = {
        "INVALID_ARGUMENT": errors.InvalidArgument.field("agent_id", "bad"),
        "NOT_FOUND": errors.NotFound("no such agent"),
        "ALREADY_EXISTS": errors.AlreadyExists("exists"),
        "FAILED_PRECONDITION": errors.FailedPrecondition("not active"),
        "ABORTED": errors.Aborted("etag mismatch"),
        "UNAUTHENTICATED": errors.Unauthenticated("who are you"),
        "PERMISSION_DENIED": errors.PermissionDenied("no"),
        "RESOURCE_EXHAUSTED": errors.ResourceExhausted("slow down", retry_after=2.5),
        "UNAVAILABLE": errors.Unavailable("db down"),
        "DEADLINE_EXCEEDED": errors.DeadlineExceeded("too slow"),
        "CANCELLED": errors.Cancelled("cancelled"),
        "INTERNAL": errors.Internal("boom"),
    }
    if code in table:
        raise table[code]
    return context.abort(getattr(grpc.StatusCode, code), f"{code.lower()} on purpose")


class FakeIdentity(identity_grpc.IdentityServiceServicer):
    def __init__(self, keys: Any):
        self.keys = keys

    async def Login(self, request, context):  # type: ignore[no-untyped-def]
        users = {"user_1": "1234", "user_2": "5678"}
        if request.tenant != "demo" or users.get(request.username) != request.password:
            raise errors.Unauthenticated("wrong tenant, user name or password", reason="BAD_CREDENTIALS")
        token = self.keys.token(tenant="demo", sub=request.username, ttl=3600)
        return identity_pb.LoginResponse(
            tokens=identity_pb.AuthTokens(access_token=token, refresh_token="r", token_type="Bearer"),
            user=identity_pb.User(id=request.username, username=request.username, tenant_id="demo"),
        )

    async def WhoAmI(self, request, context):  # type: ignore[no-untyped-def]
        p = principal()
        return identity_pb.WhoAmIResponse(user=identity_pb.User(id=p.user_id, tenant_id=p.tenant_id))

    async def GetJwks(self, request, context):  # type: ignore[no-untyped-def]
        jwk = self.keys.jwks()["keys"][0]
        return identity_pb.GetJwksResponse(
            keys=[identity_pb.JsonWebKey(kty=jwk["kty"], crv=jwk["crv"], x=jwk["x"], kid=jwk["kid"])]
        )


class FakeAgents(agents_grpc.AgentServiceServicer, Recorder):
    def __init__(self) -> None:
        Recorder.__init__(self)
        self.agents: dict[str, agents_pb.Agent] = {}
        self._ids = itertools.count(1)

    async def CreateAgent(self, request, context):  # type: ignore[no-untyped-def]
        self.record("CreateAgent", request, context)
        if not request.agent.display_name.strip():
            raise errors.InvalidArgument.field("agent.display_name", "is required")
        agent = agents_pb.Agent()
        agent.CopyFrom(request.agent)
        agent.id = f"agent-{next(self._ids)}"
        agent.state = agents_pb.AGENT_STATE_ACTIVE
        agent.version = 1
        agent.creator = principal().user_id
        self.agents[agent.id] = agent
        return agents_pb.CreateAgentResponse(agent=agent)

    def _get(self, agent_id: str, context: Any) -> agents_pb.Agent:
        if agent_id not in self.agents:
            raise errors.NotFound(f"agent {agent_id} not found")
        return self.agents[agent_id]

    async def GetAgent(self, request, context):  # type: ignore[no-untyped-def]
        self.record("GetAgent", request, context)
        if request.agent_id.startswith("err-"):
            await raise_for(request.agent_id, context)
        if request.agent_id == "slow":
            await asyncio.sleep(0.5)
        return agents_pb.GetAgentResponse(agent=self._get(request.agent_id, context))

    async def ListAgents(self, request, context):  # type: ignore[no-untyped-def]
        self.record("ListAgents", request, context)
        if request.page_size < 0:
            raise errors.InvalidArgument.field("page_size", "must not be negative")
        return agents_pb.ListAgentsResponse(agents=list(self.agents.values()), next_page_token="")

    async def UpdateAgent(self, request, context):  # type: ignore[no-untyped-def]
        self.record("UpdateAgent", request, context)
        agent = self._get(request.agent.id, context)
        for path in request.update_mask.paths:
            setattr(agent, path, getattr(request.agent, path))
        agent.version += 1
        return agents_pb.UpdateAgentResponse(agent=agent)

    async def DeleteAgent(self, request, context):  # type: ignore[no-untyped-def]
        self.record("DeleteAgent", request, context)
        self._get(request.agent_id, context)
        del self.agents[request.agent_id]
        return agents_pb.DeleteAgentResponse()

    async def ActivateAgent(self, request, context):  # type: ignore[no-untyped-def]
        self.record("ActivateAgent", request, context)
        agent = self._get(request.agent_id, context)
        agent.state = 1
        return agents_pb.ActivateAgentResponse(agent=agent)

    async def GetAgentVersion(self, request, context):  # type: ignore[no-untyped-def]
        self.record("GetAgentVersion", request, context)
        return agents_pb.GetAgentVersionResponse()

    async def CreateTemplate(self, request, context):  # type: ignore[no-untyped-def]
        self.record("CreateTemplate", request, context)
        return agents_pb.CreateTemplateResponse(template=request.template)

    async def WatchAgents(self, request, context):  # type: ignore[no-untyped-def]
        self.record("WatchAgents", request, context)
        for i in range(1, 4):
            yield agents_pb.WatchAgentsResponse(event=agents_pb.AgentEvent(agent_id=f"agent-{i}", version=i))
        if request.all_tenants:
            raise errors.PermissionDenied("service identities only")


class FakeConversation(conv_grpc.ConversationServiceServicer, Recorder):
    def __init__(self) -> None:
        Recorder.__init__(self)
        self.messages: dict[str, list[conv_pb.Message]] = {}

    def append(self, conversation_id: str, role: int, content: str) -> None:
        items = self.messages.setdefault(conversation_id, [])
        items.append(
            conv_pb.Message(
                id=f"m{len(items) + 1}",
                conversation_id=conversation_id,
                sequence=len(items) + 1,
                role=role,
                content=content,
            )
        )

    async def ListMessages(self, request, context):  # type: ignore[no-untyped-def]
        self.record("ListMessages", request, context)
        items = self.messages.get(request.conversation_id, [])
        return conv_pb.ListMessagesResponse(messages=items)


class FakeRun:
    """A run that goes on by itself; streams follow its events from any event id."""

    def __init__(self, run_id: str, session_id: str, answer: str, delay: float):
        self.id, self.session_id, self.answer, self.delay = run_id, session_id, answer, delay
        self.events: list[orch_pb.RunEvent] = []
        self.changed = asyncio.Condition()
        self.cancelled = False
        self.done = False

    async def _emit(self, type_: int, **fields: Any) -> None:
        event = orch_pb.RunEvent(
            event_id=len(self.events) + 1, run_id=self.id, session_id=self.session_id, type=type_, **fields
        )
        async with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    async def produce(self, on_done: Any) -> None:
        await self._emit(T.RUN_EVENT_TYPE_RUN_CREATED)
        await self._emit(T.RUN_EVENT_TYPE_RUN_STARTED)
        sent = ""
        for piece in self.answer.split(" "):
            if self.cancelled:
                break
            if self.delay:
                await asyncio.sleep(self.delay)
            delta = piece if not sent else " " + piece
            sent += delta
            await self._emit(T.RUN_EVENT_TYPE_MESSAGE_DELTA, text_delta=delta)
        await self._emit(T.RUN_EVENT_TYPE_MESSAGE_COMPLETED, final_message=sent)
        if self.cancelled:
            await self._emit(
                T.RUN_EVENT_TYPE_RUN_CANCELLED, error=orch_pb.RunError(code="CANCELLED", message="cancelled")
            )
        else:
            await self._emit(
                T.RUN_EVENT_TYPE_RUN_COMPLETED, usage=orch_pb.Usage(prompt_tokens=3, completion_tokens=4)
            )
        self.done = True
        on_done(sent)
        async with self.changed:
            self.changed.notify_all()

    async def follow(self, after: int):  # type: ignore[no-untyped-def]
        index = after
        while True:
            async with self.changed:
                await self.changed.wait_for(lambda i=index: len(self.events) > i or self.done)
                batch = self.events[index:]
            for event in batch:
                yield event
            index += len(batch)
            if self.done and index >= len(self.events):
                return


class FakeOrchestration(orch_grpc.OrchestrationServiceServicer, Recorder):
    def __init__(self, conversation: FakeConversation, *, delay: float = 0.0):
        Recorder.__init__(self)
        self.conversation = conversation
        self.delay = delay
        self.sessions: dict[str, orch_pb.Session] = {}
        self.runs: dict[str, FakeRun] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    async def StartSession(self, request, context):  # type: ignore[no-untyped-def]
        self.record("StartSession", request, context)
        n = next(self._ids)
        session = orch_pb.Session(
            id=f"session-{n}",
            agent_id=request.agent_id,
            conversation_id=f"conv-{n}",
            user_id=principal().user_id,
            state=1,
        )
        self.sessions[session.id] = session
        return orch_pb.StartSessionResponse(session=session)

    async def GetSession(self, request, context):  # type: ignore[no-untyped-def]
        if request.session_id not in self.sessions:
            raise errors.NotFound("no such session")
        return orch_pb.GetSessionResponse(session=self.sessions[request.session_id])

    def start_run(self, session_id: str, text: str) -> FakeRun:
        if session_id not in self.sessions:
            raise errors.NotFound("no such session")
        if not text.strip():
            raise errors.InvalidArgument.field("text", "must not be empty")
        if text == "flood":
            raise errors.ResourceExhausted("too many runs", retry_after=1.5)
        if any(r.session_id == session_id and not r.done for r in self.runs.values()):
            raise errors.FailedPrecondition(
                "the session already has a run in progress",
                [errors.Violation("session.active_run_id", "a run is in progress", "SESSION_BUSY")],
                reason="SESSION_BUSY",
            )
        session = self.sessions[session_id]
        run = FakeRun(f"run-{next(self._ids)}", session_id, f"echo: {text}", self.delay)
        self.runs[run.id] = run
        self.conversation.append(session.conversation_id, 2, text)
        task = asyncio.get_running_loop().create_task(
            run.produce(lambda answer: self.conversation.append(session.conversation_id, 3, answer))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run

    async def SendMessage(self, request, context):  # type: ignore[no-untyped-def]
        self.record("SendMessage", request, context)
        run = self.start_run(request.session_id, request.text)
        async for event in run.follow(0):
            yield orch_pb.SendMessageResponse(event=event)

    async def JoinRun(self, request, context):  # type: ignore[no-untyped-def]
        self.record("JoinRun", request, context)
        run = self.runs.get(request.run_id)
        if run is None:
            raise errors.NotFound("no such run")
        if request.after_event_id > len(run.events) and run.done:
            raise errors.InvalidArgument.field("after_event_id", "no such event")
        async for event in run.follow(request.after_event_id):
            yield orch_pb.JoinRunResponse(event=event)

    async def CancelRun(self, request, context):  # type: ignore[no-untyped-def]
        run = self.runs.get(request.run_id)
        if run is None:
            raise errors.NotFound("no such run")
        if run.done:
            raise errors.FailedPrecondition("run already finished")
        run.cancelled = True
        return orch_pb.CancelRunResponse(run=orch_pb.Run(id=run.id, state=5))

    async def Chat(self, request_iterator, context):  # type: ignore[no-untyped-def]
        self.record("Chat", None, context)
        out: asyncio.Queue[Any] = asyncio.Queue()
        followers: list[asyncio.Task[None]] = []

        async def forward(run: FakeRun, after: int) -> None:
            async for event in run.follow(after):
                await out.put(orch_pb.ChatResponse(run_event=event))

        async def consume() -> None:
            async for req in request_iterator:
                # A rejected action is answered in the stream, which stays open (as orchestration does).
                try:
                    kind = req.WhichOneof("action")
                    if kind == "message":
                        run = self.start_run(req.session_id, req.message.text)
                        followers.append(asyncio.get_running_loop().create_task(forward(run, 0)))
                    elif kind == "resume":
                        run = self.runs.get(req.resume.run_id)
                        if run is None:
                            raise errors.NotFound("no such run")
                        followers.append(
                            asyncio.get_running_loop().create_task(forward(run, req.resume.after_event_id))
                        )
                    elif kind == "cancel":
                        targets = (
                            [self.runs[req.cancel.run_id]]
                            if req.cancel.run_id in self.runs
                            else [r for r in self.runs.values() if not r.done]
                        )
                        for run in targets:
                            run.cancelled = True
                except errors.AgentmeshError as exc:
                    key = req.message.request_id if kind == "message" else req.resume.run_id
                    await out.put(orch_pb.ChatResponse(status=status_pb(exc), request_id=key))

        reader = asyncio.get_running_loop().create_task(consume())
        try:
            while True:
                yield await out.get()
        finally:
            reader.cancel()
            for task in followers:
                task.cancel()


@dataclasses.dataclass
class Fakes:
    identity: FakeIdentity
    agents: FakeAgents
    conversation: FakeConversation
    orchestration: FakeOrchestration

    @classmethod
    def create(cls, keys: Any, *, delay: float = 0.0) -> Fakes:
        conversation = FakeConversation()
        return cls(
            FakeIdentity(keys), FakeAgents(), conversation, FakeOrchestration(conversation, delay=delay)
        )

    def registrations(self) -> list[ServiceRegistration]:
        def reg(
            module: Any, grpc_module: Any, service: str, servicer: Any, public: frozenset[str] = frozenset()
        ):  # type: ignore[no-untyped-def]
            name = module.DESCRIPTOR.services_by_name[service].full_name
            add = getattr(grpc_module, f"add_{service}Servicer_to_server")
            return ServiceRegistration(
                name=name, add_to_server=lambda s: add(servicer, s), public_methods=public
            )

        identity_public = frozenset(
            f"/agentmesh.identity.v1.IdentityService/{m}" for m in ("Login", "GetJwks")
        )
        return [
            reg(identity_pb, identity_grpc, "IdentityService", self.identity, identity_public),
            reg(agents_pb, agents_grpc, "AgentService", self.agents),
            reg(conv_pb, conv_grpc, "ConversationService", self.conversation),
            reg(orch_pb, orch_grpc, "OrchestrationService", self.orchestration),
        ]
