"""The model provider interface: agent config and context in, text deltas (and usage) out."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from services.orchestration.models import Usage


@dataclasses.dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant" | "tool"
    content: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    # The model name after "provider:".
    model: str
    temperature: float | None = None
    max_output_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class Delta:
    text: str
    usage: Usage | None = None


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
