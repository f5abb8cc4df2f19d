"""The LangGraph side's client process of bench/chat_load.py (run by the LangGraph virtualenv's
Python, so it imports langgraph_sdk and the standard library only, never agentmesh).

Protocol on stdin/stdout, one JSON line each, the same as `python -m bench.chat_client`: the spec
({"url", "chats", "text", "timeout", "warmup"}) in; it creates one thread per chat, runs one warm-up
chat when asked, and answers {"ready": true}; on the line "go" it streams every chat at once
(runs.stream, stream_mode messages-tuple) and answers {"chats": [{"ttfd", "arrivals": [[seconds,
tokens], ...], "error"}], "cpu_seconds"}, times counted from each chat's own request.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import httpx
from langgraph_sdk.client import LangGraphClient


def _client(url: str, timeout: float) -> LangGraphClient:
    # get_client's httpx pool holds 100 connections and gives up on a wait of 5 s: with hundreds of
    # concurrent SSE streams the client, not the server, would fail them. No limit here, as a
    # browser per user would have.
    return LangGraphClient(
        httpx.AsyncClient(
            base_url=url,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
            timeout=httpx.Timeout(timeout, pool=None),
        )
    )


async def _chat(client: LangGraphClient, thread_id: str, text: str, deadline: float) -> dict[str, Any]:
    arrivals: list[list[float]] = []
    error = None
    start = time.perf_counter()
    try:
        async with asyncio.timeout(deadline):
            async for part in client.runs.stream(
                thread_id,
                "chat",
                input={"messages": [{"role": "human", "content": text}]},
                stream_mode="messages-tuple",
            ):
                if part.event == "error":
                    error = f"error event: {json.dumps(part.data)[:200]}"
                    break
                if part.event != "messages":
                    continue
                chunk = part.data[0]
                content = chunk.get("content") if isinstance(chunk, dict) else None
                if chunk.get("type") in ("AIMessageChunk", "ai") and isinstance(content, str) and content:
                    arrivals.append([time.perf_counter() - start, len(content.split())])
    except TimeoutError:
        error = "client deadline"
    except Exception as exc:
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
    return {"ttfd": arrivals[0][0] if arrivals else None, "arrivals": arrivals, "error": error}


async def main() -> None:
    loop = asyncio.get_running_loop()
    spec = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    client = _client(spec["url"], spec["timeout"])
    try:
        threads = [(await client.threads.create())["thread_id"] for _ in range(spec["chats"])]
        if spec["warmup"]:
            warm = await _chat(client, (await client.threads.create())["thread_id"], spec["text"], 60)
            if warm["error"]:
                print(f"warm-up chat failed: {warm['error']}", file=sys.stderr)
        print(json.dumps({"ready": True}), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        cpu = time.process_time()
        chats = await asyncio.gather(*(_chat(client, t, spec["text"], spec["timeout"]) for t in threads))
        print(json.dumps({"chats": chats, "cpu_seconds": time.process_time() - cpu}), flush=True)
    finally:
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
