"""The services a process can run, by the name `agentmesh serve` takes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from services import agents, conversation, identity, orchestration
from services.platform.runtime import Runtime
from services.platform.server import Built, ServiceRegistration

# A service's build(runtime) returns Built; the ServiceRegistration arm is for the services not yet
# moved to that shape (agentmesh issue 13), and leaves with the last of them.
SERVICES: dict[str, Callable[[Runtime], Awaitable[Built[Any] | ServiceRegistration]]] = {
    "identity": identity.build,
    "agents": agents.build,
    "conversation": conversation.build,
    "orchestration": orchestration.build,
}


async def registration(name: str, runtime: Runtime) -> ServiceRegistration:
    """What a server needs to serve the service called `name`, built on `runtime`."""
    built = await SERVICES[name](runtime)
    return built if isinstance(built, ServiceRegistration) else built.registration
