"""The conversation domain's plain objects (no proto, no SQL)."""

from __future__ import annotations

import dataclasses
import enum
import uuid
from typing import Any

# Stored as these strings; convert.py maps them to and from the proto enums.
ROLES = ("system", "user", "assistant", "tool")
ACTIVE = "ACTIVE"
CLOSED = "CLOSED"
# Where a message's token counts come from.
PROVIDER = "PROVIDER"
ESTIMATED = "ESTIMATED"
USAGE_SOURCES = (PROVIDER, ESTIMATED)
# GetUsage's group keys, in the order rows are sorted by.
GROUPINGS = ("user", "agent", "model", "day")
DAY_US = 86_400 * 1_000_000
# A price is a whole number of micro-units per million tokens; a cost is micro-units.
PER_MILLION = 1_000_000


def new_id() -> str:
    return str(uuid.uuid4())


@dataclasses.dataclass(frozen=True, kw_only=True)
class Conversation:
    id: str
    tenant_id: str
    user_id: str
    agent_id: str
    agent_version: int
    title: str
    status: str
    metadata: dict[str, str]
    message_count: int
    token_count: int
    # Times are integer microseconds since the Unix epoch (UTC); 0 means "never".
    create_time: int
    update_time: int
    last_message_time: int
    close_time: int = 0
    # The active path: its leaf ("" while empty) and its length (the leaf's sequence). message_count
    # counts every branch.
    active_leaf_id: str = ""
    path_length: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class MessageUsage:
    """What one assistant message consumed. `cost_micros` and `user_id` are set by the store when
    the message is committed (the price in force then; the conversation's user)."""

    prompt_tokens: int
    completion_tokens: int
    model: str
    source: str = ESTIMATED
    tool_calls: int = 0
    duration_ms: int = 0
    run_id: str = ""
    cost_micros: int = 0
    user_id: str = ""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def cost_at(self, price: Price | None) -> int:
        """Rounded to the nearest micro-unit; the store's SQL computes the same on PostgreSQL."""
        if price is None:
            return 0
        raw = self.prompt_tokens * price.input_micros + self.completion_tokens * price.output_micros
        return (raw + PER_MILLION // 2) // PER_MILLION


@dataclasses.dataclass(frozen=True, kw_only=True)
class Price:
    """A model's price per million tokens, in micro-units of the price currency."""

    model: str
    input_micros: int
    output_micros: int
    update_time: int = 0


@dataclasses.dataclass(frozen=True)
class ToolCallRef:
    """One tool call an assistant message makes: the call's id (a tool message's tool_call_id
    answers it), the tool's name and the arguments as JSON text."""

    id: str
    name: str
    arguments_json: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Message:
    id: str
    conversation_id: str
    sequence: int
    role: str
    content: str
    token_count: int
    metadata: dict[str, str]
    tool_call_id: str
    create_time: int
    usage: MessageUsage | None = None
    # An assistant message's tool calls; empty on every other message.
    tool_calls: tuple[ToolCallRef, ...] = ()
    # The message it follows in the tree ("" for a first message). `sequence` is its depth.
    parent_id: str = ""
    on_path: bool = True

    def to_json(self) -> dict[str, Any]:
        # Shallow: dataclasses.asdict deep-copies, a cost on every append for a dict about to be
        # serialised.
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["usage"] = None if self.usage is None else dataclasses.asdict(self.usage)
        data["tool_calls"] = tool_calls_to_json(self.tool_calls)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        usage = data.get("usage")
        return cls(
            **{
                **data,
                "usage": None if usage is None else MessageUsage(**usage),
                # Hot-window entries written before tool calls existed have none.
                "tool_calls": tool_calls_from_json(data.get("tool_calls")),
            }
        )


def tool_calls_to_json(calls: tuple[ToolCallRef, ...]) -> list[dict[str, str]] | None:
    """As stored (JSON column, hot window): None for none, so plain messages carry nothing."""
    return [dataclasses.asdict(c) for c in calls] or None


def tool_calls_from_json(data: list[dict[str, str]] | None) -> tuple[ToolCallRef, ...]:
    return tuple(ToolCallRef(**c) for c in data or ())


@dataclasses.dataclass(frozen=True, kw_only=True)
class NewMessage:
    """What a caller appends; the service assigns id, sequence, token count and time."""

    role: str
    content: str
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    tool_call_id: str = ""
    usage: MessageUsage | None = None
    tool_calls: tuple[ToolCallRef, ...] = ()


@dataclasses.dataclass(frozen=True)
class Siblings:
    """The messages that share a message's parent, oldest first (itself included)."""

    ids: tuple[str, ...]

    def index(self, message_id: str) -> int:
        """1-based place of `message_id` ("2 of 3"); 0 when it is not among them."""
        return self.ids.index(message_id) + 1 if message_id in self.ids else 0


class BranchRefused(enum.Enum):
    """Why a branch operation changed nothing: no such conversation in the caller's scope, no such
    message in it, the conversation is closed, or the message is not a user message (an edit)."""

    MISSING = "MISSING"
    NO_MESSAGE = "NO_MESSAGE"
    CLOSED = "CLOSED"
    NOT_USER = "NOT_USER"


@dataclasses.dataclass(frozen=True)
class Appended:
    """A committed message and its conversation after it; `replayed`: the request_id was already
    stored, so this is the first append's message and nothing new was written."""

    message: Message
    conversation: Conversation
    replayed: bool


class AppendRefused(enum.Enum):
    """Why an append stored nothing: no such conversation in the caller's scope, or it is closed."""

    MISSING = "MISSING"
    CLOSED = "CLOSED"


@dataclasses.dataclass(frozen=True)
class SequenceRange:
    first: int
    last: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContextWindow:
    """GetContext's answer: `messages` oldest first, the system prompt (sequence 0) leading."""

    messages: list[Message]
    kept: list[SequenceRange]
    dropped: list[SequenceRange]
    token_budget: int
    system_prompt_tokens: int
    total_tokens: int
    system_prompt_truncated: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchHit:
    conversation: Conversation
    message: Message
    snippet: str
    score: float


@dataclasses.dataclass(frozen=True)
class Totals:
    conversations: int = 0
    messages: int = 0
    tokens: int = 0

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.conversations + other.conversations,
            self.messages + other.messages,
            self.tokens + other.tokens,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TenantStats:
    totals: Totals
    by_agent: dict[str, Totals]
    # "YYYY-MM-DD" (UTC) -> totals, in day order.
    by_day: dict[str, Totals]


@dataclasses.dataclass(frozen=True, kw_only=True)
class UsageRow:
    """Sums of usage; the keys not grouped by are ""."""

    user_id: str = ""
    agent_id: str = ""
    model: str = ""
    day: str = ""
    messages: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    tool_calls: int = 0
    cost_micros: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuotaLimit:
    """A tenant's own monthly limits set by the operator (0: unlimited); else its tier's apply."""

    tokens: int
    cost_micros: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Quota:
    limit_tokens: int
    used_tokens: int
    limit_cost_micros: int
    used_cost_micros: int
    # Microseconds: the start of the next UTC month.
    reset_time: int

    @property
    def remaining_tokens(self) -> int:
        return max(0, self.limit_tokens - self.used_tokens) if self.limit_tokens else 0

    def exhausted(self) -> str:
        """The name of the limit used up ("" while both have room)."""
        if self.limit_tokens and self.used_tokens >= self.limit_tokens:
            return "monthly_tokens"
        if self.limit_cost_micros and self.used_cost_micros >= self.limit_cost_micros:
            return "monthly_cost"
        return ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Usage:
    totals: UsageRow
    rows: list[UsageRow]
    quota: Quota
