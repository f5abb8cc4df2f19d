"""The Starlette application: the transcoding endpoint, health, OpenAPI, the route table, the
WebSocket and the chat page, behind CORS, security headers and a body size limit."""

from __future__ import annotations

import contextlib
import logging
import pathlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import grpc
import redis.asyncio as aioredis
from google.protobuf import message as proto_message
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2
from opentelemetry.trace import TracerProvider
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import csv_export, errors, openapi, routes, streaming
from gateway.connection_slots import ConnectionSlots
from gateway.transcode import build_request, to_json
from gateway.upstream import Tracing, Upstreams, metadata_for, parse_timeout, request_id_of
from gateway.websocket import ChatSocket, Limits
from services.platform.redis_client import create_redis
from services.platform.settings import Settings
from services.platform.tiers import TIERS

log = logging.getLogger("agentmesh.gateway")
STATIC = pathlib.Path(__file__).parent / "static"
# 'unsafe-inline' is not needed: the page has no inline script or style.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


# Called by its path: the grpc_health stubs' HealthStub declares no methods.
HEALTH_CHECK = "/grpc.health.v1.Health/Check"

VERBS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
# What a browser may send cross-origin: the forwarded headers and the ones the gateway reads itself.
CORS_HEADERS = [
    "authorization",
    "content-type",
    "x-request-id",
    "grpc-timeout",
    "last-event-id",
    "traceparent",
    "tracestate",
]


class TooLarge(Exception):
    pass


def error_response(status: Any, request_id: str = "") -> JSONResponse:
    headers = errors.headers_of(status)
    if request_id:
        headers["X-Request-Id"] = request_id
    return JSONResponse(errors.body_of(status), status_code=errors.http_status(status), headers=headers)


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", CSP.encode()),
]


