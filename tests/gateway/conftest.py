"""Gateway fixtures: fake upstream services on a real gRPC server, the app in-process (httpx
ASGITransport) and, for WebSockets and the browser, on a real uvicorn port."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from gateway import create_app
from gateway.server import HttpServer
from gateway.websocket import Limits
from tests.gateway.fakes import Fakes


@pytest.fixture
def fakes(keys: Any) -> Fakes:
    return Fakes.create(keys)


@pytest.fixture
async def upstream(serve: Callable[..., Any], fakes: Fakes) -> Any:
    return await serve(*fakes.registrations())


@pytest.fixture
def make_app(settings: Any, upstream: Any) -> Callable[..., Any]:
    def make(*, limits: Limits | None = None, tracer_provider: Any = None, **gateway: Any) -> Any:
        s = settings
        if gateway:
            s = dataclasses.replace(settings, gateway=dataclasses.replace(settings.gateway, **gateway))
        return create_app(s, channels={"*": upstream.channel}, limits=limits, tracer_provider=tracer_provider)

    return make


@pytest.fixture
async def client(make_app: Callable[..., Any]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=make_app()), base_url="http://gw") as c:
        yield c


@pytest.fixture
def token(keys: Any) -> str:
    return keys.token(tenant="demo", sub="user_1")


@pytest.fixture
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def live(make_app: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:
    """`port = await live(limits=...)`: the gateway on a real uvicorn port in this loop."""
    servers: list[HttpServer] = []

    async def start(**kw: Any) -> int:
        server = HttpServer(make_app(**kw), host="127.0.0.1", port=0)
        servers.append(server)
        return await server.start()

    yield start
    for server in servers:
        await server.stop()
