"""The README's configuration and tier tables say what the code does."""

import re
from pathlib import Path

from services.platform.settings import SETTINGS, markdown_table
from services.platform.tiers import TIERS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _configuration_section() -> str:
    return README.split("## Configuration", 1)[1].split("\n## ", 1)[0]


def test_configuration_table_is_the_one_the_settings_declare():
    """Variables, defaults and meanings come from services/platform/settings.py; paste
    `markdown_table()` into the README when a setting changes."""
    assert markdown_table() in _configuration_section()


def test_every_variable_the_platform_reads_is_declared():
    """A variable read by hand (os.environ, env.get) would bypass the declarations and the table."""
    code = "".join(p.read_text() for p in (ROOT / "services" / "platform").glob("*.py"))
    read = set(re.findall(r'"((?:AGENTMESH_[A-Z_]+)|DATABASE_URL|REDIS_URL)"', code))
    assert read - {s.variable for s in SETTINGS} == set()


def test_tier_table_matches_the_code():
    table = README.split("## Tiers", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0] in TIERS:
            rows[cells[0]] = cells
    assert set(rows) == set(TIERS)
    for name, tier in TIERS.items():
        _, agents, models, tools, context, rpm, runs, steps, calls, timeout, seconds, monthly = rows[name]
        number = lambda s: int(s.replace(",", ""))  # noqa: E731
        assert number(agents) == tier.max_agents
        assert sorted(re.findall(r"`([^`]+)`", models)) == sorted(tier.allowed_models)
        assert number(tools) == tier.max_tools_per_agent
        assert number(context) == tier.max_context_tokens
        assert number(rpm) == tier.requests_per_minute
        assert number(runs) == tier.concurrent_runs
        assert number(steps) == tier.max_steps_per_run
        assert number(calls) == tier.max_tool_calls_per_step
        assert number(timeout) == tier.max_tool_timeout_ms
        assert number(seconds) == tier.max_run_seconds
        assert (0 if monthly == "unlimited" else number(monthly)) == tier.monthly_tokens
