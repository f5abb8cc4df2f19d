"""The templates shipped with agentmesh: visible to every tenant, never deleted.

Their ids start with "builtin-", a prefix tenant templates never get (theirs are "tpl-<uuid>").
"""

from __future__ import annotations

from services.agents.models import Template

BUILTIN_PREFIX = "builtin-"


def builtin_templates() -> tuple[Template, ...]:
    """A fresh tuple each call: no module-level mutable state."""
    return (
        Template(
            id="builtin-assistant",
            tenant_id="",
            builtin=True,
            display_name="Assistant",
            description="A general-purpose helpful assistant.",
            config={
                "model": "echo:default",
                "system_prompt": "You are a helpful assistant. Answer clearly and concisely.",
                "temperature": 0.7,
                "busy_policy": "BUSY_POLICY_ENQUEUE",
                "context_policy": {"truncation": "TRUNCATION_STRATEGY_DROP_OLDEST"},
            },
        ),
        Template(
            id="builtin-support",
            tenant_id="",
            builtin=True,
            display_name="Customer support",
            description="Answers product questions politely and escalates what it cannot solve.",
            config={
                "model": "echo:default",
                "system_prompt": (
                    "You are a customer support agent. Be polite, ask for details when a question is "
                    "unclear, and say when a human should take over."
                ),
                "temperature": 0.3,
                "busy_policy": "BUSY_POLICY_ENQUEUE",
                "context_policy": {"truncation": "TRUNCATION_STRATEGY_DROP_OLDEST"},
            },
        ),
        Template(
            id="builtin-coder",
            tenant_id="",
            builtin=True,
            display_name="Coding helper",
            description="Explains and writes code; deterministic answers.",
            config={
                "model": "echo:default",
                "system_prompt": "You are a careful programmer. Show code in fenced blocks.",
                "temperature": 0.0,
                "busy_policy": "BUSY_POLICY_INTERRUPT",
                "context_policy": {"truncation": "TRUNCATION_STRATEGY_DROP_OLDEST"},
                "tools": [
                    {
                        "name": "run_tests",
                        "description": "Runs the project's tests and returns the summary.",
                        "parameters": {
                            "type": "object",
                            "properties": {"path": {"type": "string"}},
                        },
                    }
                ],
            },
        ),
    )


def find_builtin(template_id: str) -> Template | None:
    return next((t for t in builtin_templates() if t.id == template_id), None)
