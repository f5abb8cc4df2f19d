"""The README's configuration and tier tables say what the code does."""

import re
from pathlib import Path

from services.platform.tiers import TIERS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_configuration_table_lists_every_variable_the_code_reads():
    code = "".join(p.read_text() for p in (ROOT / "services" / "platform").glob("*.py"))
    read = set(re.findall(r'"((?:AGENTMESH_[A-Z_]+)|DATABASE_URL|REDIS_URL)"', code))
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`((?:AGENTMESH_[A-Z_]+)|DATABASE_URL|REDIS_URL)`", table))
    assert read - documented == set(), "read by the code but not in the README"
    assert documented - read == set(), "in the README but read by no code"


def test_tier_table_matches_the_code():
    table = README.split("## Tiers", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0] in TIERS:
            rows[cells[0]] = cells
    assert set(rows) == set(TIERS)
    for name, tier in TIERS.items():
        _, agents, models, tools, context, rpm, runs = rows[name]
        number = lambda s: int(s.replace(",", ""))  # noqa: E731
        assert number(agents) == tier.max_agents
        assert sorted(re.findall(r"`([^`]+)`", models)) == sorted(tier.allowed_models)
        assert number(tools) == tier.max_tools_per_agent
        assert number(context) == tier.max_context_tokens
        assert number(rpm) == tier.requests_per_minute
        assert number(runs) == tier.concurrent_runs
