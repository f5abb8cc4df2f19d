"""The floor of bench/chat_load.py (its "floor" side): a bare grpc.aio server, in a process of its own,
with the generated OrchestrationService stubs and a servicer that does nothing but what a paced chat
cannot do without. StartSession hands out an id; SendMessage paces the echo provider's tokens --delay-ms
apart as echo does ("Echo: " and the message, one word per token) and yields each as its own
MESSAGE_DELTA, then RUN_COMPLETED. No storage, no Redis, no auth, no interceptors, no coalescing.

What agentmesh does beyond this (admission, the event hub, stored answers, peer calls) is its cost
over the floor; the floor is what Python grpc.aio on this machine does at N paced streams.

    python -m bench.chat_floor --port P [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from agentmesh.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
from services.orchestration.providers.echo import paced, tokens_of


class FloorServicer(pb_grpc.OrchestrationServiceServicer):
    def __init__(self, delay_seconds: float):
        self._delay = delay_seconds
        self._ids = itertools.count(1)

    async def StartSession(self, request: pb.StartSessionRequest, context: Any) -> pb.StartSessionResponse:
        return pb.StartSessionResponse(session=pb.Session(id=f"floor-{next(self._ids)}"))

    async def SendMessage(
        self, request: pb.SendMessageRequest, context: Any
    ) -> AsyncIterator[pb.SendMessageResponse]:
        async for token in paced(tokens_of(f"Echo: {request.text}"), self._delay):
            yield pb.SendMessageResponse(
                event=pb.RunEvent(type=pb.RUN_EVENT_TYPE_MESSAGE_DELTA, text_delta=token)
            )
        yield pb.SendMessageResponse(event=pb.RunEvent(type=pb.RUN_EVENT_TYPE_RUN_COMPLETED))


class _Health(health_pb2_grpc.HealthServicer):
    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def serve(port: int, delay_seconds: float) -> None:
    server = grpc.aio.server()
    # Only the two calls the bench makes; the others answer UNIMPLEMENTED.
    servicer = FloorServicer(delay_seconds)  # type: ignore[abstract]
    pb_grpc.add_OrchestrationServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(_Health(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chat_floor", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
