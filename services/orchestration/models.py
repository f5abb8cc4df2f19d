"""Domain objects of orchestration: sessions, runs, run events, and the agent config a run uses.

Plain dataclasses and enums by name (no proto numbers): convert.py maps them to and from protos, the
store to and from rows.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class SessionState(enum.StrEnum):
    ACTIVE = "ACTIVE"
    ENDED = "ENDED"


class RunState(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    # Waiting for a client's tool outputs / a person's decisions: rows in PostgreSQL, no worker.
    REQUIRES_ACTION = "REQUIRES_ACTION"
    REQUIRES_APPROVAL = "REQUIRES_APPROVAL"

    @property
    def terminal(self) -> bool:
        return self in (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED)

    @property
    def waiting(self) -> bool:
        return self in (RunState.REQUIRES_ACTION, RunState.REQUIRES_APPROVAL)


class EventType(enum.StrEnum):
    RUN_CREATED = "RUN_CREATED"
    RUN_STARTED = "RUN_STARTED"
    MESSAGE_DELTA = "MESSAGE_DELTA"
    MESSAGE_COMPLETED = "MESSAGE_COMPLETED"
    RUN_COMPLETED = "RUN_COMPLETED"
    RUN_FAILED = "RUN_FAILED"
    RUN_CANCELLED = "RUN_CANCELLED"
    # Appended last: the stream entries store each type's position (events.EVENT_TYPE_CODES).
    TOOL_CALLS_REQUESTED = "TOOL_CALLS_REQUESTED"
    APPROVAL_REQUESTED = "APPROVAL_REQUESTED"
    TOOL_CALL_STARTED = "TOOL_CALL_STARTED"
    TOOL_CALL_COMPLETED = "TOOL_CALL_COMPLETED"

    @property
    def terminal(self) -> bool:
        return self in (EventType.RUN_COMPLETED, EventType.RUN_FAILED, EventType.RUN_CANCELLED)

    @property
    def pauses(self) -> bool:
        """The run now waits for someone: SendMessage and JoinRun streams end here (Chat goes on)."""
        return self in (EventType.TOOL_CALLS_REQUESTED, EventType.APPROVAL_REQUESTED)


class ToolExecution(enum.StrEnum):
    CLIENT = "CLIENT"
    HTTP = "HTTP"


class ToolCallStatus(enum.StrEnum):
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    AWAITING_OUTPUT = "AWAITING_OUTPUT"
    # Approved http call: the worker that continues the run executes it.
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    DENIED = "DENIED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"

    @property
    def pending(self) -> bool:
        return self in (ToolCallStatus.AWAITING_APPROVAL, ToolCallStatus.AWAITING_OUTPUT)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentTool:
    """One tool of the agent's config (agents' Tool)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    execution: ToolExecution = ToolExecution.CLIENT
    url: str = ""
    timeout_ms: int = 0
    requires_approval: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunToolCall:
    """One call the model made in a run's step, and its result once it has one."""

    id: str
    name: str
    arguments_json: str
    status: ToolCallStatus
    step: int
    execution: ToolExecution = ToolExecution.CLIENT
    requires_approval: bool = False
    output: str = ""
    is_error: bool = False
    duration_ms: int = 0

    @property
    def answered(self) -> bool:
        return self.status in (ToolCallStatus.COMPLETED, ToolCallStatus.DENIED)


class BusyPolicy(enum.StrEnum):
    """What a message does to a session that already has a run (None: the agent's, else REJECT)."""

    REJECT = "REJECT"
    ENQUEUE = "ENQUEUE"
    INTERRUPT = "INTERRUPT"
    ROLLBACK = "ROLLBACK"


class CancelMode(enum.StrEnum):
    KEEP = "keep"  # the partial answer is stored, marked partial
    DISCARD = "discard"  # nothing of the answer is stored (BUSY_POLICY_ROLLBACK)


