"""`gateway/loop_turns.py`: long loops give way to the event loop after a slice of time, not per item."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.loop_turns import Turns

pytestmark = pytest.mark.pure


async def loop_turns_during(work: float, items: int, budget_s: float) -> int:
    """How often other tasks ran while a loop of `items` items, `work` seconds each, paused on `Turns`."""
    turns_seen = 0
    stop = False

    async def other() -> None:  # runs once per turn of the loop that the work loop gives away
        nonlocal turns_seen
        while not stop:
            turns_seen += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    turns_seen = 0
    turns = Turns(budget_s)
    for _ in range(items):
        end = time.perf_counter() + work
        while time.perf_counter() < end:
            pass
        await turns.pause()
    stop = True
    await task
    return turns_seen


async def test_a_slow_loop_yields_once_per_budget() -> None:
    started = time.perf_counter()
    seen = await loop_turns_during(0.0005, 100, 0.005)  # 50 ms of work, a 5 ms budget
    elapsed = time.perf_counter() - started
    assert 1 <= seen <= elapsed / 0.005 + 1


async def test_a_fast_loop_does_not_yield_per_item() -> None:
    assert await loop_turns_during(0.0, 1000, 0.05) <= 1  # a thousand items in well under 50 ms
