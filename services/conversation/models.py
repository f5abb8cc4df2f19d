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

    def to_json(self) -> dict[str, Any]:
        # Shallow: dataclasses.asdict deep-copies, a cost on every append for a dict about to be
        # serialised.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        return cls(**data)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NewMessage:
    """What a caller appends; the service assigns id, sequence, token count and time."""

    role: str
    content: str
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    tool_call_id: str = ""


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
