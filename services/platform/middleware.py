"""One grpc.aio interceptor that runs a chain of middlewares around every call.

A middleware is an async context manager around the whole call, server streams included (the
stream is iterated inside it), so each concern (logs, errors, auth, rate limits) is written once for
all four RPC shapes. Tracing comes first, from OpenTelemetry's own aio interceptor.

The call being served is in `current_call`, so the servicer, the service layer's logs and the peer
channels (which forward identity, request id and deadline) all see the same CallInfo.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
import json
import logging
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any, Protocol

import grpc
import psycopg
import redis.exceptions
import sqlalchemy.exc
from grpc.aio import ServicerContext

from services.platform import errors
from services.platform.auth import Principal, TokenVerifier, bearer_token
from services.platform.requests import check_request, checked_stream

log = logging.getLogger("agentmesh.rpc")

# Errors that mean "PostgreSQL or Redis is unreachable right now", as opposed to a bug.
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    # psycopg's own, for the few hot paths that use the pooled driver connection directly.
    psycopg.OperationalError,
    psycopg.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)


@dataclasses.dataclass
class CallInfo:
    method: str
    context: ServicerContext
    metadata: tuple[tuple[str, str | bytes], ...]
    request_id: str
    # Monotonic time by which the caller wants an answer, or None.
    deadline: float | None
    principal: Principal | None = None

    def require_principal(self) -> Principal:
        if self.principal is None:
            raise errors.Unauthenticated("this call needs an access token", reason="TOKEN_REQUIRED")
        return self.principal


current_call: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar("current_call", default=None)


def principal() -> Principal:
    """The verified caller of the call being served (Unauthenticated when there is none)."""
    call = current_call.get()
    if call is None:
        raise errors.Unauthenticated("no call in progress", reason="TOKEN_REQUIRED")
    return call.require_principal()


class Middleware(Protocol):
    def around(self, call: CallInfo) -> contextlib.AbstractAsyncContextManager[None]: ...


class ErrorMapping:
    """Domain errors become their status with details; anything else becomes a bare INTERNAL."""

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        try:
            yield
        except errors.AgentmeshError as exc:
            await call.context.abort_with_status(errors.to_status(exc))
        except (grpc.aio.AbortError, GeneratorExit):
            raise
        except DEPENDENCY_ERRORS as exc:
            # A database or Redis that cannot be reached is retryable, never INTERNAL.
            log.warning(
                "dependency unavailable",
                extra={"fields": {"method": call.method, "error": f"{type(exc).__name__}: {exc}"}},
            )
            await call.context.abort_with_status(
                errors.to_status(errors.Unavailable("a dependency is unavailable; retry shortly"))
            )
        except NotImplementedError:
            await call.context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{call.method} is not implemented")
        except Exception:
            log.error(
                "unexpected error",
                extra={"fields": {"method": call.method, "error": traceback.format_exc()}},
            )
            await call.context.abort_with_status(
                errors.to_status(
                    errors.Internal(
                        f"internal error (request id {call.request_id})",
                        metadata={"request_id": call.request_id},
                    )
                )
            )


class Authentication:
    """Verifies the bearer token (if any) and puts the Principal on the call.

    Public methods may be called without a token; every other method requires one. A token that is
    present but bad is rejected even on a public method, so a client learns of it at once.
    """

    def __init__(self, verifier: TokenVerifier | None, *, public_methods: Collection[str]):
        self._verifier = verifier
        self._public = frozenset(public_methods)

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        token = bearer_token(call.metadata)
        if token is not None and self._verifier is not None:
            call.principal = await self._verifier.verify(token)
        elif call.method not in self._public and not _is_infrastructure(call.method):
            raise errors.Unauthenticated("this call needs an access token", reason="TOKEN_REQUIRED")
        yield


def _is_infrastructure(method: str) -> bool:
    return method.startswith(("/grpc.health.v1.", "/grpc.reflection."))


class AccessLog:
    """One JSON line per finished call: method, code, duration, tenant, request id."""

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            yield
        except BaseException:
            code = call.context.code() or grpc.StatusCode.CANCELLED
            if isinstance(code, int):  # grpc.aio exposes the raw cython code before abort completes
                code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
            raise
        finally:
            log.info(
                "rpc",
                extra={
                    "fields": {
                        "method": call.method,
                        "code": code.name,
                        "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                        "tenant": call.principal.tenant_id if call.principal else None,
                        "user": call.principal.user_id if call.principal else None,
                    }
                },
            )


def _metadata_value(metadata: tuple[tuple[str, str | bytes], ...], key: str) -> str | None:
    for k, v in metadata:
        if k == key and isinstance(v, str):
            return v
    return None


class Pipeline(grpc.aio.ServerInterceptor):
    """Runs `middlewares` (outermost first) around every handler, for all four RPC shapes."""

    def __init__(self, middlewares: list[Any]):
        self._middlewares = list(middlewares)
        # Wrapped handlers by (method, inner handler): built once, not on every call.
        self._wrapped: dict[tuple[str, int], grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        key = (handler_call_details.method, id(handler))
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            wrapped = self._wrapped[key] = self._wrap(handler_call_details.method, handler)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._stream(method, handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _start(self, method: str, context: ServicerContext) -> tuple[CallInfo, contextvars.Token]:
        metadata = tuple(context.invocation_metadata() or ())
        remaining = context.time_remaining()
        call = CallInfo(
            method=method,
            context=context,
            metadata=metadata,
            request_id=_metadata_value(metadata, "x-request-id") or uuid.uuid4().hex,
            deadline=time.monotonic() + remaining if remaining is not None else None,
        )
        return call, current_call.set(call)

    @contextlib.asynccontextmanager
    async def _chain(self, call: CallInfo) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for middleware in self._middlewares:
                await stack.enter_async_context(middleware.around(call))
            yield

    def _unary(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def handle(request: Any, context: ServicerContext) -> Any:
            call, token = self._start(method, context)
            try:
                async with self._chain(call):
                    request = _checked(request)
                    result = behavior(request, context)
                    return await result if inspect.isawaitable(result) else result
            finally:
                current_call.reset(token)

        return handle

    def _stream(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def handle(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
            call, token = self._start(method, context)
            try:
                async with self._chain(call):
                    request = _checked(request)
                    async for response in behavior(request, context):
                        yield response
            finally:
                # A stream closed by the client is finalised from another task, whose context
                # never saw the set: there is nothing to undo then.
                with contextlib.suppress(ValueError):
                    current_call.reset(token)

        return handle


def _checked(request: Any) -> Any:
    """The request, checked (a message) or checked as it is read (a client stream)."""
    if hasattr(request, "ListFields"):
        check_request(request)
        return request
    return checked_stream(request)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the current call's request id, tenant and trace id."""

    def format(self, record: logging.LogRecord) -> str:
        from opentelemetry import trace

        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        call = current_call.get()
        if call is not None:
            entry["request_id"] = call.request_id
            if call.principal is not None:
                entry["tenant"] = call.principal.tenant_id
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        elif call is not None:
            # Not tracing here: the caller's trace id, from its traceparent ("00-<trace>-<span>-<flags>").
            parts = (_metadata_value(call.metadata, "traceparent") or "").split("-")
            if len(parts) == 4 and len(parts[1]) == 32:
                entry["trace_id"] = parts[1]
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