def _vary_origin(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` with Origin added to Vary, in one Vary header, as CORSMiddleware answers a request
    without an Origin (a cache must not give this answer to a cross-origin request)."""
    vary = [value for name, value in headers if name.lower() == b"vary"]
    if not vary:
        return [*headers, (b"vary", b"Origin")]
    rest = [(name, value) for name, value in headers if name.lower() != b"vary"]
    return [*rest, (b"vary", b", ".join([*vary, b"Origin"]))]


class Edge:
    """What every HTTP request passes: the security headers on its response, CORS (Starlette's for
    a request with an Origin), then the transcoding endpoint straight away: through Starlette's
    exception middleware and router, a request for it was first tried against every fixed route.
    Fixed paths, and methods the catch-all route does not take, go on to `app` as before."""

    def __init__(
        self, app: ASGIApp, *, gateway: ASGIApp, fixed: list[BaseRoute], cors_origins: Sequence[str]
    ):
        self.app = app
        self.gateway = gateway
        self.methods = frozenset([*VERBS, "HEAD"])
        self.fixed_paths = frozenset(r.path for r in fixed if isinstance(r, Route))
        self.fixed_prefixes = tuple(r.path + "/" for r in fixed if isinstance(r, Mount))
        self.cors = CORSMiddleware(
            self._dispatch,
            allow_origins=list(cors_origins),
            allow_methods=VERBS,
            allow_headers=CORS_HEADERS,
            expose_headers=["x-request-id", "retry-after"],
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cross_origin = any(name == b"origin" for name, _ in scope["headers"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), *SECURITY_HEADERS]
                message = {**message, "headers": headers if cross_origin else _vary_origin(headers)}
            await send(message)

        if cross_origin:
            await self.cors(scope, receive, send_with_headers)
        else:
            # Without an Origin, CORSMiddleware only adds Origin to Vary, and cost 12 of the 40 us
            # the app spent per request over a bare ASGI hop (measured in-process, no sockets).
            await self._dispatch(scope, receive, send_with_headers)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if (
            scope["method"] in self.methods
            and path not in self.fixed_paths
            and not path.startswith(self.fixed_prefixes)
        ):
            await self.gateway(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class Gateway:
    """The state behind the endpoints; built by `create_app`."""

    def __init__(
        self,
        settings: Settings,
        *,
        upstreams: Upstreams,
        route_list: list[routes.Route],
        tracing: Tracing,
        limits: Limits,
        slots: ConnectionSlots,
    ):
        self.settings = settings
        self.upstreams = upstreams
        self.routes = route_list
        self.router = routes.Router(list(route_list))
        self.tracing = tracing
        self.limits = limits
        self.chat = ChatSocket(upstreams=upstreams, limits=limits, tracing=tracing, slots=slots)
        self._openapi: dict[str, Any] | None = None

    async def read_body(self, receive: Receive, headers: Mapping[str, str]) -> bytes:
        limit = self.settings.gateway.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise TooLarge()
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise TooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The transcoding endpoint as a bare ASGI app: Starlette's per-request endpoint wrappers
        cost about as much as the transcoding itself (bench/gateway.py)."""
        response = await self.transcode(scope, receive)
        await response(scope, receive, send)

    async def transcode(self, scope: Scope, receive: Receive) -> Response:
        headers = _headers_of(scope)
        request_id = request_id_of(headers)
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        path = scope["path"]
        route, params, allowed = self.router.match(method, path)
        if route is None:
            if allowed:
                status = errors.simple_status(
                    code_pb2.UNIMPLEMENTED, f"method {scope['method']} not allowed on {path}"
                )
                response = error_response(status, request_id)
                response.status_code = 405
                response.headers["Allow"] = ", ".join(allowed)
                return response
            status = errors.simple_status(code_pb2.NOT_FOUND, f"no route for {path}")
            return error_response(status, request_id)
        try:
            body = await self.read_body(receive, headers)
            raw_query = scope["query_string"]
            query = QueryParams(raw_query).multi_items() if raw_query else []
            message = build_request(route, params, query, body)
            stream = route.server_streaming
            default = None if stream else self.settings.gateway.default_timeout_seconds
            timeout = parse_timeout(headers.get("grpc-timeout"), default)
            if stream:
                _apply_last_event_id(message, headers.get("last-event-id"))
        except TooLarge:
            status = errors.simple_status(code_pb2.OUT_OF_RANGE, "request body too large")
            response = error_response(status, request_id)
            response.status_code = 413
            return response
        except errors.BadInput as exc:
            return error_response(exc.status(), request_id)
        except ClientDisconnect:
            return Response(status_code=499)
        span, trace_md = self.tracing.start(f"{route.http_method} {route.template.text}", headers)
        metadata = metadata_for(headers, request_id, trace_md)
        reply_headers = {"X-Request-Id": request_id}
        try:
            if not route.server_streaming:
                reply = await self.upstreams.unary(route)(message, metadata=metadata, timeout=timeout)
                if csv_export.applies(route):
                    reply_headers["Vary"] = "Accept"
                    if csv_export.wanted(headers.get("accept", "")):
                        return csv_export.response(message, reply, headers=reply_headers)
                return JSONResponse(to_json(reply, route.response_body), headers=reply_headers)
            call = self.upstreams.server_stream(route)(message, metadata=metadata, timeout=timeout)
            sse = streaming.wants_sse(headers.get("accept", ""))
            first = await call.read()
            if not isinstance(first, proto_message.Message):  # grpc.aio.EOF
                return streaming.empty_stream(sse=sse, headers=reply_headers)
            on_end, span = (span.end if span else (lambda: None)), None
            return streaming.stream_response(
                call, first, response_body=route.response_body, sse=sse, headers=reply_headers, on_end=on_end
            )
        except grpc.aio.AioRpcError as exc:
            return error_response(errors.status_of_rpc_error(exc), request_id)
        except LookupError as exc:
            return error_response(errors.simple_status(code_pb2.UNAVAILABLE, str(exc)), request_id)
        finally:
            if span is not None:
                span.end()

    async def ready(self) -> tuple[bool, dict[str, str]]:
        """SERVING of every upstream service (gRPC health), checked now."""
        states: dict[str, str] = {}
        for service in sorted({r.service for r in self.routes}):
            peer = service.split(".")[1]
            try:
                check = self.upstreams.channel(peer).unary_unary(
                    HEALTH_CHECK,
                    request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                    response_deserializer=health_pb2.HealthCheckResponse.FromString,
                )
                reply = await check(health_pb2.HealthCheckRequest(service=service), timeout=2.0)
                states[service] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except (grpc.aio.AioRpcError, LookupError) as exc:
                states[service] = getattr(exc, "code", lambda: "UNAVAILABLE")().__str__()
        return all(v == "SERVING" for v in states.values()), states

    def openapi(self) -> dict[str, Any]:
        if self._openapi is None:
            self._openapi = openapi.document(self.routes)
        return self._openapi


def _headers_of(scope: Scope) -> dict[str, str]:
    """The request headers as one dict, built once: a Starlette Headers scans the whole list on each
    lookup, and a request is looked up about ten times. The first of repeated headers wins, as there."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(scope["headers"])}


def _apply_last_event_id(message: Any, raw: str | None) -> None:
    """Last-Event-ID resumes a stream whose request takes `after_event_id` (JoinRun)."""
    if raw is None or "after_event_id" not in message.DESCRIPTOR.fields_by_name:
        return
    if not raw.strip().isdigit():
        raise errors.BadInput("last-event-id", f"expected an event id, got {raw!r}")
    if not message.after_event_id:
        message.after_event_id = int(raw.strip())


def _demo_sign_in() -> dict[str, Any]:
    """The demo tenant and users `agentmesh up` creates, for the chat page to prefill."""
    # Imported here: only the embedded mode, where identity runs in this process, has demo data.
    from services.identity.demo import DEMO_TENANT, DEMO_USERS

    users = [{"username": name, "password": password} for name, password, _, _ in DEMO_USERS]
    return {"tenant": DEMO_TENANT, "users": users}


def _operational_routes(gateway: Gateway) -> list[BaseRoute]:
    """Liveness, readiness (every upstream's gRPC health), the OpenAPI document, the route table."""

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        ok, states = await gateway.ready()
        return JSONResponse({"ready": ok, "services": states}, status_code=200 if ok else 503)

    async def openapi_json(_: Request) -> Response:
        return JSONResponse(gateway.openapi())

    async def route_table(_: Request) -> Response:
        return JSONResponse({"routes": [routes.describe(r) for r in gateway.routes]})

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/v1/_routes", route_table, methods=["GET"]),
    ]


def _page_routes(settings: Settings) -> list[BaseRoute]:
    """The chat page: index.html, its static files and its configuration (demo sign-in when embedded)."""
    page_config = {"demo": _demo_sign_in() if settings.embedded else None}
    # The tiers' allowed models ("provider:model" patterns) by tier name, for the agent editor's
    # model field: no RPC says which models a tier allows, and the table is the same everywhere.
    tier_models = {"models": {name: list(limits.allowed_models) for name, limits in TIERS.items()}}

    async def index(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def page(_: Request) -> Response:
        return JSONResponse(page_config, headers={"Cache-Control": "no-cache"})

    async def models(_: Request) -> Response:
        return JSONResponse(tier_models)

    return [
        Route("/", index, methods=["GET"]),
        Route("/v1/_page", page, methods=["GET"]),
        Route("/v1/_models", models, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


def _fixed_routes(gateway: Gateway, settings: Settings) -> list[BaseRoute]:
    """The paths the gateway serves itself; everything else is matched against the google.api.http
    routes (Edge sends those requests to the gateway directly)."""
    return [
        *_page_routes(settings),
        *_operational_routes(gateway),
        WebSocketRoute("/v1/ws", gateway.chat.endpoint),
    ]


async def _http_error(_: Request, exc: Exception) -> Response:
    """Starlette's own errors (a static file not found, ...) in the gateway's error body."""
    assert isinstance(exc, HTTPException)
    code = code_pb2.NOT_FOUND if exc.status_code == 404 else code_pb2.INVALID_ARGUMENT
    response = error_response(errors.simple_status(code, str(exc.detail)))
    response.status_code = exc.status_code
    return response


async def _unexpected(_: Request, exc: Exception) -> Response:
    log.exception("gateway error", exc_info=exc)
    return error_response(errors.simple_status(code_pb2.INTERNAL, "internal gateway error"))


def _lifespan(
    upstreams: Upstreams, slots: ConnectionSlots, owned_redis: aioredis.Redis | None
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """Closes the channels (and the Redis client) the gateway opened itself when the server stops."""

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await slots.close()
        await upstreams.close()
        if owned_redis is not None:
            await owned_redis.aclose()

    return lifespan


def create_app(
    settings: Settings,
    *,
    channels: Mapping[str, grpc.aio.Channel] | None = None,
    tracer_provider: TracerProvider | None = None,
    route_list: list[routes.Route] | None = None,
    limits: Limits | None = None,
    redis: aioredis.Redis | None = None,
) -> Starlette:
    """The gateway for `settings`. `channels` maps peer names ("agents", ..., or "*" for all) to
    ready channels (tests, embedded); otherwise channels to settings.peers open on first use.
    `redis` (the process's own, embedded) holds the per-user WebSocket counts; otherwise the app
    opens a client to settings.redis_url (in-process fakeredis without one, counting per process)."""
    upstreams = Upstreams(settings, channels=channels)
    owned = None
    if redis is None:
        # Few connections: one script call per WebSocket opened or closed, one pipeline per renewal.
        redis = owned = create_redis(settings.redis_url, mode=settings.redis_mode, max_connections=32)
    slots = ConnectionSlots(redis, lease_seconds=settings.gateway.ws_lease_seconds)
    gateway = Gateway(
        settings,
        upstreams=upstreams,
        route_list=routes.discover() if route_list is None else route_list,
        tracing=Tracing(tracer_provider),
        limits=limits or Limits.from_settings(settings.gateway),
        slots=slots,
    )
    fixed = _fixed_routes(gateway, settings)
    app = Starlette(
        # The catch-all still takes what Edge passes on: fixed paths with a method they lack.
        routes=[*fixed, Route("/{path:path}", gateway, methods=VERBS)],
        middleware=[
            Middleware(Edge, gateway=gateway, fixed=fixed, cors_origins=settings.gateway.cors_origins)
        ],
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
        lifespan=_lifespan(upstreams, slots, owned),
    )
    app.state.gateway = gateway
    return app
