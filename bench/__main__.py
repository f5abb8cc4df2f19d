"""Every benchmark of steps 1 to 6 in one run, on real PostgreSQL and Redis; writes docs/benchmarks.md.

    python -m bench                    # make bench: the sizes of the report (about 10 minutes, 2 cores)
    python -m bench --smoke            # every benchmark at minimal sizes (seconds; what CI runs)
    python -m bench --only agents gateway --output /tmp/b.md

Each benchmark gets a fresh PostgreSQL database (created on --pg-server, dropped after) and an empty
Redis: the run starts a `redis-server` of its own on a free port (nothing on disk) and flushes it
between benchmarks, so no Redis it did not start is ever emptied (or pass --redis-url to use and
flush one you name). The report holds,
per figure, the ratio measured in the same run against its reference, the issue's target beside it,
the machine and this exact command. It is only ever written by this command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import psycopg
import redis as sync_redis

from bench import admission, agents, chat_load, conversation, gateway, identity, metering, orchestration
from bench import platform as platform_bench
from bench.harness import Figure

PG_SERVER = os.environ.get("AGENTMESH_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
OUTPUT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    issue: str
    run: Callable[[list[str]], Awaitable[list[Figure]]]
    full: tuple[str, ...]
    smoke: tuple[str, ...]
    # Whether the module takes --database-url / --redis-url (the gateway's upstreams are fakes).
    storage: bool = True


BENCHMARKS = (
    Benchmark(
        "platform",
        "step 1 (issue 2): shared runtime",
        platform_bench.main,
        ("--seconds", "4", "--concurrency", "16"),
        ("--seconds", "0.3", "--concurrency", "4"),
    ),
    Benchmark(
        "identity",
        "step 2 (issue 3): identity",
        identity.main,
        ("--seconds", "2", "--rounds", "3", "--verify-calls", "2000"),
        ("--seconds", "0.3", "--rounds", "1", "--verify-calls", "50", "--login-concurrency", "2"),
    ),
    Benchmark(
        "agents",
        "step 3 (issue 4): agents",
        agents.main,
        ("--agents", "10000", "--page", "100", "--seconds", "3"),
        ("--agents", "120", "--page", "3", "--seconds", "0.4", "--concurrency", "4"),
    ),
    Benchmark(
        "conversation",
        "step 4 (issue 5): conversation",
        conversation.main,
        ("--seconds", "3", "--writers", "32", "--history", "100000", "--messages", "1000000"),
        ("--seconds", "0.3", "--writers", "4", "--history", "200", "--messages", "1000"),
    ),
    Benchmark(
        "orchestration",
        "step 5 (issue 6): orchestration",
        orchestration.main,
        ("--runs", "200", "--concurrency", "200", "--words", "50", "--tool-runs", "100"),
        ("--runs", "5", "--concurrency", "5", "--words", "5", "--tool-runs", "3"),
    ),
    Benchmark(
        "chat_load",
        "step 11 (issue 15): concurrent paced chats against the LangGraph Agent Server",
        chat_load.main,
        ("--chats", "1", "50", "200", "500"),
        # `up` on PostgreSQL is the embedded side's code with two variables: left out of the smoke
        # run, which every benchmark shares with CI's 300 s test limit.
        (
            "--chats",
            "2",
            "--words",
            "5",
            "--timeout",
            "30",
            "--settle",
            "0.2",
            "--sides",
            "floor",
            "langgraph",
            "embedded",
            "services",
        ),
    ),
    Benchmark(
        "metering",
        "step 12 (issue 16): run admission with the quota check",
        metering.main,
        ("--runs", "50", "--rounds", "3"),
        ("--runs", "3", "--rounds", "1"),
    ),
    Benchmark(
        "admission",
        "step 11 (issue 15): run admission CPU",
        admission.main,
        ("--runs", "100", "--rounds", "3"),
        ("--runs", "3", "--rounds", "1"),
    ),
    Benchmark(
        "gateway",
        "step 6 (issue 7): gateway",
        gateway.main,
        ("--seconds", "2", "--concurrency", "8", "--sockets", "1000", "--runs", "50"),
        ("--seconds", "0.3", "--concurrency", "2", "--sockets", "10", "--runs", "3", "--rounds", "1"),
        storage=False,
    ),
)


@dataclasses.dataclass
class Outcome:
    benchmark: Benchmark
    argv: list[str]
    figures: list[Figure]
    seconds: float
    output: str
    error: str = ""


@contextlib.contextmanager
def fresh_database(server: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (SQLAlchemy URL), dropped afterwards."""
    name = f"agentmesh_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = server.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def flush(redis_url: str) -> None:
    client = sync_redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()


