"""Debouncing: quiet period, maximum wait, one rebuild in flight."""

from __future__ import annotations

import asyncio

import pytest

from mcpserver.debounce import Debouncer, fire_at

pytestmark = pytest.mark.unit


def test_fire_at_quiet_period_or_max_wait() -> None:
    assert fire_at(first=0.0, last=0.0, after=0.1, max_wait=1.0) == pytest.approx(0.1)
    assert fire_at(first=0.0, last=0.5, after=0.1, max_wait=1.0) == pytest.approx(0.6)
    assert fire_at(first=0.0, last=0.95, after=0.1, max_wait=1.0) == pytest.approx(1.0)


async def test_a_burst_becomes_few_runs_and_runs_never_overlap() -> None:
    running = 0
    overlaps = 0
    done = asyncio.Event()

    async def action() -> None:
        nonlocal running, overlaps
        running += 1
        overlaps += running > 1
        await asyncio.sleep(0)
        running -= 1
        done.set()

    debouncer = Debouncer(action, after=0.05, max_wait=0.5)
    debouncer.start()
    for _ in range(200):
        debouncer.trigger()
        await asyncio.sleep(0)
    await asyncio.wait_for(done.wait(), 5)
    await debouncer.stop()
    assert 1 <= debouncer.runs <= 3
    assert overlaps == 0


async def test_failures_do_not_stop_the_debouncer() -> None:
    calls = 0
    first = asyncio.Event()
    second = asyncio.Event()

    async def action() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            first.set()
            raise RuntimeError("boom")
        second.set()

    debouncer = Debouncer(action, after=0.001, max_wait=0.01)
    debouncer.start()
    debouncer.trigger()
    await asyncio.wait_for(first.wait(), 5)
    debouncer.trigger()
    await asyncio.wait_for(second.wait(), 5)
    await debouncer.stop()
