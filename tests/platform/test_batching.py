"""Batcher: concurrent submissions share a run, a lone one goes at once, outcomes reach their callers."""

from __future__ import annotations

import asyncio

import pytest

from services.platform.batching import Batcher


class Recorder:
    """A `run` that records its batches and waits for `gate` (set = answer at once)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def run(self, items: list[str]) -> list[object]:
        self.batches.append(list(items))
        await self.gate.wait()
        return [ValueError(item) if item.startswith("bad") else item.upper() for item in items]


async def test_a_lone_caller_is_sent_at_once():
    recorder = Recorder()
    batcher = Batcher(recorder.run)
    assert await asyncio.wait_for(batcher.submit("a"), 1) == "A"
    assert recorder.batches == [["a"]]


async def test_callers_arriving_during_a_run_share_the_next_one():
    recorder = Recorder()
    recorder.gate.clear()
    batcher = Batcher(recorder.run)
    first = asyncio.create_task(batcher.submit("a"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(batcher.submit(x)) for x in "bcd"]
    await asyncio.sleep(0)
    assert recorder.batches == [["a"]]
    recorder.gate.set()
    assert await asyncio.gather(first, *rest) == ["A", "B", "C", "D"]
    assert recorder.batches == [["a"], ["b", "c", "d"]]


async def test_items_with_one_key_never_share_a_batch_and_keep_their_order():
    recorder = Recorder()
    recorder.gate.clear()
    batcher = Batcher(recorder.run, key=lambda item: item[0], max_batch=3)
    tasks = [asyncio.create_task(batcher.submit(x)) for x in ["x0", "x1", "y0", "x2", "z0", "w0", "y1"]]
    await asyncio.sleep(0)
    recorder.gate.set()
    assert await asyncio.gather(*tasks) == ["X0", "X1", "Y0", "X2", "Z0", "W0", "Y1"]
    assert recorder.batches == [["x0", "y0", "z0"], ["x1", "w0", "y1"], ["x2"]]


async def test_an_item_failure_is_its_callers_alone_and_a_run_failure_everyones():
    recorder = Recorder()
    batcher = Batcher(recorder.run)
    results = await asyncio.gather(*(batcher.submit(x) for x in ["a", "bad", "c"]), return_exceptions=True)
    assert results[0] == "A" and results[2] == "C"
    assert isinstance(results[1], ValueError)

    async def broken(items: list[str]) -> list[str]:
        raise ConnectionError("database gone")

    failing = Batcher(broken)
    outcomes = await asyncio.gather(*(failing.submit(x) for x in "abc"), return_exceptions=True)
    assert [type(o) for o in outcomes] == [ConnectionError] * 3
    assert await asyncio.wait_for(batcher.submit("after"), 1) == "AFTER"


async def test_a_caller_that_goes_away_does_not_cancel_the_shared_run():
    recorder = Recorder()
    recorder.gate.clear()
    batcher = Batcher(recorder.run)
    leaving = asyncio.create_task(batcher.submit("a"))
    staying = asyncio.create_task(batcher.submit("b"))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    recorder.gate.set()
    assert await staying == "B"
    await batcher.close()
    assert recorder.batches == [["a", "b"]]


async def test_callers_of_one_loop_iteration_share_the_first_batch():
    recorder = Recorder()
    batcher = Batcher(recorder.run)
    assert await asyncio.gather(*(batcher.submit(x) for x in "abc")) == ["A", "B", "C"]
    assert recorder.batches == [["a", "b", "c"]]
