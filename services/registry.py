"""The services a process can run, by the name `agentmesh serve` takes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from services import agents, conversation, identity, orchestration
from services.platform.runtime import Runtime
from services.platform.server import ServiceRegistration

SERVICES: dict[str, Callable[[Runtime], Awaitable[ServiceRegistration]]] = {
    "identity": identity.register,
    "agents": agents.register,
    "conversation": conversation.register,
    "orchestration": orchestration.register,
}
