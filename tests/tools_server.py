"""A local HTTP tool server for the suite: starlette on a real uvicorn port, in the test's loop.

Every route first checks the call's signature with `verify_signature` (401 when it fails: that is
how a test shows a wrong secret is refused) and records the call. Routes:
  /echo      200, {"echo": <arguments>}
  /slow      answers only when the server stops (past any timeout a test sets)
  /fail      500 with a JSON error
  /text      200, text/plain (not JSON)
  /huge      200, a JSON body of `huge_bytes` with its Content-Length
  /endless   200, chunks without end and without a length (only a streaming cap stops it)
  /redirect  302 to this server's /echo on 127.0.0.1
`ToolServer(secret, certfile=..., keyfile=...)` serves HTTPS instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from services.orchestration.tools.http import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature


@dataclasses.dataclass(frozen=True)
class RecordedCall:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    verified: bool


class ToolServer:
    def __init__(
        self,
        secret: bytes,
        *,
        huge_bytes: int = 200_000,
        certfile: str | None = None,
        keyfile: str | None = None,
    ):
        self.secret = secret
        self.huge_bytes = huge_bytes
        self.calls: list[RecordedCall] = []
        self.port = 0
        self._scheme = "https" if certfile else "http"
        self._release = asyncio.Event()
        app = Starlette(
            routes=[
                Route(f"/{name}", getattr(self, f"_{name}"), methods=["POST"])
                for name in ("echo", "slow", "fail", "text", "huge", "endless", "redirect")
            ]
        )
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=0,
                log_level="warning",
                access_log=False,
                lifespan="off",
                ssl_certfile=certfile,
                ssl_keyfile=keyfile,
            )
        )
        self._task: asyncio.Task[None] | None = None

    def url(self, route: str, host: str = "127.0.0.1") -> str:
        return f"{self._scheme}://{host}:{self.port}/{route}"

    async def start(self) -> ToolServer:
        self._task = asyncio.get_running_loop().create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the tool server did not start")
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._release.set()
        self._server.should_exit = True
        if self._task is not None:
            await self._task

    async def _check(self, request: Request) -> Response | None:
        """None when the signature holds (the call is recorded either way), else the 401."""
        raw = await request.body()
        verified = verify_signature(
            self.secret,
            request.headers.get(TIMESTAMP_HEADER, ""),
            raw,
            request.headers.get(SIGNATURE_HEADER, ""),
            now=time.time(),
        )
        self.calls.append(RecordedCall(request.url.path, json.loads(raw), dict(request.headers), verified))
        return None if verified else JSONResponse({"error": "bad signature"}, status_code=401)

    async def _echo(self, request: Request) -> Response:
        refused = await self._check(request)
        return refused or JSONResponse({"echo": self.calls[-1].body["arguments"]})

    async def _slow(self, request: Request) -> Response:
        refused = await self._check(request)
        await self._release.wait()
        return refused or JSONResponse({"late": True})

    async def _fail(self, request: Request) -> Response:
        return await self._check(request) or JSONResponse({"error": "boom"}, status_code=500)

    async def _text(self, request: Request) -> Response:
        return await self._check(request) or PlainTextResponse("sunny, 21 degrees")

    async def _huge(self, request: Request) -> Response:
        return await self._check(request) or JSONResponse({"blob": "x" * self.huge_bytes})

    async def _endless(self, request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"blob": "'
            while not self._release.is_set():
                yield b"x" * 8192
                await asyncio.sleep(0)

        return await self._check(request) or StreamingResponse(chunks(), media_type="application/json")

    async def _redirect(self, request: Request) -> Response:
        return await self._check(request) or RedirectResponse(self.url("echo"), status_code=302)
