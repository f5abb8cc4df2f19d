"""Model providers: `echo` (default, offline) and `openai` (any OpenAI-compatible endpoint)."""

from __future__ import annotations

from services.orchestration.providers.base import (
    ChatMessage,
    Delta,
    ModelConfig,
    Provider,
    ProviderError,
    Providers,
    ToolCall,
    ToolSpec,
)
from services.orchestration.providers.echo import EchoProvider
from services.orchestration.providers.openai import OpenAIProvider
from services.platform.settings import Settings

__all__ = [
    "ChatMessage",
    "Delta",
    "EchoProvider",
    "ModelConfig",
    "OpenAIProvider",
    "Provider",
    "ProviderError",
    "Providers",
    "ToolCall",
    "ToolSpec",
    "from_settings",
]


def from_settings(settings: Settings) -> Providers:
    p = settings.providers
    delay_ms = p.echo_delay_ms if p.echo_delay_ms is not None else (30 if settings.embedded else 0)
    return Providers(
        {
            "echo": EchoProvider(delay_seconds=max(0, delay_ms) / 1000),
            "openai": OpenAIProvider(
                base_url=p.openai_base_url,
                api_key=p.openai_api_key,
                connect_timeout=p.openai_connect_timeout_seconds,
                read_timeout=p.openai_read_timeout_seconds,
            ),
        }
    )
