"""The agentmesh side's client process of bench/chat_load.py: `python -m bench.chat_client`, an asyncio
grpc.aio client in a process of its own, so the clients' CPU is not the server's.

One JSON line each way on stdin/stdout, as bench/langgraph_app/client.py on the LangGraph side:
the spec in ({"address", "groups": [{"token", "agent_id", "chats"}], "text", "timeout", "warmup"});
it starts one session per chat (a channel, so a connection, per group: a tenant's users), runs one
warm-up chat when asked, and answers {"ready": true}; on the line "go" it sends every chat's message
at once and answers {"chats": [{"ttfd", "arrivals": [[seconds, tokens], ...], "error"}],
"cpu_seconds"}, times counted from each chat's own SendMessage.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import grpc

from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from agentmesh.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc

_TERMINAL = {pb.RUN_EVENT_TYPE_RUN_COMPLETED, pb.RUN_EVENT_TYPE_RUN_FAILED, pb.RUN_EVENT_TYPE_RUN_CANCELLED}
# Session set-up is not measured; a bound keeps it from queueing hundreds of calls at once.
_SETUP_CONCURRENCY = 16


async def chat(
    stub: pb_grpc.OrchestrationServiceStub,
    metadata: tuple[tuple[str, str], ...],
    session_id: str,
    text: str,
    deadline: float,
) -> dict[str, Any]:
    """One SendMessage read to its end: when each delta arrived and how many word tokens it held,
    and why the chat failed (a status, a failed or cancelled run, a stream without an end)."""
    arrivals: list[list[float]] = []
    error = None
    terminal = None
    start = time.perf_counter()
    try:
        async for reply in stub.SendMessage(
            pb.SendMessageRequest(session_id=session_id, text=text), metadata=metadata, timeout=deadline
        ):
            event = reply.event
            if event.type == pb.RUN_EVENT_TYPE_MESSAGE_DELTA and event.text_delta:
                arrivals.append([time.perf_counter() - start, len(event.text_delta.split())])
            elif event.type in _TERMINAL:
                terminal = event
        if terminal is None:
            error = "stream ended without a terminal event"
        elif terminal.type != pb.RUN_EVENT_TYPE_RUN_COMPLETED:
            error = f"{pb.RunEventType.Name(terminal.type)} {terminal.error.code}"
    except grpc.aio.AioRpcError as err:
        error = f"{err.code().name}: {(err.details() or '')[:60]}"
    return {"ttfd": arrivals[0][0] if arrivals else None, "arrivals": arrivals, "error": error}


async def main() -> None:
    loop = asyncio.get_running_loop()
    spec = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    # A local subchannel pool per channel: each group gets its own connection, as separate users'
    # clients would, instead of grpc sharing one between channels of the same target.
    channels = [
        grpc.aio.insecure_channel(spec["address"], options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in spec["groups"]
    ]
    gate = asyncio.Semaphore(_SETUP_CONCURRENCY)

    async def session(stub: pb_grpc.OrchestrationServiceStub, md: Any, agent_id: str) -> str:
        async with gate:
            reply = await stub.StartSession(
                pb.StartSessionRequest(agent_id=agent_id), metadata=md, timeout=60
            )
            return reply.session.id

    try:
        targets = []
        for group, channel in zip(spec["groups"], channels, strict=True):
            stub = pb_grpc.OrchestrationServiceStub(channel)
            md = (("authorization", f"Bearer {group['token']}"),)
            ids = await asyncio.gather(*(session(stub, md, group["agent_id"]) for _ in range(group["chats"])))
            targets += [(stub, md, session_id) for session_id in ids]
        if spec["warmup"]:
            stub, md, _ = targets[0]
            warm = await chat(
                stub, md, await session(stub, md, spec["groups"][0]["agent_id"]), spec["text"], 60
            )
            if warm["error"]:
                print(f"warm-up chat failed: {warm['error']}", file=sys.stderr)
        print(json.dumps({"ready": True}), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        cpu = time.process_time()
        chats = await asyncio.gather(
            *(chat(s, md, sid, spec["text"], spec["timeout"]) for s, md, sid in targets)
        )
        print(json.dumps({"chats": chats, "cpu_seconds": time.process_time() - cpu}), flush=True)
    finally:
        for channel in channels:
            await channel.close()


if __name__ == "__main__":
    asyncio.run(main())
