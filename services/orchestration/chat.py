"""One Chat stream: actions in (message, cancel, resume), the events of every run of the session
out, interleaved. A rejected action is answered with a ChatFailure; the stream stays open."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

from services.orchestration.events import RunEvents
from services.orchestration.models import (
    Action,
    CancelAction,
    RunEvent,
    SendAction,
    ToolDecisionsAction,
    ToolOutputsAction,
)
from services.orchestration.service import OrchestrationService
from services.platform import errors
from services.platform.auth import Principal

log = logging.getLogger("agentmesh.orchestration.chat")
# Items waiting for the client's stream (events of every run followed, failures).
OUT_BUFFER = 256


@dataclasses.dataclass(frozen=True)
class ChatFailure:
    """A rejected action: the error a unary call would have raised, and the key of the action."""

    error: errors.AgentmeshError
    request_id: str


class ChatSession:
    def __init__(self, service: OrchestrationService, events: RunEvents, caller: Principal, session_id: str):
        self._service = service
        self._events = events
        self._caller = caller
        self._session_id = session_id
        # Bounded: a client that stops reading stops the pumps here, so the hub's bounded buffer
        # of each run fills and cuts the stream (RESOURCE_EXHAUSTED) instead of memory growing.
        self._out: asyncio.Queue[RunEvent | ChatFailure | errors.AgentmeshError | None] = asyncio.Queue(
            OUT_BUFFER
        )
        self._tailers: dict[str, asyncio.Task[None]] = {}

    async def run(self, actions: AsyncIterator[Action]) -> AsyncIterator[RunEvent | ChatFailure]:
        await self._service.get_session(self._caller, self._session_id)
        # Taken before any action, so every run created from here on (by us or another client) is seen.
        position = await self._events.session_position(self._session_id)
        follower = asyncio.create_task(self._follow(position))
        reader = asyncio.create_task(self._read(actions))
        try:
            while True:
                item = await self._out.get()
                if item is None:
                    break
                if isinstance(item, errors.AgentmeshError):
                    raise item
                yield item
        finally:
            for task in (follower, reader, *self._tailers.values()):
                task.cancel()
            await asyncio.gather(follower, reader, *self._tailers.values(), return_exceptions=True)

    async def _follow(self, position: str) -> None:
        async for run_id in self._events.follow_session(self._session_id, position):
            self._tail(run_id, self._service.events(run_id, 0))

    def _tail(self, run_id: str, stream: AsyncIterator[RunEvent], *, replace: bool = False) -> None:
        current = self._tailers.get(run_id)
        if current is not None and not replace:
            return
        if current is not None:
            # An explicit resume wins: the client says which events it still needs.
            current.cancel()

        async def pump() -> None:
            try:
                async for event in stream:
                    await self._out.put(event)
            except errors.AgentmeshError as exc:
                # A cut (slow reader) or a stopping instance ends the whole Chat call with it.
                await self._out.put(exc)

        self._tailers[run_id] = asyncio.create_task(pump())

    async def _read(self, actions: AsyncIterator[Action]) -> None:
        try:
            async for action in actions:
                try:
                    await self._apply(action)
                except errors.AgentmeshError as exc:
                    await self._out.put(ChatFailure(exc, _key(action)))
                except Exception:
                    log.exception("chat action failed")
                    await self._out.put(ChatFailure(errors.Internal("internal error"), _key(action)))
        except errors.AgentmeshError as exc:
            # A request that could not be read (bad input): the call ends with its status instead
            # of waiting for actions that will never come.
            await self._out.put(exc)
            return
        # The client closed its side: finish the runs being followed, then end the stream.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tailers.values(), return_exceptions=True)
        await self._out.put(None)

    async def _apply(self, action: Action) -> None:
        if isinstance(action, SendAction):
            run = await self._service.send_message(
                self._caller,
                session_id=self._session_id,
                text=action.text,
                request_id=action.request_id,
                busy_policy=action.busy_policy,
                model_override=action.model_override,
                response_format=action.response_format,
            )
            # Normally announced through the session's stream; a replayed request_id is not.
            self._tail(run.id, self._service.events(run.id, 0))
        elif isinstance(action, ToolOutputsAction):
            await self._service.submit_tool_outputs(self._caller, action.run_id, action.outputs)
        elif isinstance(action, ToolDecisionsAction):
            await self._service.decide_tool_calls(self._caller, action.run_id, action.decisions)
        elif isinstance(action, CancelAction):
            run_id = action.run_id or await self._service.active_run_id(self._caller, self._session_id)
            await self._service.cancel_run(self._caller, run_id)
        else:
            stream = await self._service.join_run(self._caller, action.run_id, action.after_event_id)
            self._tail(action.run_id, stream, replace=True)


def _key(action: Action) -> str:
    """What a client matches a failure with: the message's request_id, else the run id."""
    return action.request_id if isinstance(action, SendAction) else action.run_id
