"""The tier table: the one place the limits of free, pro and enterprise are written down.

Identity puts the tier's name in the token; agents, orchestration and the rate limiter read the
limits from here. The README's tier table mirrors this (tests/test_docs.py keeps them in step).
"""

from __future__ import annotations

import dataclasses

from services.platform import errors


@dataclasses.dataclass(frozen=True, kw_only=True)
class TierLimits:
    name: str
    max_agents: int
    # "provider:model" patterns; "provider:*" allows every model of a provider.
    allowed_models: tuple[str, ...]
    max_tools_per_agent: int
    max_context_tokens: int
    requests_per_minute: int
    concurrent_runs: int
    # A run's agent loop: model steps, tool calls one step may ask for, wall-clock seconds.
    max_steps_per_run: int
    max_tool_calls_per_step: int
    max_run_seconds: int
    # An http tool's timeout_ms may not exceed this.
    max_tool_timeout_ms: int
    # Tokens (prompt + completion) a tenant may use per UTC month; 0 means unlimited. An operator
    # may set a tenant's own quota instead (conversation's tenant_quotas).
    monthly_tokens: int
    min_temperature: float = 0.0
    max_temperature: float = 2.0

    def allows_model(self, model: str) -> bool:
        provider = model.partition(":")[0]
        return model in self.allowed_models or f"{provider}:*" in self.allowed_models


TIERS: dict[str, TierLimits] = {
    t.name: t
    for t in (
        TierLimits(
            name="free",
            max_agents=3,
            allowed_models=("echo:*", "openai:gpt-4o-mini"),
            max_tools_per_agent=3,
            max_context_tokens=8_000,
            requests_per_minute=60,
            concurrent_runs=2,
            max_steps_per_run=4,
            max_tool_calls_per_step=4,
            max_run_seconds=120,
            monthly_tokens=200_000,
            max_tool_timeout_ms=10_000,
        ),
        TierLimits(
            name="pro",
            max_agents=50,
            allowed_models=("echo:*", "openai:*"),
            max_tools_per_agent=20,
            max_context_tokens=64_000,
            requests_per_minute=600,
            concurrent_runs=10,
            max_steps_per_run=16,
            max_tool_calls_per_step=16,
            max_run_seconds=600,
            monthly_tokens=20_000_000,
            max_tool_timeout_ms=30_000,
        ),
        TierLimits(
            name="enterprise",
            max_agents=1_000,
            allowed_models=("echo:*", "openai:*"),
            max_tools_per_agent=64,
            max_context_tokens=200_000,
            requests_per_minute=6_000,
            concurrent_runs=100,
            max_steps_per_run=64,
            max_tool_calls_per_step=64,
            max_run_seconds=1_800,
            monthly_tokens=0,
            max_tool_timeout_ms=120_000,
        ),
    )
}


def limits_for(tier: str) -> TierLimits:
    """The limits of a tier name as carried in a token."""
    try:
        return TIERS[tier]
    except KeyError:
        raise errors.PermissionDenied(f"unknown tier {tier!r}", reason="UNKNOWN_TIER") from None
