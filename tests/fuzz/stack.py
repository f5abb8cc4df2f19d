"""The whole mesh in this process for the fuzz and security tests: identity, agents, conversation and
orchestration on one real gRPC server (orchestration's peers point at that same server) plus the
gateway on a real HTTP port, all running on an event loop in a background thread.

The tests drive it with synchronous clients (grpc's sync stubs, httpx, psycopg) from the main thread:
hypothesis then runs plain functions, and the stack lives for the whole session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import grpc
import psycopg

from agentmesh.agents.v1 import agents_service_pb2 as agents_pb
from agentmesh.agents.v1 import agents_service_pb2_grpc as agents_grpc
from agentmesh.conversation.v1 import conversation_service_pb2 as conv_pb
from agentmesh.conversation.v1 import conversation_service_pb2_grpc as conv_grpc
from agentmesh.identity.v1 import identity_service_pb2 as id_pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as id_grpc
from agentmesh.orchestration.v1 import orchestration_service_pb2 as orch_pb
from agentmesh.orchestration.v1 import orchestration_service_pb2_grpc as orch_grpc
from services.identity.keys import KeySet
from services.identity.operator import Operator, operator_principal
from services.identity.passwords import Passwords
from services.identity.redis_state import Revocations
from services.identity.store import IdentityStore
from services.identity.tokens import TokenIssuer
from services.platform.runtime import Runtime
from services.platform.server import Server, ServiceRegistration
from services.platform.settings import Settings
from services.registry import SERVICES, registration
from tests.helpers import bearer, free_port

PASSWORD = "fuzz-correct-horse-battery"


class LoopThread:
    """An asyncio loop running forever in a daemon thread; `run(coro)` waits for a result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-stack", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_rest() -> None:
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        self.run(cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclasses.dataclass
class Stack:
    settings: Settings
    address: str
    http_port: int
    registrations: list[ServiceRegistration]
    channel: grpc.Channel
    key_file: str
    db_url: str
    # The operator's use cases on the stack's database and Redis (what `agentmesh admin` runs).
    operator: Operator
    run: Callable[[Coroutine[Any, Any, Any]], Any]

    def set_tier(self, tenant_name: str, tier: str) -> None:
        self.run(self.operator.set_tier(operator_principal("fuzz"), name=tenant_name, tier=tier))

    @property
    def public_methods(self) -> frozenset[str]:
        return frozenset().union(*(r.public_methods for r in self.registrations))

    def stubs(self) -> Stubs:
        return Stubs(
            identity=id_grpc.IdentityServiceStub(self.channel),
            agents=agents_grpc.AgentServiceStub(self.channel),
            conversation=conv_grpc.ConversationServiceStub(self.channel),
            orchestration=orch_grpc.OrchestrationServiceStub(self.channel),
        )

    def expired_token(self, *, subject: str, tenant: str, roles: Iterable[str]) -> str:
        """A token identity's own key signed, one hour past its expiry."""
        return (
            self._issuer()
            .access_token(
                subject=subject, tenant=tenant, roles=roles, tier="free", issued_at=time.time() - 3600
            )
            .token
        )

    def operator_token(self) -> str:
        """What a token of the operator would be, were one ever minted (no RPC mints one): signed by
        identity's key, role operator, in no tenant."""
        return (
            self._issuer()
            .access_token(
                subject="operator:fuzz", tenant="", roles=["operator"], tier="", issued_at=time.time()
            )
            .token
        )

    def _issuer(self) -> TokenIssuer:
        auth = self.settings.auth
        return TokenIssuer(
            keys=KeySet.load(self.key_file),
            issuer=auth.issuer,
            audience=auth.audience,
            access_ttl=60,
            refresh_ttl=60,
        )


@dataclasses.dataclass
class Stubs:
    identity: id_grpc.IdentityServiceStub
    agents: agents_grpc.AgentServiceStub
    conversation: conv_grpc.ConversationServiceStub
    orchestration: orch_grpc.OrchestrationServiceStub


async def _start(settings: Settings, address: str) -> tuple[Runtime, Server, Any, list[ServiceRegistration]]:
    from gateway import create_app
    from gateway.server import HttpServer

    runtime = await Runtime.create(settings)
    registrations = [await registration(name, runtime) for name in SERVICES]
    server = Server(runtime, registrations, address=address)
    await server.start()
    http = HttpServer(create_app(settings), host="127.0.0.1", port=0)
    await http.start()
    return runtime, server, http, registrations


async def _stop(runtime: Runtime, server: Server, http: Any) -> None:
    await http.stop()
    await server.stop(0)
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if others:
        await asyncio.wait(others, timeout=0.5)
    await runtime.close()


class RunningStack:
    """Starts the stack; `close()` stops it and its loop."""

    def __init__(self, settings: Settings, key_file: str):
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        peers = dataclasses.replace(
            settings.peers,
            identity=self.address,
            agents=self.address,
            conversation=self.address,
            orchestration=self.address,
        )
        settings = dataclasses.replace(
            settings,
            peers=peers,
            # SignUp open (as embedded): the worlds are signed-up tenants.
            auth=dataclasses.replace(settings.auth, signing_key_file=key_file, signup_open=True),
        )
        self.thread = LoopThread()
        self.runtime, self.server, self.http, registrations = self.thread.run(_start(settings, self.address))
        self.stack = Stack(
            settings=settings,
            address=self.address,
            http_port=self.http.port,
            registrations=registrations,
            channel=grpc.insecure_channel(self.address),
            key_file=key_file,
            db_url=settings.database_url.replace("postgresql+psycopg://", "postgresql://", 1),
            operator=Operator(
                store=IdentityStore(self.runtime.engine),
                passwords=Passwords(),
                revocations=Revocations(
                    self.runtime.redis, access_ttl=settings.auth.access_token_ttl_seconds
                ),
                clock=time.time,
            ),
            run=self.thread.run,
        )

    def close(self) -> None:
        self.stack.channel.close()
        self.thread.run(_stop(self.runtime, self.server, self.http))
        self.thread.close()


# -- a tenant with one of each resource ------------------------------------------------------------


@dataclasses.dataclass
class Account:
    user_id: str
    username: str
    access: str
    refresh: str


@dataclasses.dataclass
class World:
    """A signed-up tenant (tier raised to enterprise) with a member and one of each resource; every
    text it stores carries `marker`, so a leak of its data shows in any response."""

    stack: Stack
    tenant_id: str
    tenant_name: str
    owner: Account
    member: Account
    marker: str
    ids: dict[str, str]

    def refreshed(self, account: Account) -> str:
        """A fresh access token for `account` (rotating its refresh token): a call under test may
        have logged the previous one out."""
        reply = self.stack.stubs().identity.RefreshToken(
            id_pb.RefreshTokenRequest(refresh_token=account.refresh), timeout=10
        )
        account.access, account.refresh = reply.tokens.access_token, reply.tokens.refresh_token
        return account.access

    def login(self, username: str) -> Account:
        reply = self.stack.stubs().identity.Login(
            id_pb.LoginRequest(tenant=self.tenant_name, username=username, password=PASSWORD), timeout=10
        )
        return Account(reply.user.id, username, reply.tokens.access_token, reply.tokens.refresh_token)


def make_world(stack: Stack, label: str) -> World:
    s = stack.stubs()
    marker = f"secret-{label}-{uuid.uuid4().hex[:8]}"
    name = f"{label}-{uuid.uuid4().hex[:10]}"
    up = s.identity.SignUp(
        id_pb.SignUpRequest(tenant_name=name, username="owner", password=PASSWORD, display_name=marker),
        timeout=10,
    )
    owner_md = bearer(up.tokens.access_token)
    stack.set_tier(name, "enterprise")
    member = s.identity.CreateUser(
        id_pb.CreateUserRequest(
            username="member", password=PASSWORD, display_name=marker, roles=[id_pb.ROLE_MEMBER]
        ),
        metadata=owner_md,
        timeout=10,
    ).user
    world = World(stack, up.tenant.id, name, None, None, marker, {})  # type: ignore[arg-type]
    # Logged in again: the tier raise shows in tokens issued after it.
    world.owner = world.login("owner")
    world.member = world.login("member")
    owner_md = bearer(world.owner.access)
    config = agents_pb.AgentConfig(model="echo:default", system_prompt=marker)
    agent = s.agents.CreateAgent(
        agents_pb.CreateAgentRequest(agent=agents_pb.Agent(display_name=marker, config=config)),
        metadata=owner_md,
        timeout=10,
    ).agent
    template = s.agents.CreateTemplate(
        agents_pb.CreateTemplateRequest(template=agents_pb.Template(display_name=marker, config=config)),
        metadata=owner_md,
        timeout=10,
    ).template
    session = s.orchestration.StartSession(
        orch_pb.StartSessionRequest(agent_id=agent.id, title=marker), metadata=owner_md, timeout=10
    ).session
    events = [
        r.event
        for r in s.orchestration.SendMessage(
            orch_pb.SendMessageRequest(session_id=session.id, text=marker), metadata=owner_md, timeout=20
        )
    ]
    conversation = s.conversation.CreateConversation(
        conv_pb.CreateConversationRequest(agent_id=agent.id, title=marker), metadata=owner_md, timeout=10
    ).conversation
    message = s.conversation.AppendMessage(
        conv_pb.AppendMessageRequest(
            conversation_id=conversation.id,
            message=conv_pb.Message(role=conv_pb.MESSAGE_ROLE_USER, content=marker),
        ),
        metadata=owner_md,
        timeout=10,
    ).message
    world.ids = {
        "agent": agent.id,
        "template": template.id,
        "session": session.id,
        "session_conversation": session.conversation_id,
        "conversation": conversation.id,
        "message": message.id,
        "run": events[0].run_id,
        "user": member.id,
    }
    return world


# -- the database, for "nothing stored changed" ------------------------------------------------------


class Snapshots:
    """One digest per table of the test database (alembic's version tables aside), computed by
    PostgreSQL, so a before/after comparison costs one query each."""

    def __init__(self, db_url: str):
        self.conn = psycopg.connect(db_url, autocommit=True)
        tables = [
            row[0]
            for row in self.conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                "AND table_type = 'BASE TABLE' AND table_name NOT LIKE 'alembic_version%' ORDER BY 1"
            )
        ]
        assert {"agents", "conversations", "messages", "identity_users", "runs", "sessions"} <= set(tables)
        self.tables = tables
        self.query = " UNION ALL ".join(
            f"SELECT '{t}', count(*), md5(coalesce(string_agg(x, '|' ORDER BY x), '')) "
            f'FROM (SELECT row_to_json(r)::text AS x FROM "{t}" r) s'
            for t in tables
        )

    def take(self) -> dict[str, tuple[int, str]]:
        return {name: (count, digest) for name, count, digest in self.conn.execute(self.query)}

    def settle(self, timeout: float = 5.0) -> None:
        """Waits until no run is queued or running: a run started by an earlier call keeps writing
        (its answer, its final state) after that call returned."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            (busy,) = self.conn.execute("SELECT count(*) FROM runs WHERE state IN (1, 2)").fetchone()  # type: ignore[misc]
            if not busy:
                return
            time.sleep(0.02)

    def close(self) -> None:
        self.conn.close()


def changed(before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]) -> list[str]:
    return sorted(t for t in before if before[t] != after.get(t))
