"""docs/operations.md's multi-process layout, run from the doc's own commands: its exports and each
command's variables (ports moved to free ones, the suite's PostgreSQL server and Redis in place of the
examples), `agentmesh migrate` on an empty database, then the four services and the gateway; a new
tenant signs up over HTTP and chats once; SIGTERM stops every process with exit code 0."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import httpx

from tests.helpers import free_port
from tests.system.cluster import BIN, Cluster
from tests.system.conftest import unique
from tests.test_cli_production import bare_database, clean_env

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")


def doc_commands() -> tuple[dict[str, str], list[tuple[dict[str, str], list[str]]]]:
    """(exported variables, [(the command's own variables, argv)]) of the block that serves the gateway."""
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S)
    [block] = [b for b in blocks if "agentmesh serve gateway" in b]
    exports: dict[str, str] = {}
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] == "export":
            exports.update(ASSIGNMENT.match(w).groups() for w in words[1:])  # type: ignore[union-attr]
            continue
        own = {}
        while ASSIGNMENT.match(words[0]):
            name, value = ASSIGNMENT.match(words.pop(0)).groups()  # type: ignore[union-attr]
            own[name] = value
        commands.append((own, [w for w in words if w != "&"]))
    return exports, commands


def test_the_documented_layout_serves_a_chat(tmp_path, redis_url, monkeypatch):
    exports, commands = doc_commands()
    # The doc's ports, wherever they appear (ports and peer addresses), become free ones.
    ports = {
        own[key]: str(free_port())
        for own, _ in commands
        for key in ("AGENTMESH_GRPC_PORT", "AGENTMESH_HTTP_PORT")
        if key in own
    }
    moved = re.compile(r"\b(" + "|".join(map(re.escape, ports)) + r")\b")

    def local(value: str) -> str:
        return moved.sub(lambda m: ports[m.group(1)], value)

    served = [argv[2] for _, argv in commands if argv[:2] == ["agentmesh", "serve"]]
    assert served == ["identity", "agents", "conversation", "orchestration", "gateway"]
    # Relative paths in the doc (the signing key) are relative to where the commands run.
    monkeypatch.chdir(tmp_path)
    with bare_database() as database_url:
        assert {"DATABASE_URL", "REDIS_URL"} <= exports.keys()
        env = clean_env(
            **{
                **{k: local(v) for k, v in exports.items()},
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_url,
            }
        )
        cluster = Cluster(tmp_path / "cluster", database_url=database_url, redis_url=redis_url)
        for own, argv in commands:
            if argv[0] != "agentmesh":
                subprocess.run(argv, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=60)
            elif argv[1] == "migrate":
                done = subprocess.run(
                    [str(BIN / "agentmesh"), *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True
                )
                assert done.returncode == 0, done.stderr
            else:
                # Cluster runs exactly `agentmesh serve <service>`, here with the doc's environment only.
                assert len(argv) == 3 and argv[1] == "serve", argv
                proc = cluster.add(argv[2])
                proc.env = {**env, **{k: local(v) for k, v in own.items()}}
                proc.port = int(local(own.get("AGENTMESH_GRPC_PORT") or own["AGENTMESH_HTTP_PORT"]))
        try:
            cluster.start()
            chat_once(cluster["gateway"].url)
        finally:
            codes = cluster.close()
        assert codes == dict.fromkeys(served, 0)


def chat_once(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:

        def ok(response: httpx.Response) -> dict:  # type: ignore[type-arg]
            assert response.status_code == 200, response.text
            return response.json()  # type: ignore[no-any-return]

        tenant = unique("layout")
        ok(
            http.post(
                "/v1/identity:signUp",
                json={"tenantName": tenant, "username": "owner", "password": "a long enough password 1"},
            )
        )
        login = ok(
            http.post(
                "/v1/identity:login",
                json={"tenant": tenant, "username": "owner", "password": "a long enough password 1"},
            )
        )
        auth = {"Authorization": f"Bearer {login['tokens']['accessToken']}"}
        body = {"agent": {"displayName": "Echo", "config": {"model": "echo:default", "systemPrompt": "Hi"}}}
        agent = ok(http.post("/v1/agents", json=body, headers=auth))["agent"]
        session = ok(http.post("/v1/sessions", json={"agentId": agent["id"]}, headers=auth))["session"]
        with http.stream(
            "POST",
            f"/v1/sessions/{session['id']}:sendMessage",
            json={"text": "hello from the doc"},
            headers={**auth, "Accept": "text/event-stream"},
        ) as response:
            assert response.status_code == 200, response.read()
            text = "".join(response.iter_text())
        assert "RUN_EVENT_TYPE_RUN_COMPLETED" in text, text
        deltas = re.findall(r'"textDelta":\s*"([^"]*)"', text)
        assert "".join(deltas) == "Echo: hello from the doc", text
