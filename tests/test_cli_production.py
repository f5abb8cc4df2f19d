"""Production refuses to start half-configured: the real `agentmesh` command as a subprocess, with a
clean environment, says in one line everything that is missing (or that the port is taken) and exits
non-zero; `migrate` needs a database and known names; `up` prints its banner and logs to a file;
`make up` generates code only when the protos changed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PG_SERVER
from tests.embedded import BIN
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent


def clean_env(**env: str) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AGENTMESH_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    return {**base, **env}


def agentmesh(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "agentmesh"), *args],
        env=clean_env(**env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
    )


def refused(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The one line a refusal prints; nothing on stdout, no traceback."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@contextlib.contextmanager
def bare_database() -> Iterator[str]:
    """An empty PostgreSQL database (no schema at all), dropped on exit."""
    name = f"agentmesh_cli_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        base = PG_SERVER.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def tables(url: str) -> list[str]:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return sorted(r[0] for r in rows)


@pytest.mark.parametrize(
    ("services", "missing"),
    [
        (
            ["agents"],
            "DATABASE_URL, REDIS_URL, AGENTMESH_PAGE_TOKEN_SECRET, AGENTMESH_IDENTITY_ADDR not set",
        ),
        (
            ["orchestration"],
            "DATABASE_URL, REDIS_URL, AGENTMESH_PAGE_TOKEN_SECRET, AGENTMESH_SERVICE_SECRET, "
            "AGENTMESH_IDENTITY_ADDR, AGENTMESH_AGENTS_ADDR, AGENTMESH_CONVERSATION_ADDR not set",
        ),
        (
            ["identity"],
            "DATABASE_URL, REDIS_URL, AGENTMESH_PAGE_TOKEN_SECRET, AGENTMESH_SIGNING_KEY_FILE, "
            "AGENTMESH_SERVICE_SECRET not set",
        ),
        (
            ["gateway"],
            "REDIS_URL, AGENTMESH_IDENTITY_ADDR, AGENTMESH_AGENTS_ADDR, AGENTMESH_CONVERSATION_ADDR, "
            "AGENTMESH_ORCHESTRATION_ADDR not set",
        ),
    ],
)
def test_serve_names_everything_missing_in_one_line(tmp_path, services, missing):
    line = refused(agentmesh("serve", *services, cwd=tmp_path, AGENTMESH_GRPC_PORT=str(free_port())), 2)
    assert line.startswith(f"agentmesh: `agentmesh serve {' '.join(services)}` will not start: "), line
    assert missing in line
    assert list(tmp_path.iterdir()) == [], "nothing created (no SQLite file, no keys)"


def test_peers_in_the_same_process_need_no_address(tmp_path):
    line = refused(agentmesh("serve", "identity", "agents", "orchestration", cwd=tmp_path), 2)
    assert "AGENTMESH_CONVERSATION_ADDR not set" in line
    assert line.count("_ADDR") == 1, line


def test_serve_refuses_a_database_schema_older_than_the_code(tmp_path, redis_url):
    with bare_database() as url:
        env = dict(
            DATABASE_URL=url,
            REDIS_URL=redis_url,
            AGENTMESH_PAGE_TOKEN_SECRET="s",
            AGENTMESH_IDENTITY_ADDR=f"127.0.0.1:{free_port()}",
            AGENTMESH_GRPC_PORT=str(free_port()),
        )
        line = refused(agentmesh("serve", "agents", "conversation", cwd=tmp_path, **env), 2)
        assert line == (
            "agentmesh: `agentmesh serve agents conversation` will not start: database schema of "
            "agents, conversation is older than the code: run `agentmesh migrate`"
        )
        assert tables(url) == [], "the refused start changed the database"

        # Missing variables and the schema in the same line.
        line = refused(
            agentmesh("serve", "agents", cwd=tmp_path, **{**env, "AGENTMESH_IDENTITY_ADDR": ""}), 2
        )
        assert "AGENTMESH_IDENTITY_ADDR not set; database schema of agents is older" in line

        migrated = agentmesh("migrate", "agents", cwd=tmp_path, DATABASE_URL=url)
        assert migrated.returncode == 0, migrated.stderr
        assert "migrated agents" in migrated.stdout
        line = refused(agentmesh("serve", "agents", "conversation", cwd=tmp_path, **env), 2)
        assert "database schema of conversation is older than the code" in line
        assert "agents," not in line


def test_migrate_without_a_database_fails(tmp_path):
    line = refused(agentmesh("migrate", cwd=tmp_path), 2)
    assert "DATABASE_URL is not set" in line and "--data-dir" in line
    assert list(tmp_path.iterdir()) == []


def test_migrate_rejects_unknown_services_before_touching_the_database(tmp_path):
    with bare_database() as url:
        line = refused(agentmesh("migrate", "agents", "billing", cwd=tmp_path, DATABASE_URL=url), 2)
        assert line == (
            "agentmesh: unknown service billing; choose from identity, agents, conversation, orchestration"
        )
        assert tables(url) == []


def test_migrate_reports_an_unreachable_database(tmp_path):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
    line = refused(agentmesh("migrate", cwd=tmp_path, DATABASE_URL=url), 2)
    assert line.startswith("agentmesh: cannot reach the database (DATABASE_URL): ")


def test_migrate_with_a_data_dir_migrates_the_embedded_database(tmp_path):
    done = agentmesh("migrate", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "migrated identity, agents, conversation, orchestration" in done.stdout
    assert (tmp_path / "data" / "agentmesh.db").stat().st_size > 0


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_serve_on_a_taken_grpc_port_is_one_line(tmp_path, pg_url, redis_url):
    env = dict(
        DATABASE_URL=pg_url,
        REDIS_URL=redis_url,
        AGENTMESH_PAGE_TOKEN_SECRET="s",
        AGENTMESH_IDENTITY_ADDR=f"127.0.0.1:{free_port()}",
    )
    for workers in ("1", "2"):
        with taken_port() as port:
            done = agentmesh(
                "serve", "agents", "--workers", workers, cwd=tmp_path, AGENTMESH_GRPC_PORT=str(port), **env
            )
        line = refused(done, 1)
        assert line == (
            f"agentmesh: cannot listen for gRPC on 127.0.0.1:{port}: Address already in use "
            "(set AGENTMESH_GRPC_PORT or --grpc-port)"
        )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_gateway_on_a_taken_http_port_is_one_line(tmp_path, redis_url, workers):
    addresses = {f"AGENTMESH_{s}_ADDR": f"127.0.0.1:{free_port()}" for s in ("IDENTITY", "AGENTS")}
    addresses |= {
        f"AGENTMESH_{s}_ADDR": f"127.0.0.1:{free_port()}" for s in ("CONVERSATION", "ORCHESTRATION")
    }
    with taken_port() as port:
        done = agentmesh(
            "serve",
            "gateway",
            "--workers",
            workers,
            cwd=tmp_path,
            AGENTMESH_HTTP_PORT=str(port),
            REDIS_URL=redis_url,
            **addresses,
        )
    line = refused(done, 1)
    assert line == (
        f"agentmesh: cannot listen for HTTP on 127.0.0.1:{port}: Address already in use "
        "(set AGENTMESH_HTTP_PORT)"
    )


@pytest.mark.parametrize("which", ["--grpc-port", "--http-port"])
def test_up_on_a_taken_port_is_one_line(tmp_path, which):
    other = "--http-port" if which == "--grpc-port" else "--grpc-port"
    with taken_port() as port:
        done = agentmesh(
            "up",
            which,
            str(port),
            other,
            str(free_port()),
            "--data-dir",
            str(tmp_path / "d"),
            "--log",
            "-",
            cwd=tmp_path,
        )
    line = refused(done, 1)
    kind = "gRPC" if which == "--grpc-port" else "HTTP"
    assert line.startswith(f"agentmesh: cannot listen for {kind} on 127.0.0.1:{port}: Address already in use")


@pytest.mark.parametrize("command", ["up", "serve"])
def test_every_option_has_help_with_its_default(tmp_path, command):
    done = agentmesh(command, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = done.stdout.split("options:", 1)[1]
    # One entry per option: its flags at two spaces, its help (maybe wrapped) below or beside.
    entries: list[str] = []
    for line in text.splitlines():
        if line.startswith("  -") and not line.startswith("  -h"):
            entries.append(line)
        elif entries and line.startswith("    "):
            entries[-1] += " " + line.strip()
    flags = {
        "up": ["--grpc-port", "--http-port", "--data-dir", "--log"],
        "serve": ["--workers", "--grpc-port"],
    }
    assert [e.split()[0] for e in entries] == flags[command]
    for entry in entries:
        assert "(default: " in " ".join(entry.split()), entry


def test_up_prints_a_banner_and_logs_to_the_data_dir(tmp_path):
    grpc_port, http_port = free_port(), free_port()
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [
            str(BIN / "agentmesh"),
            "up",
            "--grpc-port",
            str(grpc_port),
            "--http-port",
            str(http_port),
            "--data-dir",
            str(data),
        ],
        env=clean_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out and out[-1].startswith("Ctrl-C")):
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    banner = "".join(out)
    assert code == 0, (banner, err)
    assert f"http://127.0.0.1:{http_port}/" in banner
    assert f"127.0.0.1:{grpc_port}" in banner
    assert "user_1, password 1234" in banner
    assert str(data / "agentmesh.log") in banner
    assert err == "", "log lines belong in the log file"
    logged = (data / "agentmesh.log").read_text().splitlines()
    assert logged and all(line.startswith('{"time": ') for line in logged)
    assert any('"message": "serving"' in line for line in logged)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_up_generates_only_when_a_proto_changed(tmp_path):
    """The real Makefile in a scratch tree whose generator and agentmesh only write down their runs."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "protos" / "a").mkdir(parents=True)
    proto = tmp_path / "protos" / "a" / "a.proto"
    proto.write_text('syntax = "proto3";\n')
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "generate.py").write_text(
        "open('runs', 'a').write('generate\\n')\n"
        "import pathlib\n"
        "p = pathlib.Path('third_party/google/api/annotations.proto')\n"
        "p.parent.mkdir(parents=True, exist_ok=True)\n"
        "p.write_text('')\n"
    )
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(BIN / "python")
    (bin_dir / "agentmesh").write_text("#!/bin/sh\necho up >> runs\n")
    (bin_dir / "agentmesh").chmod(0o755)
    (tmp_path / ".venv" / ".installed").touch()
    past = time.time() - 100
    for path in (tmp_path / "pyproject.toml", proto, tmp_path / "scripts" / "generate.py"):
        os.utime(path, (past, past))

    def make_up() -> list[str]:
        done = subprocess.run(["make", "up"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return (tmp_path / "runs").read_text().split()

    assert make_up() == ["generate", "up"]
    assert make_up() == ["generate", "up", "up"]
    future = time.time() + 100
    os.utime(proto, (future, future))
    assert make_up() == ["generate", "up", "up", "generate", "up"]
