"""bench/chat_load.py's arithmetic and /proc readings, apart from its (smoke) run in test_bench.py:
a chat that fails counts once with its reason, a short answer is a failure, a chat without a
delta has no time to first delta (not a missing sample), the pace leaves the time to the first delta out, and a process tree's CPU and RSS include its children."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest

from bench.chat_load import summarize
from bench.chat_servers import cpu_seconds, rss_bytes, tree


def test_summarize_separates_failures_from_the_pace_and_gaps() -> None:
    chats = [
        # 5 tokens: the first delta at 0.5 s, the other 4 over the next 0.2 s (20 tokens/s).
        {"ttfd": 0.5, "arrivals": [[0.5, 1], [0.55, 1], [0.6, 1], [0.65, 1], [0.7, 1]], "error": None},
        # Coalesced: the same 5 tokens in two events, the second 0.3 s after the first.
        {"ttfd": 0.1, "arrivals": [[0.1, 1], [0.4, 4]], "error": None},
        # Ended without all its tokens and without an error of its own.
        {"ttfd": 0.2, "arrivals": [[0.2, 1], [0.3, 1]], "error": None},
        {"ttfd": None, "arrivals": [], "error": "UNAVAILABLE: Too many connections"},
        {"ttfd": None, "arrivals": [], "error": "UNAVAILABLE: Too many connections"},
    ]
    got = summarize("embedded", chats, expected_tokens=5)
    assert got["ttfd"] == [0.5, 0.1, 0.2, math.inf, math.inf]
    assert got["paces"] == pytest.approx([20.0, 4 / 0.3])
    assert got["gaps"] == pytest.approx([0.05, 0.3, 0.1])
    assert got["failures"] == {"UNAVAILABLE: Too many connections": 2, "2 of 5 tokens": 1}


def test_a_process_tree_counts_its_children() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ntime.sleep(30)",
        ]
    )
    try:
        assert child.pid in tree([os.getpid()])
        deadline = time.monotonic() + 20
        while cpu_seconds([child.pid]) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cpu_seconds([os.getpid()]) >= cpu_seconds([child.pid]) >= 0.25
        assert rss_bytes([os.getpid()]) > rss_bytes([child.pid]) > 0
    finally:
        child.kill()
        child.wait()
