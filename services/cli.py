"""The `agentmesh` command: `up` (everything, embedded), `serve` (production), `migrate`, `retention`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import pathlib
import signal
import sys
from collections.abc import AsyncIterator, Callable
from types import FrameType

import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncEngine

from services import admin_cli
from services.platform import db, migrations
from services.platform.logs import configure_logging
from services.platform.runtime import (
    Runtime,
    missing_configuration,
    with_colocated_peers,
    with_embedded_secrets,
)
from services.platform.server import BindError, Server, ensure_port_free
from services.platform.settings import Settings, SettingsError
from services.registry import SERVICES, registration

log = logging.getLogger("agentmesh.cli")


class Refused(Exception):
    """The command will not run; the message tells the operator what to fix (no traceback)."""


def _check_names(names: list[str], choices: list[str]) -> None:
    unknown = [n for n in names if n not in choices]
    if unknown:
        raise Refused(f"unknown service {', '.join(unknown)}; choose from {', '.join(choices)}")


@contextlib.asynccontextmanager
async def _database(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine for a command that only touches the schema; an unreachable database is one line."""
    engine = db.create_engine(url)
    try:
        yield engine
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise Refused(f"cannot reach the database (DATABASE_URL): {reason}") from None
    finally:
        await engine.dispose()


async def _schema_problems(settings: Settings, names: list[str]) -> list[str]:
    async with _database(settings.database_url) as engine:
        behind = await migrations.behind(engine, names)
    if not behind:
        return []
    return [f"database schema of {', '.join(behind)} is older than the code: run `agentmesh migrate`"]


def _banner(settings: Settings, grpc_port: int, http_port: int, log_target: str) -> str:
    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::") else settings.http_host
    return "\n".join(
        [
            "agentmesh is up",
            f"  chat page   http://{host}:{http_port}/",
            f"  gRPC        {settings.grpc_host}:{grpc_port}",
            "  sign in     tenant demo, user user_1, password 1234 (or user_2 / 5678)",
            f"  logs        {'stderr' if log_target == '-' else log_target}",
            "Ctrl-C stops it.",
        ]
    )


async def _run(
    settings: Settings,
    names: list[str],
    *,
    reuse_port: bool,
    migrate: bool,
    http: bool = False,
    banner_log: str | None = None,
) -> None:
    """Serves `names` (and the gateway with `http`); `banner_log`: `up` prints its banner, naming
    where the logs go, instead of the per-server lines."""
    if migrate:
        runtime = await Runtime.create(settings)
        try:
            await migrations.upgrade(runtime.engine, names)
        finally:
            await runtime.close()
    runtime = await Runtime.create(settings, service_name="agentmesh-" + "+".join(names))
    try:
        registrations = [await registration(name, runtime) for name in names]
        server = Server(runtime, registrations, reuse_port=reuse_port)
        if settings.metrics_port:
            # Same interface as gRPC: 0.0.0.0 in a pod, so Prometheus can scrape it from outside.
            server.metrics.serve(settings.metrics_port, settings.grpc_host)

        gateway = None
        if http:
            # The gateway reaches the services through settings.peers (this process in embedded mode).
            from gateway import create_app
            from gateway.server import HttpServer

            app = create_app(settings, tracer_provider=runtime.tracer_provider, redis=runtime.redis)
            gateway = HttpServer(
                app,
                host=settings.http_host,
                port=settings.http_port,
                heartbeat_seconds=settings.gateway.ws_heartbeat_seconds,
                reuse_port=reuse_port,
            )
            await gateway.start()

        seeding: list[asyncio.Task[None]] = []

        def started(port: int) -> None:
            # What start-up made (modules, schemas, descriptors, the servers) lives as long as the
            # process: frozen out of the collector's reach, a full collection no longer walks it.
            # Before, one paused the loop, and every call in flight, for 90-106 ms in `up`.
            gc.freeze()
            if banner_log is not None and gateway is not None:
                print(_banner(settings, port, gateway.port, banner_log), flush=True)
            else:
                # One write per line: the workers of `--workers N` share stdout, and print's separate
                # write of the newline let their lines interleave on an unbuffered stream.
                sys.stdout.write(
                    f"agentmesh: {', '.join(names)} serving gRPC on {settings.grpc_host}:{port}\n"
                )
                sys.stdout.flush()
            if settings.embedded:
                from services.demo import seed_demo_agent

                seeding.append(
                    asyncio.get_running_loop().create_task(seed_demo_agent(f"{settings.grpc_host}:{port}"))
                )
            if gateway is not None and banner_log is None:
                print(
                    f"agentmesh: chat page and HTTP API on http://{settings.http_host}:{gateway.port}/",
                    flush=True,
                )

        try:
            await server.run_until_signal(on_started=started)
        finally:
            if gateway is not None:
                await gateway.stop()
    finally:
        await runtime.close()


