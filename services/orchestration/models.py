"""Domain objects of orchestration: sessions, runs, run events, and the agent config a run uses.

Plain dataclasses: the servicer converts them to and from protos, the store to and from rows.
"""

from __future__ import annotations

import dataclasses
import enum


class SessionState(enum.IntEnum):
    ACTIVE = 1
    ENDED = 2


class RunState(enum.IntEnum):
    QUEUED = 1
    RUNNING = 2
    COMPLETED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def terminal(self) -> bool:
        return self >= RunState.COMPLETED


class EventType(enum.IntEnum):
    RUN_CREATED = 1
    RUN_STARTED = 2
    MESSAGE_DELTA = 3
    MESSAGE_COMPLETED = 4
    RUN_COMPLETED = 5
    RUN_FAILED = 6
    RUN_CANCELLED = 7

    @property
    def terminal(self) -> bool:
        return self in (EventType.RUN_COMPLETED, EventType.RUN_FAILED, EventType.RUN_CANCELLED)


class BusyPolicy(enum.IntEnum):
    # Values match agentmesh.agents.v1.BusyPolicy.
    UNSPECIFIED = 0
    REJECT = 1
    ENQUEUE = 2
    INTERRUPT = 3
    ROLLBACK = 4


class CancelMode(enum.StrEnum):
    KEEP = "keep"  # the partial answer is stored, marked partial
    DISCARD = "discard"  # nothing of the answer is stored (BUSY_POLICY_ROLLBACK)


@dataclasses.dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class RunError:
    code: str
    message: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Session:
    id: str
    tenant_id: str
    user_id: str
    agent_id: str
    agent_version: int
    conversation_id: str
    title: str
    state: SessionState
    active_run_id: str
    create_time: float
    update_time: float
    end_time: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Run:
    id: str
    tenant_id: str
    session_id: str
    user_id: str
    state: RunState
    agent_version: int
    input_text: str
    user_message_id: str = ""
    assistant_message_id: str = ""
    usage: Usage = Usage()
    error: RunError | None = None
    last_event_id: int = 0
    create_time: float = 0.0
    start_time: float | None = None
    end_time: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunEvent:
    event_id: int
    run_id: str
    session_id: str
    type: EventType
    text_delta: str = ""
    final_message: str = ""
    usage: Usage | None = None
    error: RunError | None = None
    agent_version: int = 0
    event_time: float = 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentSnapshot:
    """The part of an agent (at one version) a run needs."""

    id: str
    tenant_id: str
    version: int
    active: bool
    model: str
    system_prompt: str = ""
    temperature: float | None = None
    max_output_tokens: int = 0
    max_context_tokens: int = 0
    busy_policy: BusyPolicy = BusyPolicy.UNSPECIFIED


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who a run acts for: kept with the run so its background work calls peers as that user."""

    tenant_id: str
    user_id: str
    token: str
    tier: str
    is_admin: bool = False