class _Tee(io.TextIOBase):
    """Prints through to the terminal and keeps a copy for the report."""

    def __init__(self, target: Any):
        self.target = target
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        self.target.write(text)
        self.copy.write(text)
        return len(text)

    def flush(self) -> None:
        self.target.flush()


async def run_one(bench: Benchmark, *, smoke: bool, pg_server: str, redis_url: str | None) -> Outcome:
    argv = list(bench.smoke if smoke else bench.full)
    tee = _Tee(sys.stdout)
    started = time.perf_counter()
    figures: list[Figure] = []
    error = ""
    print(f"\n== {bench.name}: python -m bench.{bench.name} {shlex.join(argv)}", flush=True)
    try:
        with contextlib.ExitStack() as stack:
            if bench.storage:
                url = stack.enter_context(fresh_database(pg_server))
                assert redis_url, "run_all provides a Redis"
                flush(redis_url)
                stack.callback(flush, redis_url)
                run_argv = [*argv, "--database-url", url, "--redis-url", redis_url]
            else:
                run_argv = argv
            with contextlib.redirect_stdout(tee):
                figures = list(await bench.run(run_argv) or [])
        if not figures:
            error = "the benchmark returned no figures"
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        traceback.print_exc()
    return Outcome(bench, argv, figures, time.perf_counter() - started, tee.copy.getvalue(), error)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def _versions(server: str, redis_url: str) -> tuple[str, str]:
    """PostgreSQL's and Redis's versions (Redis's from the binary when the run started its own)."""
    try:
        with psycopg.connect(server) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            pg = row[0] if row else "?"
    except Exception as exc:
        pg = f"unreachable ({type(exc).__name__})"
    try:
        if not redis_url:
            out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
            return pg, out.split("v=", 1)[1].split()[0] if "v=" in out else "?"
        client = sync_redis.Redis.from_url(redis_url)
        rd = str(client.info("server").get("redis_version", "?"))
        client.close()
    except Exception as exc:
        rd = f"unreachable ({type(exc).__name__})"
    return pg, rd


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(
    outcomes: list[Outcome], *, command: str, smoke: bool, load_before: str, load_after: str, **info: str
) -> str:
    started = info["started"]
    lines = [
        "# Benchmarks",
        "",
        f"<!-- Generated by `{command}`: do not edit by hand, run the command again. -->",
        f"**This file is generated by `{command}` (`make bench`); it is never edited by hand.**"
        + (" This is a SMOKE run (minimal sizes): its figures mean nothing." if smoke else ""),
        "",
        "Every ratio compares two figures measured in the same run on the same machine, so a slower or",
        "busier machine moves both sides; absolute figures are printed beside them for context only.",
        "The sides of the platform, GetAgent, AppendMessage and gateway ratios are measured in turns, three",
        "rounds each, and each side is its median round (`interleaved` in bench/harness.py): this",
        "machine's speed drifts by tens of percent within a minute.",
        "Each benchmark is also runnable alone (`python -m bench.<name> --help`).",
        "",
        "## Machine and run",
        "",
        f"- command: `{command}`",
        f"- started: {started} (UTC), total {info['total']}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores ({platform.machine()}, {platform.system()} {platform.release()})",
        f"- Python {platform.python_version()}, grpcio {grpc.__version__}, protobuf {info['protobuf']}",
        f"- PostgreSQL {info['postgres']}, Redis {info['redis']} (local, fresh database per benchmark)",
        f"- load average (1/5/15 min): before {load_before}, after {load_after}",
        "",
        "## Summary",
        "",
        "| benchmark | figure | ratio (same run) | ratio of | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        name = outcome.benchmark.name
        if outcome.error:
            lines.append(f"| {name} | FAILED: {_cell(outcome.error)} | | | | no |")
        for fig in outcome.figures:
            ratio = (
                "" if fig.ratio is None else f"{fig.ratio:,.2f}" if fig.ratio >= 0.1 else f"{fig.ratio:.4f}"
            )
            met = {True: "yes", False: "**no**", None: "n/a"}[fig.met]
            lines.append(
                f"| {name} | {_cell(fig.name)} | {ratio} | {_cell(fig.ratio_of)} | {_cell(fig.target) or 'none set'} | {met} |"
            )
    lines += ["", "## Details", ""]
    for outcome in outcomes:
        bench = outcome.benchmark
        lines += [
            f"### {bench.name} ({bench.issue})",
            "",
            f"`python -m bench.{bench.name} {shlex.join(outcome.argv)}`"
            + (" with `--database-url` (a fresh database) and `--redis-url`" if bench.storage else "")
            + f"; took {outcome.seconds:.0f} s.",
            "",
        ]
        if outcome.error:
            lines += [f"FAILED: {outcome.error}", ""]
        for fig in outcome.figures:
            lines.append(f"- **{fig.name}**: {fig.measured}.")
        lines += [
            "",
            "<details><summary>output</summary>",
            "",
            "```",
            outcome.output.rstrip(),
            "```",
            "",
            "</details>",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


async def run_all(args: argparse.Namespace) -> list[Outcome]:
    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    outcomes = []
    with contextlib.ExitStack() as stack:
        redis_url = args.redis_url or stack.enter_context(own_redis())
        for bench in chosen:
            outcomes.append(
                await run_one(bench, smoke=args.smoke, pg_server=args.pg_server, redis_url=redis_url)
            )
    return outcomes


@contextlib.contextmanager
def own_redis() -> Iterator[str]:
    """A redis-server of this run's own (free port, temporary directory), stopped at the end."""
    import tempfile

    from tests.helpers import RedisServer, free_port

    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-redis-") as directory:
        server = RedisServer(pathlib.Path(directory), free_port())
        server.start()
        try:
            yield server.url
        finally:
            server.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="minimal sizes: checks every benchmark runs")
    parser.add_argument("--output", type=pathlib.Path, default=OUTPUT, help=f"default {OUTPUT}")
    parser.add_argument("--only", nargs="+", choices=[b.name for b in BENCHMARKS], metavar="NAME")
    parser.add_argument("--pg-server", default=PG_SERVER, help="PostgreSQL server to create databases on")
    parser.add_argument(
        "--redis-url",
        default="",
        help="a Redis database to use and flush (default: a redis-server this run starts)",
    )
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench", *argv])

    from google import protobuf

    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    load_before = load_average()
    begin = time.perf_counter()
    outcomes = asyncio.run(run_all(args))
    total = time.perf_counter() - begin
    postgres, redis_version = _versions(args.pg_server, args.redis_url)
    report = render(
        outcomes,
        command=command,
        smoke=args.smoke,
        load_before=load_before,
        load_after=load_average(),
        started=started,
        total=f"{total / 60:.1f} min" if total >= 60 else f"{total:.0f} s",
        protobuf=protobuf.__version__,
        postgres=postgres,
        redis=redis_version,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    failed = [o.benchmark.name for o in outcomes if o.error]
    print(f"\nwrote {args.output} ({len(outcomes)} benchmarks, {total:.0f} s)", flush=True)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
