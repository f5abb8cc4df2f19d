"""The `agentmesh` command: `up` (everything, embedded), `serve` (production), `migrate`, `retention`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys

from services.platform import migrations
from services.platform.middleware import configure_logging
from services.platform.runtime import Runtime, with_embedded_secrets
from services.platform.server import Server
from services.platform.settings import Settings, SettingsError
from services.registry import SERVICES

log = logging.getLogger("agentmesh.cli")


async def _run(
    settings: Settings, names: list[str], *, reuse_port: bool, migrate: bool, http: bool = False
) -> None:
    if migrate:
        runtime = await Runtime.create(settings)
        try:
            await migrations.upgrade(runtime.engine, names)
        finally:
            await runtime.close()
    runtime = await Runtime.create(settings, service_name="agentmesh-" + "+".join(names))
    try:
        registrations = [await SERVICES[name](runtime) for name in names]
        server = Server(runtime, registrations, reuse_port=reuse_port)
        if settings.metrics_port:
            # Same interface as gRPC: 0.0.0.0 in a pod, so Prometheus can scrape it from outside.
            server.metrics.serve(settings.metrics_port, settings.grpc_host)

        gateway = None
        if http:
            # The gateway reaches the services through settings.peers (this process in embedded mode).
            from gateway import create_app
            from gateway.server import HttpServer

            app = create_app(settings, tracer_provider=runtime.tracer_provider)
            gateway = HttpServer(
                app,
                host=settings.http_host,
                port=settings.http_port,
                heartbeat_seconds=settings.gateway.ws_heartbeat_seconds,
            )
            await gateway.start()

        seeding: list[asyncio.Task[str]] = []

        def started(port: int) -> None:
            print(f"agentmesh: {', '.join(names)} serving gRPC on {settings.grpc_host}:{port}", flush=True)
            if settings.embedded:
                from services.demo import seed_demo_agent

                seeding.append(
                    asyncio.get_running_loop().create_task(seed_demo_agent(f"{settings.grpc_host}:{port}"))
                )
            if gateway is not None:
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


def _fork_workers(count: int, target) -> int:  # type: ignore[no-untyped-def]
    """Forks `count` workers (before any gRPC state exists) sharing the port; waits for them all."""
    children = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            try:
                target()
            finally:
                os._exit(0)
        children.append(pid)

    def forward(signum, _frame):  # type: ignore[no-untyped-def]
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
    configure_logging(settings.log_level)
    asyncio.run(_run(settings, list(SERVICES), reuse_port=False, migrate=True, http=True))
    return 0


async def _run_gateway(settings: Settings) -> None:
    """The gateway alone (production): no database, no Redis; upstreams from AGENTMESH_*_ADDR."""
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
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    port = await http.start()
    print(f"agentmesh: gateway serving HTTP on http://{settings.http_host}:{port}/", flush=True)
    try:
        await stop.wait()
    finally:
        await http.stop()
        provider.shutdown()


def cmd_serve(args: argparse.Namespace) -> int:
    choices = [*SERVICES, "gateway"]
    unknown = [n for n in args.services if n not in choices]
    if unknown:
        print(
            f"agentmesh: unknown service {', '.join(unknown)}; choose from {', '.join(choices)}",
            file=sys.stderr,
        )
        return 2
    settings = Settings.from_env()
    if args.grpc_port is not None:
        settings = dataclasses.replace(settings, grpc_port=args.grpc_port)
    configure_logging(settings.log_level)
    names = [n for n in dict.fromkeys(args.services) if n != "gateway"]
    with_gateway = "gateway" in args.services

    def run() -> None:
        if not names:
            asyncio.run(_run_gateway(settings))
        else:
            asyncio.run(_run(settings, names, reuse_port=args.workers > 1, migrate=False, http=with_gateway))

    if args.workers > 1:
        return _fork_workers(args.workers, run)
    run()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if args.data_dir:
        settings = dataclasses.replace(settings, data_dir=args.data_dir)
    if not settings.database_url:
        settings = with_embedded_secrets(settings.embedded_defaults())
    names = args.services or list(SERVICES)

    async def run() -> list[str]:
        runtime = await Runtime.create(settings)
        try:
            return await migrations.upgrade(runtime.engine, names)
        finally:
            await runtime.close()

    done = asyncio.run(run())
    print(f"agentmesh: migrated {', '.join(done) or 'nothing (no migrations yet)'}")
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    """Applies the conversation retention policies once (the service also runs this periodically)."""
    from services.conversation import build_service
    from services.conversation.retention import RetentionJob

    settings = Settings.from_env()
    if args.data_dir:
        settings = dataclasses.replace(settings, data_dir=args.data_dir)
    if not settings.database_url:
        settings = with_embedded_secrets(settings.embedded_defaults())

    async def run() -> int:
        runtime = await Runtime.create(settings)
        try:
            service = build_service(runtime)
            return await RetentionJob(store=service.store, hot=service.hot).run_once(args.tenant)
        finally:
            await runtime.close()

    erased = asyncio.run(run())
    print(f"agentmesh: retention erased {erased} closed conversation(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentmesh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run everything in one process on the embedded default")
    up.add_argument("--grpc-port", type=int)
    up.add_argument("--http-port", type=int)
    up.add_argument("--data-dir")
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="run the named services (production; configured by environment)")
    serve.add_argument("services", nargs="+", metavar="SERVICE", help=", ".join([*SERVICES, "gateway"]))
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    serve.add_argument("--grpc-port", type=int)
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply schema migrations")
    migrate.add_argument("services", nargs="*", metavar="SERVICE")
    migrate.add_argument("--data-dir")
    migrate.set_defaults(func=cmd_migrate)

    retention = sub.add_parser("retention", help="erase closed conversations past their tenant's retention")
    retention.add_argument("--tenant", help="only this tenant (default: every tenant with a policy)")
    retention.add_argument("--data-dir")
    retention.set_defaults(func=cmd_retention)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:
        print(f"agentmesh: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
