"""agentmesh as production runs it: each service its own `agentmesh serve <service>` process on a free
port, configured only from the environment, plus `agentmesh serve gateway`.

Start-up and shutdown are synchronous (tests call them through `asyncio.to_thread` when their event
loop must keep running, e.g. for a TcpProxy living in it). Every process writes its spans to its own
JSON-lines file (AGENTMESH_OTEL_EXPORTER=file) and its logs to `<name>.log` in the cluster directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import free_port

BIN = Path(sys.executable).parent
PEERS = ("identity", "agents", "conversation", "orchestration")
START_TIMEOUT = 60.0
# Start-up order: who calls whom (orchestration calls agents, conversation and identity).
STAGE = {"identity": 0, "agents": 1, "conversation": 1, "orchestration": 2, "gateway": 3}


@dataclasses.dataclass
class Proc:
    name: str
    service: str
    port: int
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def write_signing_key(path: Path) -> Path:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    return path


class Cluster:
    """`add()` processes, `start()` them, `stop()`/`kill()` one, `close()` all (SIGTERM, exit codes)."""

    def __init__(
        self,
        directory: Path,
        *,
        database_url: str,
        redis_url: str,
        redis_mode: str = "standalone",
        **env: str,
    ):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, Proc] = {}
        self.exit_codes: dict[str, list[int]] = {}
        # Peer addresses are fixed before anything starts, so every process knows every other one.
        self._ports = {service: free_port() for service in PEERS}
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AGENTMESH_") and k not in ("DATABASE_URL", "REDIS_URL")
        }
        self.base_env = {
            **base,
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            # `cluster` when redis_url names a node of a Redis Cluster (the suite's, in its cluster mode).
            "AGENTMESH_REDIS_MODE": redis_mode,
            "AGENTMESH_PAGE_TOKEN_SECRET": "system-page-token-secret",
            "AGENTMESH_SERVICE_SECRET": "system-service-secret",
            # The stories sign tenants up themselves (production's default is closed).
            "AGENTMESH_SIGNUP": "open",
            "AGENTMESH_SIGNING_KEY_FILE": str(write_signing_key(self.dir / "signing-key.pem")),
            "AGENTMESH_REVOCATION_CACHE_SECONDS": "0",
            "AGENTMESH_HEALTH_INTERVAL_SECONDS": "0.2",
            "AGENTMESH_SHUTDOWN_GRACE_SECONDS": "5",
            "AGENTMESH_ECHO_DELAY_MS": "0",
            "AGENTMESH_OTEL_EXPORTER": "file",
            "AGENTMESH_LOG_LEVEL": "WARNING",
            **{f"AGENTMESH_{s.upper()}_ADDR": f"127.0.0.1:{p}" for s, p in self._ports.items()},
            **env,
        }

    def add(self, name: str, service: str | None = None, **env: str) -> Proc:
        """A process named `name` running `service` (default: the name); the first of each peer
        service gets the port the others call."""
        service = service or name
        port = self._ports.get(service, 0) if name == service else 0
        port = port or free_port()
        proc_env = {
            **self.base_env,
            "AGENTMESH_OTEL_FILE": str(self.dir / f"spans-{name}.jsonl"),
            **env,
        }
        if service == "gateway":
            proc_env["AGENTMESH_HTTP_PORT"] = str(port)
        else:
            proc_env["AGENTMESH_GRPC_PORT"] = str(port)
        self.procs[name] = Proc(name, service, port, proc_env, self.dir / f"{name}.log")
        return self.procs[name]

    def __getitem__(self, name: str) -> Proc:
        return self.procs[name]

    # Starting ---------------------------------------------------------------------------------------

    def start(self, *names: str) -> None:
        """Starts the named processes (default: every one not running), in dependency order, and waits
        until each is ready. The order matters: a gRPC channel refused at start-up backs off (1 s,
        growing), and calls through it fail fast until it reconnects, although the callee is up."""
        targets = [self.procs[n] for n in (names or self.procs) if not self.procs[n].alive]
        for stage in sorted({STAGE[p.service] for p in targets}):
            batch = [p for p in targets if STAGE[p.service] == stage]
            for proc in batch:
                log = proc.log.open("ab")
                proc.popen = subprocess.Popen(
                    [str(BIN / "agentmesh"), "serve", proc.service],
                    env=proc.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                log.close()
            deadline = time.monotonic() + START_TIMEOUT
            for proc in batch:
                self._wait_ready(proc, deadline)

    def ensure_running(self) -> None:
        self.start()

    def _wait_ready(self, proc: Proc, deadline: float) -> None:
        while time.monotonic() < deadline:
            assert proc.popen is not None
            if proc.popen.poll() is not None:
                raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
            if self.serving(proc):
                return
            time.sleep(0.1)
        raise AssertionError(f"{proc.name} not ready within {START_TIMEOUT} s:\n{proc.log_tail()}")

    def serving(self, proc: Proc) -> bool:
        if proc.service == "gateway":
            try:
                with urllib.request.urlopen(proc.url + "/readyz", timeout=2) as reply:
                    return reply.status == 200
            except (urllib.error.URLError, OSError):
                return False
        return self.health(proc) == health_pb2.HealthCheckResponse.SERVING

    @staticmethod
    def health(proc: Proc, service: str = "") -> int | None:
        """The gRPC health status of `service` on the process, or None when it does not answer."""
        with grpc.insecure_channel(proc.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1
                )
            except grpc.RpcError:
                return None
            return reply.status

    # Stopping ---------------------------------------------------------------------------------------

    def signal(self, name: str, sig: int) -> None:
        proc = self.procs[name]
        assert proc.popen is not None and proc.alive, f"{name} is not running"
        proc.popen.send_signal(sig)

    def wait(self, name: str, timeout: float = 30.0) -> int:
        proc = self.procs[name]
        assert proc.popen is not None
        try:
            code = proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()
            raise AssertionError(f"{name} did not exit within {timeout} s:\n{proc.log_tail()}") from None
        self.exit_codes.setdefault(name, []).append(code)
        return code

    def stop(self, name: str, timeout: float = 30.0) -> int:
        """SIGTERM and the exit code."""
        self.signal(name, signal.SIGTERM)
        return self.wait(name, timeout)

    def kill(self, name: str) -> None:
        self.signal(name, signal.SIGKILL)
        self.wait(name)

    def close(self) -> dict[str, int]:
        """SIGTERM to every running process at once; returns their exit codes."""
        running = [p.name for p in self.procs.values() if p.alive]
        for name in running:
            self.signal(name, signal.SIGTERM)
        return {name: self.wait(name) for name in running}

    # Spans ------------------------------------------------------------------------------------------

    def spans(self) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.dir.glob("spans-*.jsonl")):
            for line in path.read_text().splitlines():
                if line.strip():
                    found.append(json.loads(line))
        return found
