"""grpc.aio's server on a thread of its own, relaying every call to its handler on the main loop.

Why: grpc.aio hands Python a new call only every few passes of the loop it runs on (one
`request_call` at a time, each completed through its poller thread and resumed a pass later). On
the loop that also runs hundreds of streaming runs, whose passes take 10 ms and more, a burst of
200 chats reached its handlers over 4-7 s, most of their time to first delta (bench/grpc_accept.py,
docs/orchestration.md). Here the server's loop does nothing but gRPC's own work, so its passes stay
short and a burst is accepted at once; the services, their interceptors included, run on the main
loop as before, unchanged.

The server thread's handler for a method has the shape and the serializers of the servicer's and:
- runs the method's handler as `LocalHandlers.handler` gives it (the interceptors around the
  servicer) on the main loop, with a `HandlerContext` holding the call's metadata, deadline and peer;
- hands requests of a client stream to it one at a time, as it reads them;
- hands a response stream back a window of `WINDOW` messages at a time: the main side waits for
  the server thread to have written the earlier ones, so a client that stops reading holds back its
  handler (and from there the run's own slow-reader bound) as it did with the handler on the server;
- answers with the status the handler set (abort) and its trailing metadata;
- cancels the handler when the call ends first (the client cancelled, the deadline passed, the
  server stopped).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpc

from services.platform.local_calls import HandlerContext, LocalHandlers

T = TypeVar("T")

# Responses in flight between a stream's handler and the server thread's write of them.
WINDOW = 16

_END = object()


class ServerThread:
    """A daemon thread running an event loop of its own, for the grpc.aio server."""

    def __init__(self, name: str = "grpc-server"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs `coro` on the thread's loop; cancelling the caller cancels it."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def close(self) -> None:
        await self.run(self.loop.shutdown_asyncgens())
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self._thread.join)
        self.loop.close()


class Relay(grpc.GenericRpcHandler):
    """The server thread's handlers: each method of `handlers`, run on `main`."""

    def __init__(
        self, handlers: LocalHandlers, *, main: asyncio.AbstractEventLoop, server: asyncio.AbstractEventLoop
    ):
        self._handlers = handlers
        self._main = main
        self._to_main = _Mailbox(main, posted_from=server)
        self._to_server = _Mailbox(server, posted_from=main)
        self._relayed: dict[str, grpc.RpcMethodHandler[Any, Any] | None] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        if method not in self._relayed:
            self._relayed[method] = self._relay(method)
        return self._relayed[method]

    def _relay(self, method: str) -> grpc.RpcMethodHandler[Any, Any] | None:
        own = self._handlers.servicer_handler(method)
        if own is None:
            return None
        serializers: dict[str, Any] = {
            "request_deserializer": own.request_deserializer,
            "response_serializer": own.response_serializer,
        }

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if own.request_streaming:
                request = _Requests(request, asyncio.get_running_loop())
            handler = _context(context)
            response = await self._on_main(self._unary(method, request, handler))
            await _answer(context, handler)
            return response

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            loop = asyncio.get_running_loop()
            if own.request_streaming:
                request = _Requests(request, loop)
            queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

            def send(kind: str, value: Any) -> None:
                self._to_server.post(functools.partial(queue.put_nowait, (kind, value)))

            window = asyncio.Semaphore(WINDOW)  # acquired and released on the main loop only

            async def write(message: Any) -> None:  # on the main loop: a yielded message or a write
                await window.acquire()
                send("message", message)

            handler = _context(context, on_headers=lambda headers: send("headers", headers), on_write=write)
            pump = asyncio.ensure_future(self._on_main(self._stream(method, request, handler, send)))
            try:
                while True:
                    kind, value = await queue.get()
                    if kind == "message":
                        yield value
                        self._to_main.post(window.release)
                    elif kind == "headers":
                        await context.send_initial_metadata(value)
                    else:
                        break
                await pump  # the handler's own exception, if any
            finally:
                pump.cancel()
            await _answer(context, handler)

        if own.response_streaming:
            return _handler(own, stream, serializers)
        return _handler(own, unary, serializers)

    async def _on_main(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs `coro` as a task on the main loop, there and back through the mailboxes: the calls
        of one pass cross together (run_coroutine_threadsafe + wrap_future woke each loop once per
        call, which cost a DB-bound unary call about a third of its throughput, bench.agents)."""
        outcome: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        task: asyncio.Task[T] | None = None

        def start() -> None:
            nonlocal task
            task = self._main.create_task(coro)
            task.add_done_callback(lambda t: self._to_server.post(functools.partial(_settle, outcome, t)))

        def cancel() -> None:
            if task is not None:
                task.cancel()

        self._to_main.post(start)
        try:
            return await outcome
        except asyncio.CancelledError:
            self._to_main.post(cancel)  # after `start`: the mailbox keeps order
            raise

    async def _behavior(self, method: str) -> Callable[..., Any]:
        handler = await self._handlers.handler(method)
        if handler is None:  # unbound while the call was on its way
            raise RuntimeError(f"{method} is no longer served")
        behavior = (
            handler.unary_unary or handler.stream_unary or handler.unary_stream or handler.stream_stream
        )
        assert behavior is not None
        return behavior

    async def _unary(self, method: str, request: Any, context: HandlerContext) -> Any:
        behavior = await self._behavior(method)
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            return None  # the status is on the context

    async def _stream(
        self, method: str, request: Any, context: HandlerContext, send: Callable[[str, Any], None]
    ) -> None:
        try:
            behavior = await self._behavior(method)
            # Closed here, at once, when the call ends first (as on grpc's server, where the
            # generator is dropped with its task): its `finally`s and middlewares run now.
            async with contextlib.aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    await context.write(response)
        except grpc.aio.AbortError:
            pass  # the status is on the context
        finally:
            send("end", None)


def _context(
    context: grpc.aio.ServicerContext[Any, Any],
    *,
    on_headers: Callable[[Any], None] | None = None,
    on_write: Callable[[Any], Awaitable[None]] | None = None,
) -> HandlerContext:
    remaining = context.time_remaining()
    return HandlerContext(
        tuple(context.invocation_metadata() or ()),
        None if remaining is None else time.monotonic() + remaining,
        peer=context.peer(),
        on_headers=on_headers,
        on_write=on_write,
    )


async def _answer(context: grpc.aio.ServicerContext[Any, Any], handler: HandlerContext) -> None:
    """The status and trailing metadata the handler set, on the real call."""
    code, trailing = handler.code(), tuple(handler.trailing_metadata())
    if code is not None and code != grpc.StatusCode.OK:
        await context.abort(code, handler.details() or "", trailing)
    if trailing:
        context.set_trailing_metadata(trailing)


def _handler(
    own: grpc.RpcMethodHandler[Any, Any], behavior: Callable[..., Any], serializers: dict[str, Any]
) -> grpc.RpcMethodHandler[Any, Any]:
    if own.request_streaming and own.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior, **serializers)
    if own.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior, **serializers)
    if own.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior, **serializers)
    return grpc.unary_unary_rpc_method_handler(behavior, **serializers)


def _settle(outcome: asyncio.Future[T], task: asyncio.Task[T]) -> None:
    """`task`'s outcome (a main-loop task, done) on `outcome`, a future of the server's loop."""
    if outcome.done():
        return  # the call was cancelled meanwhile
    if task.cancelled():
        outcome.cancel()
    elif (error := task.exception()) is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(task.result())


class _Mailbox:
    """Callbacks for `loop`, posted from `posted_from` (a loop on another thread), run in batches:
    what one pass of the posting loop posts crosses in one wake-up of `loop`, sent when that pass
    ends. call_soon_threadsafe writes to the loop's self-pipe, and each write releases the GIL,
    which the other thread then holds for up to the switch interval: one write per streamed message
    cost the main loop 6% of a 200-chat burst (py-spy), one per pass costs it a fraction of that."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, posted_from: asyncio.AbstractEventLoop):
        self._loop = loop
        self._source = posted_from
        self._posted: collections.deque[Callable[[], None]] = collections.deque()
        self._flushing = False  # a flush is due at the end of the posting loop's pass
        self._scheduled = False  # a run is due on `loop`

    def post(self, callback: Callable[[], None]) -> None:
        if self._loop.is_closed() or self._source.is_closed():
            return  # the server (or the process's loop) is gone, and the call with it
        self._posted.append(callback)
        if not self._flushing:
            self._flushing = True
            self._source.call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        if not self._scheduled and not self._loop.is_closed():
            self._scheduled = True
            self._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        # Reset before draining: what is posted from here on is drained now or gets a run of its own.
        self._scheduled = False
        while self._posted:
            self._posted.popleft()()


class _Requests:
    """A client stream read on the server thread, as the main loop's handler iterates it."""

    def __init__(self, requests: AsyncIterable[Any], loop: asyncio.AbstractEventLoop):
        self._requests = requests
        self._iterator: AsyncIterator[Any] | None = None
        self._loop = loop

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> Any:
        message = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._next(), self._loop))
        if message is _END:
            raise StopAsyncIteration
        return message

    async def _next(self) -> Any:
        # Made at the first read: grpc's receiver warns when one made is never awaited (a call
        # refused before its handler reads).
        if self._iterator is None:
            self._iterator = aiter(self._requests)
        try:
            return await anext(self._iterator)
        except StopAsyncIteration:
            return _END
