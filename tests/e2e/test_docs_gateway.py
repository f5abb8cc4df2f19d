"""docs/gateway.md's HTTP examples, run as written with curl against a real `agentmesh up`."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
from typing import Any

from tests.embedded import run_embedded

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "gateway.md"
# `TOKEN=...   # tokens.accessToken`: the doc's way of saying "take this from the previous answer".
_PLACEHOLDER = re.compile(r"([A-Z_]+)=\.\.\.\s+#\s*(\S+)")


def examples() -> list[str]:
    section = DOC.read_text().split("\n## HTTP/JSON", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    return [line.strip() for line in block.splitlines() if line.strip()]


def _at(answer: Any, path: str) -> str:
    for part in path.split("."):
        answer = answer[part]
    assert isinstance(answer, str) and answer, path
    return answer


def test_every_http_example_succeeds(tmp_path: pathlib.Path) -> None:
    lines = examples()
    assert sum(line.startswith("curl ") for line in lines) >= 5
    with run_embedded(tmp_path / "data") as up:
        env = {"PATH": os.environ["PATH"]}
        answer: Any = None
        for line in lines:
            placeholder = _PLACEHOLDER.fullmatch(line)
            if placeholder:
                env[placeholder[1]] = _at(answer, placeholder[2])
                continue
            assert line.startswith("curl "), line
            command = line.replace("localhost:8080", up.http_url) + " -w '\\n%{http_code}'"
            done = subprocess.run(
                ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=30, check=True
            )
            body, status = done.stdout.rsplit("\n", 1)
            assert status.startswith("2"), (line, status, body)
            answer = json.loads(body)
        assert answer["agents"], answer
