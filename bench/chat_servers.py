"""The servers bench/chat_load.py measures, each started afresh for one measurement and stopped after
it: `agentmesh up` (embedded, or on PostgreSQL + Redis), `agentmesh serve` (every service its own
process, tests/system/cluster.py's Cluster), `langgraph dev` (from LangGraph's own virtualenv) and
the floor (bench/chat_floor.py, bare grpc.aio);
and the /proc readings of a server's process tree.

The agentmesh servers run the code of the tree this module is in (PYTHONPATH), so running the bench
from an exported commit measures that commit, whatever the installed checkout holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import httpx
import redis as sync_redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh.agents.v1 import agents_service_pb2 as agents_pb
from agentmesh.agents.v1 import agents_service_pb2_grpc as agents_grpc
from agentmesh.identity.v1 import identity_service_pb2 as identity_pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as identity_grpc
from services.admin_cli import _with_operator
from services.identity.operator import Operator, operator_principal
from services.platform import db, migrations
from services.platform.settings import Settings
from services.registry import SERVICES
from tests.helpers import bearer, free_port
from tests.system.cluster import Cluster

ROOT = pathlib.Path(__file__).resolve().parent.parent
LANGGRAPH_APP = ROOT / "bench" / "langgraph_app"
PASSWORD = "bench password, long enough 42"
START_TIMEOUT = 120.0
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


# /proc ------------------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def tree(pids: list[int]) -> list[int]:
    """`pids` and every process descended from them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the live process tree."""
    total = 0
    for pid in tree(pids):
        with contextlib.suppress(OSError, IndexError):
            fields = _stat(pid)
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in tree(pids):
        with contextlib.suppress(OSError, IndexError), open(f"/proc/{pid}/statm") as f:
            total += int(f.read().split()[1]) * _PAGE
    return total


# Servers ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Running:
    """A started side: its processes, the client process's argv and the spec it is given."""

    side: str
    pids: list[int]
    client: list[str]
    spec: Callable[[int], Awaitable[dict[str, Any]]]
    redis_url: str = ""


def _code_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AGENTMESH_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "generated")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def agentmesh_client() -> list[str]:
    return [sys.executable, "-m", "bench.chat_client"]


def langgraph_available(python: pathlib.Path) -> str:
    """Empty when LangGraph's virtualenv at `python` can serve the graph, else why not."""
    if not python.exists():
        return f"{python} does not exist (make bench-langgraph creates it)"
    done = subprocess.run(
        [str(python), "-c", "import langgraph_api, langgraph_runtime_inmem, langgraph_sdk"],
        capture_output=True,
        text=True,
    )
    return "" if done.returncode == 0 else f"{python} lacks LangGraph: {done.stderr.strip().splitlines()[-1]}"


