"""`agentmesh up` as a user runs it: a real process on free ports, stopped with SIGTERM."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.helpers import free_port

BIN = Path(sys.executable).parent


@dataclasses.dataclass(frozen=True)
class Embedded:
    grpc_port: int
    http_port: int
    # The `agentmesh up` process (a test may signal it itself; run_embedded still checks its exit).
    proc: subprocess.Popen[str] | None = dataclasses.field(default=None, compare=False)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@contextlib.contextmanager
def run_embedded(
    data_dir: Path, *, echo_delay_ms: int = 0, env_extra: Mapping[str, str] | None = None
) -> Iterator[Embedded]:
    """Starts `agentmesh up` with a clean environment (plus `env_extra`); asserts it exits 0 on SIGTERM."""
    running = Embedded(free_port(), free_port())
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AGENTMESH_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env["AGENTMESH_ECHO_DELAY_MS"] = str(echo_delay_ms)
    env.update(env_extra or {})
    proc = subprocess.Popen(
        [
            str(BIN / "agentmesh"),
            "up",
            "--grpc-port",
            str(running.grpc_port),
            "--http-port",
            str(running.http_port),
            "--data-dir",
            str(data_dir),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 60
    seen: list[str] = []
    while time.monotonic() < deadline and not any("chat page" in line for line in seen):
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
    if proc.poll() is not None or not any("chat page" in line for line in seen):
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise AssertionError(f"agentmesh up did not start: {seen}")
    try:
        yield dataclasses.replace(running, proc=proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        proc.stdout.close()
    assert code == 0, f"agentmesh up exited with {code}"