def _fork_workers(count: int, target: Callable[[], int]) -> int:
    """Forks `count` workers (before any gRPC state exists) sharing the port; waits for them all.
    The first failing worker's exit code is the parent's."""
    children = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _guarded(target)
            finally:
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    return status


def cmd_up(args: argparse.Namespace) -> int:
    overrides = {
        k: v
        for k, v in (
            ("grpc_port", args.grpc_port),
            ("http_port", args.http_port),
            ("data_dir", args.data_dir),
        )
        if v is not None
    }
    settings = with_embedded_secrets(Settings.from_env(**overrides).embedded_defaults())
    # Before migrating and seeding: a taken port is the whole answer.
    ensure_port_free(
        settings.grpc_host, settings.grpc_port, what="gRPC", variable="AGENTMESH_GRPC_PORT or --grpc-port"
    )
    ensure_port_free(
        settings.http_host, settings.http_port, what="HTTP", variable="AGENTMESH_HTTP_PORT or --http-port"
    )
    target = args.log or str(pathlib.Path(settings.data_dir) / "agentmesh.log")
    _log_to(settings.log_level, target)
    asyncio.run(_run(settings, list(SERVICES), reuse_port=False, migrate=True, http=True, banner_log=target))
    return 0


def _log_to(level: str, target: str) -> None:
    """JSON log lines to stderr (`-`) or appended to the file `target`."""
    configure_logging(level)
    if target != "-":
        path = pathlib.Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(path.open("a", encoding="utf-8", buffering=1))


