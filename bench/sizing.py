"""Sizing: docs/operations.md's capacity table, computed from measured figures.

    python -m bench.sizing --measure [--messages 40]   # count operations, read docs/benchmarks.md,
                                                       # write docs/sizing.json
    python -m bench.sizing                             # print the table docs/sizing.json gives
    python -m bench.sizing --write                     # put that table into docs/operations.md

`--measure` does two things. It counts PostgreSQL and Redis operations per chat message: `agentmesh
up` on a fresh PostgreSQL database and this run's own redis-server (bench/chat_servers.py's
"postgres" side, echo paced at `--delay-ms` per token as bench/chat_load.py paces it, so deltas
coalesce as they would in a real chat), one session, `--messages` chat messages one after another;
PostgreSQL's pg_stat_database counters of that database (transactions, rows written and read) and
Redis's INFO commandstats, each taken before and after, less what the idle server does in as long
(health probes, lease sweeps: measured first, for the same time). And it reads the per-process
figures from the committed benchmark report (docs/benchmarks.md, written by `python -m bench`);
a figure the report lacks is "not measured" in the table. Orchestration's concurrent paced chats are
the largest N of bench/chat_load.py's per-N tables (in its printed output, or in a report's raw
output; `--report` takes either) at which the process kept PACED_TARGET. tests/test_sizing.py checks that the
table in docs/operations.md is the one `render(docs/sizing.json)` gives.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import pathlib
import re
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "benchmarks.md"
FIGURES = ROOT / "docs" / "sizing.json"
OPERATIONS = ROOT / "docs" / "operations.md"
BEGIN = "<!-- sizing table: python -m bench.sizing --write -->"
END = "<!-- end of sizing table -->"

# What a "concurrent chat" is for the totals: one user in a conversation who sends a message every
# `message_interval_seconds`; the answer streams `answer_tokens` at `tokens_per_second`. Capacity is
# planned at `headroom` of what one process held in the benchmarks.
ASSUMPTIONS = {
    "chats": 10_000,
    "message_interval_seconds": 30.0,
    "answer_tokens": 51,
    "tokens_per_second": 50.0,
    "logins_per_chat_per_hour": 1.0,
    "headroom": 0.7,
    "db_pool_per_process": 16,
    # AGENTMESH_RUN_EVENT_RETENTION_SECONDS's default: how long a run's events stay in Redis.
    "event_retention_seconds": 3600,
}

# (key, figure name prefix in the report, regex over the figure's text, group -> float)
_EXTRACT = [
    ("identity_logins_per_s", "Login throughput", r"Login ([\d,.]+)/s p50 ([\d,.]+) ms"),
    (
        "conversation_appends_per_s",
        "AppendMessage on PostgreSQL, 32 concurrent writers",
        r"^([\d,.]+) msg/s, p50 ([\d,.]+) ms",
    ),
    (
        "gateway_requests_per_s",
        "unary GetJwks through the gateway against direct gRPC (c=8)",
        r"gateway p50 ([\d,.]+) ms ([\d,.]+)/s",
    ),
    ("gateway_ws_events_per_s", "WebSocket events per second", r"WebSocket ([\d,.]+) events/s"),
    ("gateway_kb_per_socket", "RSS of the gateway process", r"\(([\d,.]+) KB per socket\)"),
]
_PACED = re.compile(r"^(\d+) paced chats, ([^:]+): time to first delta p99$")

# The latency an orchestration process must keep for a number of concurrent paced chats to count as
# held (its row in the table states it): the first delta within a second for 99% of the chats, the
# answer delivered at 90% of the provider's pace or better, and no chat failed.
PACED_TARGET = {"ttfd_p99_ms": 1000.0, "pace_ratio": 0.9}
PACED_TARGET_TEXT = "TTFD p99 <= 1 s, delivered pace >= 0.9 of the provider's, no chat failed"
# bench/chat_load.py's printed tables (in its output, and in the raw output of a `python -m bench`
# report): "<N> concurrent chats", then a row per side; the `agentmesh serve` side is the one with
# an orchestration process of its own. Columns: TTFD p50, p99 ms, tok/s, /prov, gap p99, failed, ...
_CHATS_BLOCK = re.compile(r"^(\d+) concurrent chats$", re.M)
_SERVICES_ROW = re.compile(
    r"^  agentmesh serve \(process per service\) +(\S+) +(\S+) +(\S+) +(\S+) +(\S+) +(\d+) ", re.M
)


def paced_capacity(text: str) -> dict[str, Any] | None:
    """The largest N of bench/chat_load.py's tables at which the `agentmesh serve` side met
    PACED_TARGET (the smallest N tried, marked not met, when none did); None without such a table."""
    blocks = list(_CHATS_BLOCK.finditer(text))
    tried: dict[int, tuple[float, float, int]] = {}
    for i, block in enumerate(blocks):
        end = blocks[i + 1].start() if i + 1 < len(blocks) else len(text)
        row = _SERVICES_ROW.search(text, block.end(), end)
        if row:
            tried[int(block.group(1))] = (float(row.group(2)), float(row.group(4)), int(row.group(6)))
    if not tried:
        return None
    met = [
        n
        for n, (p99, pace, failed) in tried.items()
        if p99 <= PACED_TARGET["ttfd_p99_ms"] and pace >= PACED_TARGET["pace_ratio"] and failed == 0
    ]
    n = max(met) if met else min(tried)
    p99, pace, _ = tried[n]
    return {
        "chats": n,
        "ttfd_p99_ms": p99,
        "pace_ratio": pace,
        "targets_met": bool(met),
        "target": PACED_TARGET_TEXT,
        "tried": sorted(tried),
    }


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def read_report(text: str) -> dict[str, Any]:
    """The figures the table needs, from a report `python -m bench` wrote (None: not in it)."""
    details = dict(re.findall(r"^- \*\*(.+?)\*\*: (.*)\.$", text, flags=re.M))
    out: dict[str, Any] = {}
    for key, prefix, pattern in _EXTRACT:
        found = next((v for k, v in details.items() if k.startswith(prefix)), None)
        match = re.search(pattern, found) if found else None
        if match is None:
            out[key] = None
        elif key == "gateway_requests_per_s":
            out[key] = {"per_s": _number(match.group(2)), "p50_ms": _number(match.group(1))}
        elif match.re.groups == 2:
            out[key] = {"per_s": _number(match.group(1)), "p50_ms": _number(match.group(2))}
        else:
            out[key] = _number(match.group(1))
    # bench/chat_load.py: the largest N of paced chats one orchestration process (the `agentmesh serve`
    # side: a process per service) held, with its TTFD p99 and whether the summary says it met its targets.
    out["orchestration_paced_chats"] = None
    met = dict(re.findall(r"^\| chat_load \| (.+?) \|.*\| (yes|\*\*no\*\*|n/a) \|$", text, flags=re.M))
    for name, measured in details.items():
        m = _PACED.match(name)
        if m and "serve" in m.group(2):
            p99 = re.search(r"p99 ([\d,.]+) ms", measured)
            side = f"{m.group(1)} paced chats, {m.group(2)}"
            # Its three targets: time to first delta, delivered pace, worst gap.
            targets = [name, f"{side}: delivered pace", f"{side}: worst gap between deltas p99"]
            out["orchestration_paced_chats"] = {
                "chats": int(m.group(1)),
                "ttfd_p99_ms": _number(p99.group(1)) if p99 else None,
                "targets_met": all(met.get(t) == "yes" for t in targets),
            }
    # chat_load's per-N tables, where the text has them, size it against PACED_TARGET instead.
    out["orchestration_paced_chats"] = paced_capacity(text) or out["orchestration_paced_chats"]
    started = re.search(r"^- started: (.+?) \(UTC\)", text, flags=re.M)
    out["report_started"] = started.group(1) if started else None
    return out


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure from the first report that has it; the reports' start times, in order."""
    merged: dict[str, Any] = {}
    for key in reports[0]:
        merged[key] = next((r[key] for r in reports if r.get(key) is not None), None)
    merged["report_started"] = ", ".join(str(r["report_started"]) for r in reports if r.get("report_started"))
    return merged


