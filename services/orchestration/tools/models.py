"""The plain data a tool executor takes and gives back (no proto types: the loop converts)."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

DEFAULT_TIMEOUT_MS = 10_000
"""A tool's timeout_ms of 0 means this (the agents contract)."""


@dataclasses.dataclass(frozen=True)
class ToolCallRequest:
    """One call the model asked for: its id (the provider's call id), the tool's name, the parsed
    arguments, and the run it belongs to."""

    id: str
    name: str
    arguments: dict[str, Any]
    run_id: str


@dataclasses.dataclass(frozen=True)
class HttpTool:
    """Where an HTTP tool lives and how long it may take (0: DEFAULT_TIMEOUT_MS)."""

    url: str
    timeout_ms: int = 0

    @property
    def timeout_seconds(self) -> float:
        return (self.timeout_ms or DEFAULT_TIMEOUT_MS) / 1000


class ToolFailure(enum.StrEnum):
    """Why a call gave an error result: a stable name for events, metrics and tests."""

    INVALID_URL = "INVALID_URL"
    ADDRESS_REFUSED = "ADDRESS_REFUSED"
    TIMEOUT = "TIMEOUT"
    CONNECT_ERROR = "CONNECT_ERROR"
    REDIRECT = "REDIRECT"
    HTTP_STATUS = "HTTP_STATUS"
    NOT_JSON = "NOT_JSON"
    TOO_LARGE = "TOO_LARGE"
    REQUEST_FAILED = "REQUEST_FAILED"


@dataclasses.dataclass(frozen=True)
class ToolResult:
    """What goes back to the model: `output` is the tool's JSON text, or on error a sentence naming
    the cause; `failure` is None exactly when `is_error` is False."""

    output: str
    is_error: bool
    duration_ms: int
    failure: ToolFailure | None = None