async def _run_gateway(settings: Settings, *, reuse_port: bool) -> None:
    """The gateway alone (production): no database; Redis for the per-user WebSocket counts;
    upstreams from AGENTMESH_*_ADDR."""
    from gateway import create_app
    from gateway.server import HttpServer
    from services.platform.telemetry import create_tracer_provider

    provider = create_tracer_provider(
        "agentmesh-gateway", settings.otel_exporter, file_path=settings.otel_file
    )
    app = create_app(settings, tracer_provider=provider)
    http = HttpServer(
        app,
        host=settings.http_host,
        port=settings.http_port,
        heartbeat_seconds=settings.gateway.ws_heartbeat_seconds,
        reuse_port=reuse_port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    port = await http.start()
    # One write per line, as the services' workers do.
    sys.stdout.write(f"agentmesh: gateway serving HTTP on http://{settings.http_host}:{port}/\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await http.stop()
        provider.shutdown()


def cmd_serve(args: argparse.Namespace) -> int:
    _check_names(args.services, [*SERVICES, "gateway"])
    settings = Settings.from_env()
    if args.grpc_port is not None:
        settings = dataclasses.replace(settings, grpc_port=args.grpc_port)
    names = [n for n in dict.fromkeys(args.services) if n != "gateway"]
    with_gateway = "gateway" in args.services
    settings = with_colocated_peers(settings, names)
    # Everything to fix in one message: a production process never falls back to SQLite, an
    # in-process Redis or a missing peer (which would answer every call with an error).
    missing = missing_configuration(settings, args.services)
    problems = [f"{', '.join(missing)} not set"] if missing else []
    if names and settings.database_url:
        problems += asyncio.run(_schema_problems(settings, names))
    if problems:
        command = " ".join(["agentmesh serve", *args.services])
        raise Refused(f"`{command}` will not start: {'; '.join(problems)}")
    if args.workers > 1:
        # The workers bind with SO_REUSEPORT (and skip the check); a port held by another process
        # is reported here, once.
        if names:
            ensure_port_free(
                settings.grpc_host,
                settings.grpc_port,
                what="gRPC",
                variable="AGENTMESH_GRPC_PORT or --grpc-port",
            )
        if with_gateway:
            ensure_port_free(
                settings.http_host, settings.http_port, what="HTTP", variable="AGENTMESH_HTTP_PORT"
            )
    # After the checks: a refusal is its one line, without the schema check's INFO lines around it.
    configure_logging(settings.log_level)

    def run() -> int:
        if not names:
            asyncio.run(_run_gateway(settings, reuse_port=args.workers > 1))
        else:
            asyncio.run(_run(settings, names, reuse_port=args.workers > 1, migrate=False, http=with_gateway))
        return 0

    if args.workers > 1:
        return _fork_workers(args.workers, run)
    return run()


def _database_settings(args: argparse.Namespace, command: str) -> Settings:
    """DATABASE_URL, or the embedded database of an explicit --data-dir; never a silent default."""
    settings = Settings.from_env()
    if args.data_dir:
        return dataclasses.replace(settings, data_dir=args.data_dir)
    if not settings.database_url:
        raise SettingsError(
            f"DATABASE_URL is not set: `agentmesh {command}` needs the database "
            "(or --data-dir DIR for the embedded one of `agentmesh up`)"
        )
    return settings


def cmd_migrate(args: argparse.Namespace) -> int:
    _check_names(args.services, list(SERVICES))
    settings = _database_settings(args, "migrate")
    names = args.services or list(SERVICES)

    async def run() -> list[str]:
        async with _database(settings.effective_database_url) as engine:
            return await migrations.upgrade(engine, names)

    done = asyncio.run(run())
    print(f"agentmesh: migrated {', '.join(done) or 'nothing (no migrations yet)'}")
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    """Applies the conversation retention policies once (the service also runs this periodically)."""
    from services.conversation.hot_window import HotWindow
    from services.conversation.retention import RetentionJob
    from services.conversation.store import ConversationStore

    settings = _database_settings(args, "retention")
    if not settings.database_url:
        settings = with_embedded_secrets(settings.embedded_defaults())

    async def run() -> int:
        runtime = await Runtime.create(settings)
        try:
            store = ConversationStore(runtime.engine, autocommit=runtime.autocommit)
            job = RetentionJob(store=store, hot=HotWindow(runtime.redis), clock=runtime.clock)
            return await job.run_once(args.tenant)
        finally:
            await runtime.close()

    erased = asyncio.run(run())
    print(f"agentmesh: retention erased {erased} closed conversation(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentmesh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run everything in one process on the embedded default")
    up.add_argument("--grpc-port", type=int, help="gRPC port (default: AGENTMESH_GRPC_PORT, else 50051)")
    up.add_argument(
        "--http-port", type=int, help="chat page and HTTP API port (default: AGENTMESH_HTTP_PORT, else 8080)"
    )
    up.add_argument(
        "--data-dir",
        help="database, keys, secrets and log (default: AGENTMESH_DATA_DIR, else .agentmesh)",
    )
    up.add_argument(
        "--log",
        metavar="PATH",
        help="where the JSON log lines go, - for stderr (default: agentmesh.log in the data dir)",
    )
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="run the named services (production; configured by environment)")
    serve.add_argument(
        "services",
        nargs="+",
        metavar="SERVICE",
        help=f"one or more of {', '.join([*SERVICES, 'gateway'])}, served by this one process (required)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the gRPC port (and the gateway's HTTP port) through SO_REUSEPORT (default: %(default)s)",
    )
    serve.add_argument("--grpc-port", type=int, help="gRPC port (default: AGENTMESH_GRPC_PORT, else 50051)")
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply schema migrations")
    migrate.add_argument("services", nargs="*", metavar="SERVICE")
    migrate.add_argument("--data-dir")
    migrate.set_defaults(func=cmd_migrate)

    retention = sub.add_parser("retention", help="erase closed conversations past their tenant's retention")
    retention.add_argument("--tenant", help="only this tenant (default: every tenant with a policy)")
    retention.add_argument("--data-dir")
    retention.set_defaults(func=cmd_retention)

    admin_cli.add_parser(sub)

    args = parser.parse_args(argv)
    return _guarded(lambda: int(args.func(args)))


def _guarded(command: Callable[[], int]) -> int:
    """Runs a command; what the operator must fix is one line on stderr and a non-zero exit."""
    try:
        return command()
    except SettingsError as exc:
        print(f"agentmesh: configuration error: {exc}", file=sys.stderr)
        return 2
    except Refused as exc:
        print(f"agentmesh: {exc}", file=sys.stderr)
        return 2
    except BindError as exc:
        print(f"agentmesh: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
