"""One grpc.aio interceptor that runs a chain of middlewares around every call.

A middleware is an async context manager around the whole call, server streams included (the
stream is iterated inside it), so each concern (logs, errors, auth, rate limits) is written once for
all four RPC shapes. Tracing comes first, from OpenTelemetry's own aio interceptor. The interceptor
puts the call in `call_context.current_call` for the length of the call.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
from grpc.aio import ServicerContext

from services.platform.call_context import CallInfo, current_call, metadata_value
from services.platform.requests import check_request, checked_stream


class Middleware(Protocol):
    def around(self, call: CallInfo) -> contextlib.AbstractAsyncContextManager[None]: ...


class Pipeline(grpc.aio.ServerInterceptor):
    """Runs `middlewares` (outermost first) around every handler, for all four RPC shapes."""

    def __init__(self, middlewares: list[Any]):
        self._middlewares = list(middlewares)
        # Wrapped handlers by (method, inner handler): built once, not on every call.
        self._wrapped: dict[tuple[str, int], grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        key = (handler_call_details.method, id(handler))
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            wrapped = self._wrapped[key] = self._wrap(handler_call_details.method, handler)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
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
        if handler.stream_stream is None:
            raise TypeError(f"{method}: a handler of none of the four RPC shapes")
        return grpc.stream_stream_rpc_method_handler(
            self._stream(method, handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _start(
        self, method: str, context: ServicerContext[Any, Any]
    ) -> tuple[CallInfo, contextvars.Token[CallInfo | None]]:
        metadata = tuple(context.invocation_metadata() or ())
        remaining = context.time_remaining()
        call = CallInfo(
            method=method,
            context=context,
            metadata=metadata,
            request_id=metadata_value(metadata, "x-request-id") or uuid.uuid4().hex,
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
        async def handle(request: Any, context: ServicerContext[Any, Any]) -> Any:
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
        async def handle(request: Any, context: ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            call, token = self._start(method, context)
            try:
                async with self._chain(call):
                    request = _checked(request)
                    responses = behavior(request, context)
                    if inspect.iscoroutine(responses):
                        # A handler that writes with context.write (grpc's own Health.Watch).
                        await responses
                        return
                    async for response in responses:
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
