"""The start line (services/orchestration/start_line.py): runs on their way to a first delta come
first; the work that waits for them waits boundedly. Through the worker, test_hub's "first delta
beside 199 streaming runs" and the suites' runs."""

from __future__ import annotations

import asyncio

from services.orchestration.start_line import StartLine


async def test_nothing_waits_when_no_run_is_ahead() -> None:
    line = StartLine(max_defer=3600)
    assert not line.busy
    await asyncio.wait_for(line.yield_to_starts(), 5)


async def test_stored_answers_wait_until_the_runs_ahead_streamed_their_first_delta() -> None:
    line = StartLine(max_defer=3600)
    line.enter("a")
    line.enter("b")
    assert line.busy
    waiting = asyncio.ensure_future(line.yield_to_starts())
    line.leave("a")
    await asyncio.sleep(0.05)
    assert not waiting.done()  # b is still ahead
    line.leave("b")
    line.leave("b")  # idempotent: a run leaves at its first delta and again at its end
    await asyncio.wait_for(waiting, 5)
    assert not line.busy


async def test_the_wait_is_bounded_so_new_runs_cannot_starve_the_others() -> None:
    line = StartLine(max_defer=0.05)
    line.enter("always-ahead")
    await asyncio.wait_for(line.yield_to_starts(), 5)
    assert line.busy


async def test_at_most_concurrency_runs_are_in_their_start_first_come_first() -> None:
    line = StartLine(2)
    inside: list[int] = []
    most = 0
    gate = asyncio.Event()

    async def start(i: int) -> None:
        nonlocal most
        async with line.slot():
            inside.append(i)
            most = max(most, len(inside))
            await gate.wait()
            inside.remove(i)

    tasks = [asyncio.ensure_future(start(i)) for i in range(5)]
    await asyncio.sleep(0.05)
    assert sorted(inside) == [0, 1]
    gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert most == 2