def _ceil(value: float) -> int:
    return max(1, math.ceil(value - 1e-9))


def plan(figures: dict[str, Any]) -> dict[str, Any]:
    """The loads of ASSUMPTIONS' chats and the processes they need, from the measured figures."""
    a = figures.get("assumptions", ASSUMPTIONS)
    chats = a["chats"]
    messages_per_s = chats / a["message_interval_seconds"]
    stream_seconds = a["answer_tokens"] / a["tokens_per_second"]
    loads = {
        "streams": chats * stream_seconds / a["message_interval_seconds"],
        "messages_per_s": messages_per_s,
        "appends_per_s": 2 * messages_per_s,  # the user's message and the answer
        "events_per_s": messages_per_s * (a["answer_tokens"] + 3),  # deltas + started, completed, created
        "logins_per_s": chats * a["logins_per_chat_per_hour"] / 3600,
        "sockets": chats,
    }
    h = a["headroom"]
    replicas: dict[str, int | None] = {}
    paced = figures.get("orchestration_paced_chats")
    # A load held only with the latency targets missed is no capacity to plan on.
    held = paced and paced["targets_met"]
    replicas["orchestration"] = _ceil(loads["streams"] / (paced["chats"] * h)) if held else None
    appends = figures.get("conversation_appends_per_s")
    replicas["conversation"] = _ceil(loads["appends_per_s"] / (appends["per_s"] * h)) if appends else None
    logins = figures.get("identity_logins_per_s")
    replicas["identity"] = _ceil(loads["logins_per_s"] / (logins["per_s"] * h)) if logins else None
    events = figures.get("gateway_ws_events_per_s")
    replicas["gateway"] = _ceil(loads["events_per_s"] / (events * h)) if events else None
    pg, rd = figures.get("postgres_per_message"), figures.get("redis_per_message")
    store = {
        "pg_transactions_per_s": pg and messages_per_s * pg["transactions"],
        "pg_rows_written_per_s": pg and messages_per_s * pg["rows_written"],
        # The gateway holds no database pool.
        "pg_connections": sum(replicas[n] or 0 for n in ("orchestration", "conversation", "identity"))
        * a["db_pool_per_process"],
        "redis_commands_per_s": rd and messages_per_s * rd["commands"],
        "pg_bytes_per_day": pg and messages_per_s * 86_400 * pg.get("bytes", 0),
        "redis_bytes": rd and messages_per_s * a["event_retention_seconds"] * rd.get("bytes", 0),
    }
    return {"assumptions": a, "loads": loads, "replicas": replicas, "store": store}