async def _start(argv: list[str], log: pathlib.Path, **kwargs: Any) -> asyncio.subprocess.Process:
    """A server in a process group of its own, its output appended to `log`."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            *argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )


STOP_TIMEOUT = 30.0


async def _stop(proc: asyncio.subprocess.Process, what: str, notes: list[str]) -> None:
    """SIGTERM to the process group (a drain of in-flight streams), SIGKILL after STOP_TIMEOUT
    (noted: the drain is bounded by AGENTMESH_SHUTDOWN_GRACE_SECONDS, 10 s)."""
    if proc.returncode is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            notes.append(f"{what} did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM; killed")
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def _stop_cluster(cluster: Cluster, notes: list[str]) -> None:
    """As Cluster.close, but a process that outlives STOP_TIMEOUT is killed and noted, and the
    others are still waited for (Cluster.close raises at the first)."""
    running = [p for p in cluster.procs.values() if p.popen is not None and p.alive]
    for proc in running:
        assert proc.popen is not None
        proc.popen.send_signal(signal.SIGTERM)
    for proc in running:
        assert proc.popen is not None
        try:
            await asyncio.to_thread(proc.popen.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            notes.append(f"serve {proc.name} did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM; killed")
            proc.popen.kill()
            await asyncio.to_thread(proc.popen.wait)


def _tail(path: pathlib.Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-30:])
    except OSError:
        return ""


async def _wait_serving(address: str, proc: asyncio.subprocess.Process, log: pathlib.Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{_tail(log)}")
        async with grpc.aio.insecure_channel(address) as channel:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the server did not serve within {START_TIMEOUT} s:\n{_tail(log)}")


@dataclasses.dataclass
class Sides:
    """What the sides of one run share: a work directory, the bench's redis-server, the databases
    and the tenants (created once per side; enterprise, `per_tenant` chats each)."""

    workdir: pathlib.Path
    delay_ms: int
    tenants: int
    per_tenant: int
    redis_url: str
    database_urls: dict[str, str]
    langgraph_python: pathlib.Path
    prepared: set[str] = dataclasses.field(default_factory=set)
    # What went wrong around a measurement without spoiling it (a server that would not stop).
    notes: list[str] = dataclasses.field(default_factory=list)

    @contextlib.asynccontextmanager
    async def serve(self, side: str) -> AsyncIterator[Running]:
        starts = {
            "embedded": self._up,
            "postgres": self._up,
            "services": self._services,
            "floor": self._floor,
        }
        async with (starts.get(side) or self._langgraph)(side) as running:
            yield running

    def _settings(self, side: str) -> Settings:
        data = self.workdir / side
        data.mkdir(parents=True, exist_ok=True)
        if side == "embedded":
            return Settings.from_env({}, data_dir=str(data), embedded=True)
        return Settings.from_env(
            {}, data_dir=str(data), database_url=self.database_urls[side], redis_url=self.redis_url
        )

    async def _prepare(self, side: str, settings: Settings) -> None:
        """Once per side: the schema, and the tenants as the operator creates them (enterprise: 100
        concurrent runs per tenant, 6,000 requests a minute)."""
        if side in self.prepared:
            return
        engine = db.create_engine(settings.effective_database_url)
        try:
            await migrations.upgrade(engine, list(SERVICES))
        finally:
            await engine.dispose()

        async def create(op: Operator) -> str:
            for i in range(self.tenants):
                await op.create_tenant(
                    operator_principal(),
                    name=f"bench-{i}",
                    tier="enterprise",
                    owner="owner",
                    password=PASSWORD,
                )
            return ""

        await _with_operator(settings, create)
        self.prepared.add(side)

    def _flush_redis(self) -> None:
        # The bench's own redis-server: each side starts on an empty one.
        client = sync_redis.Redis.from_url(self.redis_url)
        try:
            client.flushdb()
        finally:
            client.close()

    def _spec(
        self, identity: str, agents: str, orchestration: str
    ) -> Callable[[int], Awaitable[dict[str, Any]]]:
        async def spec(chats: int) -> dict[str, Any]:
            """Signs in the owners of the tenants `chats` needs and gives each tenant its echo agent."""
            groups = []
            async with (
                grpc.aio.insecure_channel(identity) as id_channel,
                grpc.aio.insecure_channel(agents) as agents_channel,
            ):
                for i in range(math.ceil(chats / self.per_tenant)):
                    login = await identity_grpc.IdentityServiceStub(id_channel).Login(
                        identity_pb.LoginRequest(tenant=f"bench-{i}", username="owner", password=PASSWORD),
                        timeout=60,
                    )
                    token = login.tokens.access_token
                    agent = await agents_grpc.AgentServiceStub(agents_channel).CreateAgent(
                        agents_pb.CreateAgentRequest(
                            agent=agents_pb.Agent(
                                display_name="Bench echo",
                                config=agents_pb.AgentConfig(
                                    model="echo:default", system_prompt="You are a helpful assistant."
                                ),
                            ),
                            # The same agent on every start of this side.
                            request_id=f"bench-agent-{i}",
                        ),
                        metadata=bearer(token),
                        timeout=60,
                    )
                    size = min(self.per_tenant, chats - i * self.per_tenant)
                    groups.append({"token": token, "agent_id": agent.agent.id, "chats": size})
            return {"address": orchestration, "groups": groups}

        return spec

    @contextlib.asynccontextmanager
    async def _up(self, side: str) -> AsyncIterator[Running]:
        """`agentmesh up`: its defaults (SQLite, in-process Redis), or DATABASE_URL and REDIS_URL."""
        settings = self._settings(side)
        await self._prepare(side, settings)
        env = {**_code_env(), "AGENTMESH_ECHO_DELAY_MS": str(self.delay_ms)}
        if side != "embedded":
            self._flush_redis()
            env.update(DATABASE_URL=self.database_urls[side], REDIS_URL=self.redis_url)
        data = pathlib.Path(settings.data_dir)
        grpc_port = free_port()
        log = data / "stdout.log"
        argv = [sys.executable, "-m", "services.cli", "up", "--grpc-port", str(grpc_port)]
        argv += [
            "--http-port",
            str(free_port()),
            "--data-dir",
            str(data),
            "--log",
            str(data / "agentmesh.log"),
        ]
        proc = await _start(argv, log, env=env, cwd=ROOT)
        address = f"127.0.0.1:{grpc_port}"
        try:
            await _wait_serving(address, proc, log)
            yield Running(
                side,
                [proc.pid],
                agentmesh_client(),
                self._spec(address, address, address),
                "" if side == "embedded" else self.redis_url,
            )
        finally:
            await _stop(proc, f"agentmesh up ({side})", self.notes)

    @contextlib.asynccontextmanager
    async def _floor(self, side: str) -> AsyncIterator[Running]:
        """bench/chat_floor.py: bare grpc.aio, the same paced tokens, nothing else; the same client
        code and the same connections (a channel per `per_tenant` chats)."""
        directory = self.workdir / side
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        log = directory / "floor.log"
        argv = [
            sys.executable,
            "-m",
            "bench.chat_floor",
            "--port",
            str(port),
            "--delay-ms",
            str(self.delay_ms),
        ]
        proc = await _start(argv, log, env=_code_env(), cwd=ROOT)
        address = f"127.0.0.1:{port}"

        async def spec(chats: int) -> dict[str, Any]:
            groups = [
                {"token": "floor", "agent_id": "floor", "chats": min(self.per_tenant, chats - start)}
                for start in range(0, chats, self.per_tenant)
            ]
            return {"address": address, "groups": groups}

        try:
            await _wait_serving(address, proc, log)
            yield Running(side, [proc.pid], agentmesh_client(), spec)
        finally:
            await _stop(proc, "the floor server", self.notes)

    @contextlib.asynccontextmanager
    async def _services(self, side: str) -> AsyncIterator[Running]:
        """`agentmesh serve <service>` per service, as production runs them (no gateway: the clients
        speak gRPC to orchestration)."""
        settings = self._settings(side)
        await self._prepare(side, settings)
        self._flush_redis()
        cluster = Cluster(
            self.workdir / side,
            database_url=self.database_urls[side],
            redis_url=self.redis_url,
            # The settings' defaults where the system tests' Cluster shortens or records more.
            AGENTMESH_ECHO_DELAY_MS=str(self.delay_ms),
            AGENTMESH_OTEL_EXPORTER="none",
            AGENTMESH_LOG_LEVEL="INFO",
            AGENTMESH_HEALTH_INTERVAL_SECONDS="1",
            AGENTMESH_REVOCATION_CACHE_SECONDS="1",
            AGENTMESH_SHUTDOWN_GRACE_SECONDS="10",
            PYTHONPATH=_code_env()["PYTHONPATH"],
        )
        for name in ("identity", "agents", "conversation", "orchestration"):
            cluster.add(name)
        try:
            await asyncio.to_thread(cluster.start)
            pids = [p.popen.pid for p in cluster.procs.values() if p.popen is not None]
            yield Running(
                side,
                pids,
                agentmesh_client(),
                self._spec(
                    cluster["identity"].address, cluster["agents"].address, cluster["orchestration"].address
                ),
                self.redis_url,
            )
        finally:
            await _stop_cluster(cluster, self.notes)

    @contextlib.asynccontextmanager
    async def _langgraph(self, side: str) -> AsyncIterator[Running]:
        """`langgraph dev` (in-memory runtime) serving bench/langgraph_app, its langgraph.json with the
        paths made absolute (the server runs in a directory of its own: it writes .langgraph_api there)."""
        directory = self.workdir / side
        directory.mkdir(parents=True, exist_ok=True)
        config = json.loads((LANGGRAPH_APP / "langgraph.json").read_text())
        config["dependencies"] = [str((LANGGRAPH_APP / d).resolve()) for d in config["dependencies"]]
        config["graphs"] = {
            name: f"{(LANGGRAPH_APP / spec.split(':')[0]).resolve()}:{spec.split(':')[1]}"
            for name, spec in config["graphs"].items()
        }
        (directory / "langgraph.json").write_text(json.dumps(config))
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {
            "BENCH_ECHO_DELAY_MS": str(self.delay_ms),
            "LANGSMITH_TRACING": "false",
        }
        log = directory / "langgraph.log"
        argv = [str(self.langgraph_python.parent / "langgraph"), "dev", "--no-browser", "--no-reload"]
        argv += ["--n-jobs-per-worker", "1000", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--config", str(directory / "langgraph.json")]
        proc = await _start(argv, log, env=env, cwd=directory)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT
            async with httpx.AsyncClient() as http:
                while True:
                    if proc.returncode is not None:
                        raise RuntimeError(f"langgraph dev exited with {proc.returncode}:\n{_tail(log)}")
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get(f"{url}/ok", timeout=1)).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"langgraph dev did not serve within {START_TIMEOUT} s:\n{_tail(log)}"
                        )
                    await asyncio.sleep(0.2)

            async def spec(chats: int) -> dict[str, Any]:
                return {"url": url, "chats": chats}

            client = [str(self.langgraph_python), str(LANGGRAPH_APP / "client.py")]
            yield Running(side, [proc.pid], client, spec)
        finally:
            await _stop(proc, "langgraph dev", self.notes)
