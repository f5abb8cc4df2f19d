"""The tier table: the one place the limits of free, pro and enterprise are written down.

Identity puts the tier's name in the token; agents, orchestration and the rate limiter read the
limits from here. The README's tier table mirrors this (tests/test_tiers.py keeps them in step).
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
        ),
        TierLimits(
            name="pro",
            max_agents=50,
            allowed_models=("echo:*", "openai:*"),
            max_tools_per_agent=20,
            max_context_tokens=64_000,
            requests_per_minute=600,
            concurrent_runs=10,
        ),
        TierLimits(
            name="enterprise",
            max_agents=1_000,
            allowed_models=("echo:*", "openai:*"),
            max_tools_per_agent=64,
            max_context_tokens=200_000,
            requests_per_minute=6_000,
            concurrent_runs=100,
        ),
    )
}


def limits_for(tier: str) -> TierLimits:
    """The limits of a tier name as carried in a token."""
    try:
        return TIERS[tier]
    except KeyError:
        raise errors.PermissionDenied(f"unknown tier {tier!r}", reason="UNKNOWN_TIER") from None