@dataclasses.dataclass(frozen=True)
class Usage:
    """Tokens of one model answer (a provider's report) or of a run (the worker's record)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    # The worker's record: the "provider:model" that answered, where the counts come from
    # ("PROVIDER" | "ESTIMATED"; "" in a provider's own report), tool calls, model time.
    model: str = ""
    source: str = ""
    tool_calls: int = 0
    duration_ms: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuotaState:
    """A tenant's monthly quota and its use (conversation's CheckQuota); a limit of 0 is unlimited."""

    limit_tokens: int = 0
    used_tokens: int = 0
    limit_cost_micros: int = 0
    used_cost_micros: int = 0

    def room(self) -> float:
        """The smallest fraction of a limit still unused (1.0 with no limits)."""
        fractions = [
            1 - used / limit
            for limit, used in (
                (self.limit_tokens, self.used_tokens),
                (self.limit_cost_micros, self.used_cost_micros),
            )
            if limit > 0
        ]
        return min(fractions, default=1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResponseFormat:
    """The form an answer takes: text, or JSON matching `schema` (Draft 2020-12), named `name` to the
    model. An agent without one answers text; a message's, when set, wins over its agent's."""

    json: bool = False
    schema: dict[str, Any] = dataclasses.field(default_factory=dict)
    name: str = "answer"


@dataclasses.dataclass(frozen=True)
class ModelFallback:
    """A model that failed before its first token, and why (a status code name, ": ", the message)."""

    model: str
    reason: str


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
    # Times in int microseconds (services/platform/timestamps.py); 0 is "not yet".
    create_time_us: int
    update_time_us: int
    end_time_us: int = 0


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
    create_time_us: int = 0
    start_time_us: int = 0
    end_time_us: int = 0
    # The model that answered, the ones that failed before it, the one the message asked for.
    model: str = ""
    fallbacks: tuple[ModelFallback, ...] = ()
    model_override: str = ""
    # The message's response format (None: the agent's); stored with the run, so a run resumed
    # after a tool wait (on any instance) still answers in it.
    response_format: ResponseFormat | None = None
    # Model steps taken so far; while waiting: the calls still unanswered and when the wait ends.
    steps: int = 0
    wait_expire_time_us: int = 0
    pending_tool_calls: tuple[RunToolCall, ...] = ()
    # Branches: EditMessage's run stores its text as a new version of the user message `edit_of`;
    # RegenerateAnswer's run answers the stored user message `regenerate_from` again. Used when the
    # run starts, not stored: a run still queued when its instance dies is failed, never resumed.
    edit_of: str = ""
    regenerate_from: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoredMessage:
    """A message of a session's conversation as EditMessage and RegenerateAnswer check it."""

    id: str
    role: str  # "user", "assistant", "tool", "system"
    content: str
    parent_id: str
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)


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
    event_time_us: int = 0
    model: str = ""
    fallbacks: tuple[ModelFallback, ...] = ()
    tool_calls: tuple[RunToolCall, ...] = ()
    # MESSAGE_COMPLETED / RUN_COMPLETED of a JSON_SCHEMA answer: the answer parsed (a JSON value).
    structured: Any = None


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
    busy_policy: BusyPolicy | None = None
    fallback_models: tuple[str, ...] = ()
    allow_model_override: bool = False
    tools: tuple[AgentTool, ...] = ()
    response_format: ResponseFormat | None = None


@dataclasses.dataclass(frozen=True)
class SendAction:
    """Chat: a message (SendMessage's fields)."""

    text: str
    request_id: str
    busy_policy: BusyPolicy | None
    model_override: str = ""
    response_format: ResponseFormat | None = None


@dataclasses.dataclass(frozen=True)
class CancelAction:
    """Chat: cancel a run (the session's run in progress when run_id is empty)."""

    run_id: str


@dataclasses.dataclass(frozen=True)
class ResumeAction:
    """Chat: the events of a run after after_event_id (JoinRun's fields)."""

    run_id: str
    after_event_id: int


@dataclasses.dataclass(frozen=True)
class ToolOutput:
    tool_call_id: str
    output: str
    is_error: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToolDecision:
    """Exactly one of: approve, deny (deny_reason), or edit (edited_arguments_json)."""

    tool_call_id: str
    approve: bool = False
    deny_reason: str | None = None
    edited_arguments_json: str | None = None


@dataclasses.dataclass(frozen=True)
class ToolOutputsAction:
    """Chat: SubmitToolOutputs's fields."""

    run_id: str
    outputs: tuple[ToolOutput, ...]


@dataclasses.dataclass(frozen=True)
class ToolDecisionsAction:
    """Chat: DecideToolCalls's fields."""

    run_id: str
    decisions: tuple[ToolDecision, ...]


Action = SendAction | CancelAction | ResumeAction | ToolOutputsAction | ToolDecisionsAction