# The processes the table sizes from per-core figures; their pods request one core, so an HPA's
# CPU target is the planning headroom of that core.
SIZED = ("orchestration", "conversation", "identity", "gateway")
MIN_REPLICAS = 2  # one pod may restart or roll while the other serves


def autoscaling(figures: dict[str, Any]) -> dict[str, dict[str, int | None]]:
    """The HorizontalPodAutoscaler each sized process should have (deploy/autoscaling.yaml): CPU
    target at the headroom, at least MIN_REPLICAS, at most twice the replicas of the planned chats
    (room for bursts past the plan); maxReplicas None when the figure is not measured."""
    p = plan(figures)
    out: dict[str, dict[str, int | None]] = {}
    for name in SIZED:
        replicas = p["replicas"][name]
        out[name] = {
            "minReplicas": MIN_REPLICAS,
            "maxReplicas": None if replicas is None else max(MIN_REPLICAS, 2 * replicas),
            "averageUtilization": round(p["assumptions"]["headroom"] * 100),
        }
    return out


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "not measured"
    return f"{value:,.{digits}f}"


def render(figures: dict[str, Any]) -> str:
    """The markdown block of docs/operations.md (between BEGIN and END)."""
    p = plan(figures)
    a, loads, replicas, store = p["assumptions"], p["loads"], p["replicas"], p["store"]
    paced = figures.get("orchestration_paced_chats")
    appends = figures.get("conversation_appends_per_s")
    logins = figures.get("identity_logins_per_s")
    events = figures.get("gateway_ws_events_per_s")
    unary = figures.get("gateway_requests_per_s")
    kb = figures.get("gateway_kb_per_socket")
    pg, rd = figures.get("postgres_per_message"), figures.get("redis_per_message")

    def reps(name: str) -> str:
        if replicas[name] is not None:
            return str(replicas[name])
        if name == "orchestration" and paced:
            return f"not sized: targets not met at {paced['chats']:,}"
        return "not measured"

    rows = [
        "| process | what one process (one core) held in the benchmarks | latency there | "
        f"load of {a['chats']:,} chats | replicas (at {a['headroom']:.0%} of it) |",
        "|---|---|---|---|---|",
        "| orchestration | "
        + (
            f"{paced['chats']:,} concurrent paced chats (targets {'met' if paced['targets_met'] else '**not met**'}"
            + (
                f": {paced['target']}; the largest of {', '.join(f'{n:,}' for n in paced['tried'])} tried"
                if "target" in paced
                else ""
            )
            + ")"
            if paced
            else f"concurrent paced chats: not measured (target: {PACED_TARGET_TEXT})"
        )
        + f" | {'TTFD p99 ' + _fmt(paced['ttfd_p99_ms']) + ' ms' if paced and paced['ttfd_p99_ms'] else 'not measured'}"
        + f" | {_fmt(loads['streams'])} answers streaming at once | {reps('orchestration')} |",
        f"| conversation | {_fmt(appends and appends['per_s'])} appends/s | "
        f"{'p50 ' + _fmt(appends['p50_ms'], 1) + ' ms' if appends else 'not measured'} | "
        f"{_fmt(loads['appends_per_s'])} appends/s | {reps('conversation')} |",
        f"| identity | {_fmt(logins and logins['per_s'], 1)} logins/s | "
        f"{'p50 ' + _fmt(logins['p50_ms'], 1) + ' ms' if logins else 'not measured'} | "
        f"{_fmt(loads['logins_per_s'], 1)} logins/s | {reps('identity')} |",
        f"| gateway | {_fmt(events)} WebSocket events/s (one stream: a floor of what it moves); "
        f"{_fmt(unary and unary['per_s'])} "
        f"unary requests/s (c=8); {_fmt(kb, 1)} KB per open WebSocket | "
        f"{'unary p50 ' + _fmt(unary['p50_ms'], 2) + ' ms' if unary else 'not measured'} | "
        f"at most {_fmt(loads['events_per_s'])} events/s (one per token), {a['chats']:,} sockets "
        f"({_fmt(kb and kb * a['chats'] / 1024)} MB of sockets in all) | {reps('gateway')} |",
    ]
    per_message = [
        f"| per chat message (user message + {a['answer_tokens']}-token answer paced at "
        f"{figures.get('echo_delay_ms', '?')} ms a token; {figures.get('messages_counted', '?')} messages "
        "counted, the idle server's own operations taken out) | measured |",
        "|---|---|",
        f"| PostgreSQL transactions | {_fmt(pg and pg['transactions'], 1)} |",
        f"| PostgreSQL rows written (inserted + updated + deleted) | {_fmt(pg and pg['rows_written'], 1)} |",
        "| PostgreSQL bytes stored (pg_database_size growth, whole pages, before any vacuum: an upper "
        f"bound) | {_fmt(pg and pg.get('bytes'))} |",
        f"| Redis commands | {_fmt(rd and rd['commands'], 1)} |",
        f"| Redis memory left behind (run events, kept {a['event_retention_seconds']:,} s; hot window) | "
        f"{_fmt(rd and rd.get('bytes'))} bytes |",
        "| Redis commands, the most frequent | "
        + (
            ", ".join(
                f"{name} {count:.1f}" for name, count in sorted(rd["top"].items(), key=lambda kv: -kv[1])
            )
            if rd
            else "not measured"
        )
        + " |",
    ]
    totals = [
        f"| for {a['chats']:,} chats | |",
        "|---|---|",
        f"| chat messages | {_fmt(loads['messages_per_s'])}/s |",
        f"| PostgreSQL | {_fmt(store['pg_transactions_per_s'])} transactions/s, "
        f"{_fmt(store['pg_rows_written_per_s'])} rows written/s; {store['pg_connections']:,} "
        f"connections from the services' replicas above ({a['db_pool_per_process']} per process"
        + ("; orchestration's not counted: not sized" if replicas["orchestration"] is None else "")
        + "; put PgBouncer in front past the server's max_connections) |",
        f"| PostgreSQL storage | {_fmt(store['pg_bytes_per_day'] and store['pg_bytes_per_day'] / 2**30, 1)} GiB "
        "more a day (before retention erases closed conversations) |",
        f"| Redis | {_fmt(store['redis_commands_per_s'])} commands/s; "
        f"{_fmt(store['redis_bytes'] and store['redis_bytes'] / 2**30, 2)} GiB of memory for the run events of "
        f"the last {a['event_retention_seconds']:,} s (set maxmemory above it, with room for the pools' "
        "connections) |",
    ]
    hpa = autoscaling(figures)
    scaling = [
        "| HorizontalPodAutoscaler (deploy/autoscaling.yaml; pods request one core) | min | max | CPU target |",
        "|---|---|---|---|",
        *(
            f"| {name} | {h['minReplicas']} | "
            f"{'not sized (figure not measured)' if h['maxReplicas'] is None else h['maxReplicas']} | "
            f"{h['averageUtilization']}% |"
            for name, h in hpa.items()
        ),
    ]
    source = figures.get("report_started") or "unknown"
    intro = (
        f"Computed by `python -m bench.sizing` from docs/sizing.json (the figures of the benchmark "
        f"report(s) started {source} UTC, and the operation counts of `python -m bench.sizing --measure`). "
        f"A chat here is one user sending a message every {a['message_interval_seconds']:g} s and "
        f"reading a {a['answer_tokens']}-token answer streamed at {a['tokens_per_second']:g} tokens/s; "
        f"{a['logins_per_chat_per_hour']:g} login(s) per user an hour. A figure the report "
        'lacks is "not measured": run `python -m bench`, then `python -m bench.sizing --measure --write`.'
    )
    return "\n".join([BEGIN, "", intro, "", *rows, "", *per_message, "", *totals, "", *scaling, "", END])


