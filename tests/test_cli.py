"""The `agentmesh` command as a user runs it: `up` serves every service with health and reflection
that third-party clients (buf curl, grpcurl) understand; `serve` refuses to start unconfigured."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.embedded import BIN, free_port, run_embedded

SERVICES = [
    "agentmesh.agents.v1.AgentService",
    "agentmesh.conversation.v1.ConversationService",
    "agentmesh.identity.v1.IdentityService",
    "agentmesh.orchestration.v1.OrchestrationService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
]


@pytest.fixture
def agentmesh_up(tmp_path) -> Iterator[int]:
    with run_embedded(tmp_path / "data") as running:
        yield running.grpc_port


def test_buf_curl_lists_the_six_services(agentmesh_up):
    out = subprocess.run(
        [
            str(BIN / "buf"),
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--list-services",
            f"http://127.0.0.1:{agentmesh_up}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert sorted(out) == SERVICES


def test_grpcurl_lists_describes_and_checks_health(agentmesh_up):
    target = f"127.0.0.1:{agentmesh_up}"
    listed = subprocess.run(
        [str(BIN / "grpcurl"), "-plaintext", target, "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert sorted(listed) == SERVICES
    described = subprocess.run(
        [
            str(BIN / "grpcurl"),
            "-plaintext",
            target,
            "describe",
            "agentmesh.agents.v1.AgentService",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "rpc CreateAgent ( .agentmesh.agents.v1.CreateAgentRequest )" in described
    assert 'post:"/v1/agents"' in described
    health = subprocess.run(
        [
            str(BIN / "grpcurl"),
            "-plaintext",
            "-d",
            '{"service": "agentmesh.identity.v1.IdentityService"}',
            target,
            "grpc.health.v1.Health/Check",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert json.loads(health) == {"status": "SERVING"}


def test_serve_refuses_to_start_without_secrets(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    env["AGENTMESH_GRPC_PORT"] = str(free_port())
    done = subprocess.run(
        [str(BIN / "agentmesh"), "serve", "agents"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "AGENTMESH_PAGE_TOKEN_SECRET" in done.stderr


def test_serve_rejects_unknown_service(tmp_path):
    done = subprocess.run(
        [str(BIN / "agentmesh"), "serve", "billing"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 2
    assert "unknown service billing" in done.stderr


def test_serve_with_workers_shares_the_port_and_stops_on_sigterm(settings, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    env.update(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        AGENTMESH_GRPC_PORT=str(port),
        AGENTMESH_PAGE_TOKEN_SECRET="workers-test",
        AGENTMESH_SERVICE_SECRET="workers-test",
        # Not called by this test, but agents refuses to start without it.
        AGENTMESH_IDENTITY_ADDR=f"127.0.0.1:{free_port()}",
    )
    err_file = (tmp_path / "stderr").open("w")
    proc = subprocess.Popen(
        [str(BIN / "agentmesh"), "serve", "agents", "--workers", "2"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=err_file,
        text=True,
    )
    logs = lambda: (tmp_path / "stderr").read_text()[-3000:]  # noqa: E731
    try:
        started = [proc.stdout.readline() for _ in range(2)]
        assert all(f"serving gRPC on 127.0.0.1:{port}" in line for line in started), (started, logs())
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 2, logs()
        health = subprocess.run(
            [str(BIN / "grpcurl"), "-plaintext", f"127.0.0.1:{port}", "grpc.health.v1.Health/Check"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert json.loads(health) == {"status": "SERVING"}
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        proc.stdout.close()
        err_file.close()
    assert code == 0, logs()
    for child in children:
        assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text()


def test_up_has_the_demo_data(agentmesh_up):
    """user_1/1234 signs in to tenant demo, and the demo agent is there (created once)."""
    target = f"127.0.0.1:{agentmesh_up}"
    login = subprocess.run(
        [
            str(BIN / "grpcurl"),
            "-plaintext",
            "-d",
            '{"tenant": "demo", "username": "user_1", "password": "1234"}',
            target,
            "agentmesh.identity.v1.IdentityService/Login",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    token = json.loads(login)["tokens"]["access_token"]
    for _ in range(50):
        listed = json.loads(
            subprocess.run(
                [
                    str(BIN / "grpcurl"),
                    "-plaintext",
                    "-H",
                    f"authorization: Bearer {token}",
                    "-d",
                    "{}",
                    target,
                    "agentmesh.agents.v1.AgentService/ListAgents",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
        )
        if listed.get("agents"):
            break
        time.sleep(0.2)
    assert [a["display_name"] for a in listed["agents"]] == ["Echo assistant"]
    assert listed["agents"][0]["state"] == "AGENT_STATE_ACTIVE"
