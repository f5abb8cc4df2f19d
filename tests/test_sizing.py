"""The sizing table in docs/operations.md is what bench/sizing.py computes from the committed figures
(docs/sizing.json), the HorizontalPodAutoscalers in deploy/ are the ones it derives, and the
computation reads a benchmark report as `python -m bench` writes it (a figure the report lacks is
"not measured", never a number)."""

from __future__ import annotations

import collections
import json
import math
from typing import Any

import pytest
import yaml

from bench import sizing
from bench.harness import figure
from tests.test_deploy import DEPLOY, _container, _documents, _find


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    return dict(json.loads(sizing.FIGURES.read_text()))


def test_the_docs_table_is_the_one_the_figures_give(figures: dict[str, Any]) -> None:
    """After `python -m bench` and `python -m bench.sizing --measure`, `--write` puts it there."""
    assert sizing.docs_block() == sizing.render(figures)


def test_the_autoscalers_follow_the_sizing(figures: dict[str, Any]) -> None:
    docs = _documents()
    expected = sizing.autoscaling(figures)
    for name, want in expected.items():
        hpa = _find(docs, "HorizontalPodAutoscaler", name)
        spec = hpa["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert spec["minReplicas"] == want["minReplicas"]
        (metric,) = spec["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"] == {
            "type": "Utilization",
            "averageUtilization": want["averageUtilization"],
        }
        marked = hpa["metadata"].get("annotations", {}).get("agentmesh.dev/sizing")
        if want["maxReplicas"] is None:
            # No measured figure to size it from: the manifest says so instead of passing a guess off.
            assert marked == "not measured"
        else:
            assert marked is None
            assert spec["maxReplicas"] == want["maxReplicas"]
        deployment = _find(docs, "Deployment", name)
        # The HPA owns the count; the target is a share of the one core the figures were measured on.
        assert "replicas" not in deployment["spec"]
        assert _container(deployment)["resources"]["requests"]["cpu"] == "1000m"
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert "autoscaling.yaml" in kustomization["resources"]


def _report(*lines: str) -> str:
    return "\n".join(["- started: 2026-12-03 10:00:00 (UTC), total 9 min", "", *lines, ""])


def test_the_report_is_read_and_what_it_lacks_is_not_measured() -> None:
    report = _report(
        "| chat_load | 300 paced chats, agentmesh serve (process per service): time to first delta p99 | 1.2 | x | y | yes |",
        "| chat_load | 300 paced chats, agentmesh serve (process per service): delivered pace | 0.99 | x | y | yes |",
        "| chat_load | 300 paced chats, agentmesh serve (process per service): worst gap between deltas p99 | 2 | x | y | yes |",
        "- **Login throughput, bounded by argon2id (c=4)**: Login 40.0/s p50 100.0 ms; argon2id verify alone 51.1/s.",
        "- **300 paced chats, agentmesh serve (process per service): time to first delta p99**: p50 30 ms, p99 120 ms.",
    )
    read = sizing.read_report(report)
    assert read["identity_logins_per_s"] == {"per_s": 40.0, "p50_ms": 100.0}
    assert read["orchestration_paced_chats"] == {"chats": 300, "ttfd_p99_ms": 120.0, "targets_met": True}
    assert read["conversation_appends_per_s"] is None
    assert read["report_started"] == "2026-12-03 10:00:00"

    figures = read | {"assumptions": sizing.ASSUMPTIONS}
    planned = sizing.plan(figures)
    a = sizing.ASSUMPTIONS
    streams = a["chats"] * (a["answer_tokens"] / a["tokens_per_second"]) / a["message_interval_seconds"]
    assert planned["replicas"]["orchestration"] == math.ceil(streams / (300 * a["headroom"]))
    assert planned["replicas"]["identity"] == 1
    assert planned["replicas"]["conversation"] is None
    table = sizing.render(figures)
    assert "| conversation | not measured appends/s | not measured |" in table
    assert "Redis commands | not measured |" in table
    assert sizing.autoscaling(figures)["conversation"]["maxReplicas"] is None


def test_a_figure_the_harness_formats_is_found() -> None:
    """The figure texts are bench/identity.py's and bench/gateway.py's own formats, via the harness."""
    login = figure(
        "Login throughput, bounded by argon2id (c=4)",
        "Login 39.2/s p50 99.1 ms; argon2id verify alone 51.1/s",
    )
    events = figure(
        "WebSocket events per second, one stream of 2002 events",
        "WebSocket 4,127 events/s; gRPC directly 7,195 events/s",
    )
    text = _report(*(f"- **{f.name}**: {f.measured}." for f in (login, events)))
    read = sizing.read_report(text)
    assert read["identity_logins_per_s"] == {"per_s": 39.2, "p50_ms": 99.1}
    assert read["gateway_ws_events_per_s"] == 4127.0


def test_paced_chats_held_past_their_targets_size_nothing() -> None:
    report = _report(
        "| chat_load | 500 paced chats, agentmesh serve (process per service): time to first delta p99 | 9.0 | x | y | **no** |",
        "| chat_load | 500 paced chats, agentmesh serve (process per service): delivered pace | 0.99 | x | y | yes |",
        "- **500 paced chats, agentmesh serve (process per service): time to first delta p99**: p50 90 ms, p99 900 ms.",
    )
    read = sizing.read_report(report)
    assert read["orchestration_paced_chats"] == {"chats": 500, "ttfd_p99_ms": 900.0, "targets_met": False}
    figures = read | {"assumptions": sizing.ASSUMPTIONS}
    assert sizing.plan(figures)["replicas"]["orchestration"] is None
    assert "not sized: targets not met at 500" in sizing.render(figures)
    # A second report fills only what the first lacks.
    other = sizing.read_report(_report("- **Login throughput (c=4)**: Login 10.0/s p50 50.0 ms; more."))
    merged = sizing.merge_reports([read, other])
    assert merged["orchestration_paced_chats"] == read["orchestration_paced_chats"]
    assert merged["identity_logins_per_s"] == {"per_s": 10.0, "p50_ms": 50.0}


def _chat_load_output(rows: dict[int, tuple[float, float, int]]) -> str:
    """bench/chat_load.py's printed tables (its own report()), the services side at each N with
    (TTFD in s, delivered tokens/s, failed chats), a LangGraph row beside it."""
    from bench import chat_load

    lines = ["chat load: 50-word messages, echo every 20 ms (51 tokens, 50 tokens/s)"]
    for n, (ttfd, pace, failed) in rows.items():

        def side(name: str, ttfd: float, pace: float, failed: int, n: int = n) -> chat_load.Measured:
            failures = collections.Counter({"UNAVAILABLE": failed} if failed else {})
            return chat_load.Measured(
                name, n, [ttfd] * n, [pace] * n, [0.03] * n, failures, 1.0, 1.0, 2**20, 2**21, 3
            )

        measured = [side("langgraph", 0.05, 50.0, 0), side("services", ttfd, pace, failed)]
        lines += chat_load.report(n, measured, 50.0)
    return "\n".join(lines) + "\n"


def test_paced_chats_are_sized_at_the_largest_n_that_met_the_stated_target() -> None:
    text = _chat_load_output(
        {50: (0.1, 49.0, 0), 200: (0.5, 46.0, 0), 400: (0.6, 47.0, 2), 500: (2.0, 45.0, 0)}
    )
    paced = sizing.read_report(text)["orchestration_paced_chats"]
    assert paced["chats"] == 200 and paced["targets_met"]
    assert paced["ttfd_p99_ms"] == 500.0 and paced["pace_ratio"] == 0.92
    assert paced["tried"] == [50, 200, 400, 500]
    figures = sizing.merge_reports([sizing.read_report(text), sizing.read_report(_report())])
    figures["assumptions"] = sizing.ASSUMPTIONS
    a = sizing.ASSUMPTIONS
    streams = a["chats"] * (a["answer_tokens"] / a["tokens_per_second"]) / a["message_interval_seconds"]
    assert sizing.plan(figures)["replicas"]["orchestration"] == math.ceil(streams / (200 * a["headroom"]))
    assert (
        "200 concurrent paced chats (targets met: TTFD p99 <= 1 s, delivered pace >= 0.9 of the "
        "provider's, no chat failed; the largest of 50, 200, 400, 500 tried)" in sizing.render(figures)
    )

    # None met (too slow, or slow to start): not sized, at the smallest N tried.
    none = sizing.paced_capacity(_chat_load_output({100: (0.2, 40.0, 0), 300: (1.5, 49.0, 0)}))
    assert none is not None and none["chats"] == 100 and not none["targets_met"]
    assert sizing.paced_capacity("no tables here") is None