def write_docs(block: str, path: pathlib.Path = OPERATIONS) -> None:
    text = path.read_text()
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        raise SystemExit(f"{path} has no {BEGIN!r} marker")
    path.write_text(text)


def docs_block(path: pathlib.Path = OPERATIONS) -> str:
    text = path.read_text()
    return BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END


# Counting operations ------------------------------------------------------------------------------


def _pg_counters(server: str, database: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback, tup_inserted + tup_updated + tup_deleted, "
            "pg_database_size(datname) FROM pg_stat_database WHERE datname = %s",
            (database,),
        ).fetchone()
    assert row is not None
    return {
        "transactions": int(row[0]),
        "rows_written": int(row[1]),
        "bytes": int(row[2]),
    }


def _redis_counters(url: str) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
        memory = int(client.info("memory")["used_memory"])
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()} | {
        "~used_memory": memory
    }


def _minus(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


async def count_operations(messages: int, pg_server: str, delay_ms: int) -> dict[str, Any]:
    """PostgreSQL and Redis operations per chat message, less the idle server's own."""
    import grpc

    from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
    from agentmesh.orchestration.v1 import orchestration_service_pb2_grpc as pb_grpc
    from bench.__main__ import fresh_database, own_redis
    from bench.chat_client import chat
    from bench.chat_servers import Sides

    with contextlib.ExitStack() as stack:
        workdir = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentmesh-sizing-")))
        url = stack.enter_context(fresh_database(pg_server))
        database = url.rsplit("/", 1)[1]
        redis_url = stack.enter_context(own_redis())
        sides = Sides(
            workdir,
            delay_ms=delay_ms,
            tenants=1,
            per_tenant=1,
            redis_url=redis_url,
            database_urls={"postgres": url},
            langgraph_python=pathlib.Path("/nonexistent"),
        )
        async with sides.serve("postgres") as running:
            spec = await running.spec(1)
            group = spec["groups"][0]
            md = (("authorization", f"Bearer {group['token']}"),)
            async with grpc.aio.insecure_channel(spec["address"]) as channel:
                stub = pb_grpc.OrchestrationServiceStub(channel)
                session = await stub.StartSession(
                    pb.StartSessionRequest(agent_id=group["agent_id"]), metadata=md, timeout=60
                )
                warm = await chat(stub, md, session.session.id, "warm up", 60)
                assert not warm["error"], warm
                await asyncio.sleep(1)
                # The idle server's own operations (health probes, sweeps, lease renewals) over a while.
                pg0, rd0, t0 = _pg_counters(pg_server, database), _redis_counters(redis_url), time.monotonic()
                await asyncio.sleep(10)
                pg1, rd1, t1 = _pg_counters(pg_server, database), _redis_counters(redis_url), time.monotonic()
                for i in range(messages):
                    done = await chat(stub, md, session.session.id, f"message {i} " + "word " * 20, 60)
                    assert not done["error"], done
                await asyncio.sleep(0.5)
                pg2, rd2, t2 = _pg_counters(pg_server, database), _redis_counters(redis_url), time.monotonic()
    idle_share = (t2 - t1) / (t1 - t0)
    pg_idle, pg_busy = _minus(pg1, pg0), _minus(pg2, pg1)
    rd_idle, rd_busy = _minus(rd1, rd0), _minus(rd2, rd1)
    # The counters' own reads (commandstats by INFO, pg_stat by this connection) are in both spans.
    pg = {k: max(0.0, (pg_busy[k] - pg_idle[k] * idle_share) / messages) for k in pg_busy if k != "bytes"}
    # Table files grow by pages: a level over all the messages, not a rate.
    pg["bytes"] = max(0.0, pg_busy["bytes"] / messages)
    # Memory is a level, not a count: what the messages left behind (run streams, hot windows).
    redis_bytes = rd_busy.pop("~used_memory") / messages
    rd_idle.pop("~used_memory")
    per_command = {
        k: max(0.0, (v - rd_idle.get(k, 0) * idle_share) / messages)
        for k, v in rd_busy.items()
        if k != "info"
    }
    top = dict(sorted(((k, v) for k, v in per_command.items() if v >= 0.05), key=lambda kv: -kv[1])[:6])
    return {
        "postgres_per_message": {k: round(v, 2) for k, v in pg.items()},
        "redis_per_message": {
            "bytes": round(redis_bytes),
            "commands": round(sum(per_command.values()), 2),
            "top": {k: round(v, 2) for k, v in top.items()},
        },
        "messages_counted": messages,
        "echo_delay_ms": delay_ms,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sizing", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--measure", action="store_true", help="count operations, read the report, write --figures"
    )
    parser.add_argument("--write", action="store_true", help="put the table into docs/operations.md")
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--delay-ms", type=int, default=20, help="the echo provider's pause per token")
    parser.add_argument(
        "--report",
        type=pathlib.Path,
        nargs="+",
        default=[REPORT],
        help="benchmark reports, in order of preference (a figure is taken from the first that has it)",
    )
    parser.add_argument("--figures", type=pathlib.Path, default=FIGURES)
    parser.add_argument("--pg-server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    if args.measure:
        figures = merge_reports([read_report(path.read_text()) for path in args.report])
        figures.update(asyncio.run(count_operations(args.messages, args.pg_server, args.delay_ms)))
        figures["assumptions"] = ASSUMPTIONS
        args.figures.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.figures}")
    block = render(json.loads(args.figures.read_text()))
    if args.write:
        write_docs(block)
        print(f"wrote the table into {OPERATIONS}")
    else:
        print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
