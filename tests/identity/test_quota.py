"""WhoAmI's quota (issue 16) over gRPC: identity asks conversation, which owns usage, through its
peer channel (real identity and conversation servers on PostgreSQL). The tier's quota and what is
left, a tenant's own quota used up, and conversation down or hanging: WhoAmI still answers, the
quota UNKNOWN."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agentmesh.conversation.v1 import conversation_service_pb2 as cpb
from agentmesh.conversation.v1 import conversation_service_pb2_grpc as cpb_grpc
from agentmesh.identity.v1 import identity_service_pb2 as pb
from services import conversation
from services.conversation.models import QuotaLimit
from services.identity.operator import operator_principal
from services.platform.settings import Settings
from tests.helpers import build_runtime, free_port, start_server
from tests.identity.conftest import Account, Identity


def _next_month() -> int:
    now = datetime.datetime.now(datetime.UTC)
    start = (now.replace(day=1) + datetime.timedelta(days=32)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    return int(start.timestamp())


@pytest.fixture
async def mesh(settings: Settings) -> AsyncIterator[Callable[..., Any]]:
    """`identity, conversation_service, channel = await mesh(conversation_addr=None)`: identity (and,
    by default, conversation) on one real server; identity's conversation peer is that server, or
    `conversation_addr` when given."""
    started: list[Any] = []

    async def make(conversation_addr: str | None = None) -> tuple[Identity, Any, Any]:
        address = f"127.0.0.1:{free_port()}"
        peers = dataclasses.replace(
            settings.peers, identity=address, conversation=conversation_addr or address
        )
        runtime = await build_runtime(dataclasses.replace(settings, peers=peers))
        built = await conversation.build(runtime)
        services: list[Any] = ["identity"] if conversation_addr else ["identity", built.registration]
        running = await start_server(runtime, *services, address=address)
        started.append((running, runtime))
        return Identity(running.channel, running.address), built.service, running.channel

    yield make
    for running, runtime in reversed(started):
        await running.close()
        await runtime.close()


async def _who(identity: Identity, account: Account) -> pb.WhoAmIResponse:
    reply: pb.WhoAmIResponse = await identity.stub.WhoAmI(pb.WhoAmIRequest(), metadata=account.md, timeout=10)
    return reply


async def test_whoami_shows_the_tiers_quota_and_what_remains(mesh):
    identity, _, _ = await mesh()
    owner = await identity.sign_up()
    quota = (await _who(identity, owner)).quota
    assert quota.status == pb.QUOTA_STATUS_AVAILABLE
    assert (quota.limit_tokens, quota.used_tokens, quota.remaining_tokens) == (200_000, 0, 200_000)  # free
    assert quota.reset_time.seconds == _next_month()


async def test_whoami_follows_the_usage_conversation_records_and_a_quota_used_up(mesh):
    identity, conversations, channel = await mesh()
    owner = await identity.sign_up()
    member = await identity.add_user(owner, "member", pb.ROLE_MEMBER)
    await conversations.set_quota(operator_principal("test"), owner.tenant.id, QuotaLimit(tokens=1_000))
    stub = cpb_grpc.ConversationServiceStub(channel)
    conv = (
        await stub.CreateConversation(cpb.CreateConversationRequest(agent_id="a"), metadata=member.md)
    ).conversation

    async def spend(prompt: int, completion: int) -> None:
        usage = cpb.MessageUsage(prompt_tokens=prompt, completion_tokens=completion, model="echo:test")
        message = cpb.Message(role=cpb.MESSAGE_ROLE_ASSISTANT, content="an answer", usage=usage)
        await stub.AppendMessage(
            cpb.AppendMessageRequest(conversation_id=conv.id, message=message), metadata=member.md
        )

    await spend(600, 300)
    # The quota is the tenant's: the owner sees the member's spending too.
    for who in (owner, member):
        quota = (await _who(identity, who)).quota
        assert quota.status == pb.QUOTA_STATUS_AVAILABLE
        assert (quota.limit_tokens, quota.used_tokens, quota.remaining_tokens) == (1_000, 900, 100)
    await spend(50, 50)
    quota = (await _who(identity, owner)).quota
    assert quota.status == pb.QUOTA_STATUS_EXHAUSTED
    assert (quota.used_tokens, quota.remaining_tokens) == (1_000, 0)
    assert quota.reset_time.seconds == _next_month()


async def test_whoami_answers_with_the_quota_unknown_when_conversation_is_down(mesh):
    identity, _, _ = await mesh(conversation_addr=f"127.0.0.1:{free_port()}")  # nothing listens there
    owner = await identity.sign_up()
    me = await _who(identity, owner)
    assert me.user.id == owner.user.id and me.tier == pb.TIER_FREE
    assert me.quota.status == pb.QUOTA_STATUS_UNKNOWN
    assert (me.quota.limit_tokens, me.quota.used_tokens, me.quota.HasField("reset_time")) == (0, 0, False)


async def test_whoami_answers_with_the_quota_unknown_when_conversation_hangs(mesh):
    held: list[asyncio.StreamWriter] = []

    async def accept_and_hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # a peer that takes the connection and never says a word

    hole = await asyncio.start_server(accept_and_hold, "127.0.0.1", 0)
    try:
        port = hole.sockets[0].getsockname()[1]
        identity, _, _ = await mesh(conversation_addr=f"127.0.0.1:{port}")
        owner = await identity.sign_up()
        # The quota call is bounded (2 s, or less when the caller has less): WhoAmI answers well
        # inside the 10 s its caller gives it.
        me = await _who(identity, owner)
        assert me.quota.status == pb.QUOTA_STATUS_UNKNOWN and me.user.id == owner.user.id
    finally:
        for writer in held:
            writer.close()
        hole.close()
        await hole.wait_closed()
