"""Helpers for the agents tests: a stub per caller and the status details of a failed call."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import grpc
import pytest

from agentmesh.agents.v1 import agents_service_pb2 as pb
from agentmesh.agents.v1 import agents_service_pb2_grpc as pb_grpc
from tests.helpers import bearer


@dataclasses.dataclass
class Caller:
    """A stub bound to one token: `await caller.GetAgent(req)` forwards the caller's metadata."""

    stub: pb_grpc.AgentServiceStub
    metadata: tuple[tuple[str, str], ...]
    tenant: str

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.stub, name)
        if name == "WatchAgents":
            return lambda request: method(request, metadata=self.metadata)
        return lambda request, **kw: method(request, metadata=self.metadata, **kw)


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_caller(keys):
    def make(channel: grpc.aio.Channel, *, tenant: str, roles=("owner",), tier="pro", sub="user-a") -> Caller:
        token = keys.token(tenant=tenant, sub=sub, roles=tuple(roles), tier=tier)
        return Caller(pb_grpc.AgentServiceStub(channel), bearer(token), tenant)

    return make


def agent(name: str = "Helper", **config: Any) -> pb.Agent:
    config.setdefault("model", "echo:default")
    return pb.Agent(display_name=name, config=pb.AgentConfig(**config))
