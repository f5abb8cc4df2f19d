"""The model provider interface: agent config, its tools and the context in; text deltas, the
model's tool calls and usage out. Tool calls travel both ways: an assistant message carries the
calls the model made, a "tool" message the result of one of them."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from services.orchestration.models import ResponseFormat, Usage


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """One call the model made: its id (the model's, or the provider's stand-in), the tool's name
    and the arguments as the JSON text the model wrote (not parsed: the loop validates it)."""

    id: str
    name: str
    arguments_json: str


@dataclasses.dataclass(frozen=True)
class ToolSpec:
    """A tool as the model is told about it; `parameters` is its JSON schema."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    # assistant: the calls the model made in this message (content may be empty then).
    tool_calls: tuple[ToolCall, ...] = ()
    # tool: the call this message is the result of.
    tool_call_id: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    # The model name after "provider:".
    model: str
    temperature: float | None = None
    max_output_tokens: int = 0
    # What the model may call; empty: a plain chat.
    tools: tuple[ToolSpec, ...] = ()
    # JSON_SCHEMA: the answer must be JSON matching the schema (the run checks it); None: text.
    response_format: ResponseFormat | None = None


@dataclasses.dataclass(frozen=True)
class Delta:
    text: str
    usage: Usage | None = None
    # Complete calls, in the model's order, on one delta once the answer is whole (a provider
    # streams a call's arguments in pieces; the loop only acts on whole calls).
    tool_calls: tuple[ToolCall, ...] = ()


class ProviderError(Exception):
    """A provider call failed; `code` is the gRPC status code name the run reports."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Provider(Protocol):
    def stream(self, config: ModelConfig, messages: list[ChatMessage]) -> AsyncIterator[Delta]: ...


class Providers:
    """Providers by name; `resolve("openai:gpt-4o-mini")` gives the provider and its model config."""

    def __init__(self, providers: Mapping[str, Provider]):
        self._providers = dict(providers)

    def resolve(self, model: str) -> tuple[Provider, str]:
        name, _, model_name = model.partition(":")
        provider = self._providers.get(name)
        if provider is None:
            raise ProviderError("FAILED_PRECONDITION", f"unknown model provider {name!r} in model {model!r}")
        return provider, model_name

    async def close(self) -> None:
        for provider in self._providers.values():
            close = getattr(provider, "close", None)
            if close is not None:
                await close()
