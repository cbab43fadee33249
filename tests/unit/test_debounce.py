"""Debouncing: quiet period, maximum wait, one rebuild in flight. On a fake clock: time moves
when a test says so, so no test waits on real time and each says exactly when a run starts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mcpserver.debounce import Debouncer, fire_at

pytestmark = pytest.mark.unit


class FakeClock:
    """The debouncer's clock (mcpserver.debounce.Clock) at a time the test sets: a wait ends
    when its event is set or when `advance` moves the time past its end."""

    def __init__(self) -> None:
        self.time = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.time

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sleeper = (self.time + seconds, woken)
        self._sleepers.append(sleeper)
        setting = asyncio.ensure_future(event.wait())
        either: set[asyncio.Future[Any]] = {setting, woken}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            setting.cancel()
            self._sleepers.remove(sleeper)

    async def advance(self, seconds: float) -> None:
        """Move the time on, wake every wait that ends by then, and let the loop run what
        that wakes (the debouncer's task and the action it starts)."""
        self.time += seconds
        for end, woken in self._sleepers:
            if end <= self.time and not woken.done():
                woken.set_result(None)
        for _ in range(20):
            await asyncio.sleep(0)


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

    clock = FakeClock()
    debouncer = Debouncer(action, after=0.05, max_wait=0.5, clock=clock)
    debouncer.start()
    for _ in range(200):
        debouncer.trigger()
        await asyncio.sleep(0)
    await clock.advance(0.05)
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

    clock = FakeClock()
    debouncer = Debouncer(action, after=0.001, max_wait=0.01, clock=clock)
    debouncer.start()
    debouncer.trigger()
    await clock.advance(0.001)
    await asyncio.wait_for(first.wait(), 5)
    debouncer.trigger()
    await clock.advance(0.001)
    await asyncio.wait_for(second.wait(), 5)
    await debouncer.stop()


async def test_a_run_starts_after_the_quiet_period_or_at_the_maximum_wait() -> None:
    """after=0.5, max=3: a lone trigger runs 0.5 s later, not before; triggers every 0.375 s
    keep postponing the run until 3 s after the first of them, when it runs. (Times are
    binary fractions: the fake clock's sums are exact.)"""
    clock = FakeClock()
    started: list[float] = []

    async def action() -> None:
        started.append(clock.now())

    debouncer = Debouncer(action, after=0.5, max_wait=3.0, clock=clock)
    debouncer.start()
    debouncer.trigger()
    await clock.advance(0.25)
    assert started == []
    await clock.advance(0.25)
    assert started == [0.5]

    for _ in range(8):  # triggers at 0.5, 0.875, ... 3.125: never 0.5 s of quiet
        debouncer.trigger()
        await clock.advance(0.25)
        assert started == [0.5]
        await clock.advance(0.125)
    assert clock.now() == 3.5  # the burst's first trigger plus max
    assert started == [0.5, 3.5]
    assert debouncer.runs == 2
    await debouncer.stop()


async def test_a_burst_marked_at_once_runs_without_waiting_for_quiet() -> None:
    """The first snapshot, once every registry listed, is built at once (app.py `_wake`);
    triggers after it wait for quiet again."""
    done = asyncio.Event()

    async def action() -> None:
        done.set()

    clock = FakeClock()
    debouncer = Debouncer(action, after=0.05, max_wait=0.5, clock=clock)
    debouncer.start()
    debouncer.trigger()
    debouncer.trigger(at_once=True)
    await asyncio.wait_for(done.wait(), 5)  # the clock has not moved
    assert debouncer.runs == 1
    done.clear()
    debouncer.trigger()
    await clock.advance(0.01)
    assert not done.is_set()
    await clock.advance(0.05)
    await asyncio.wait_for(done.wait(), 5)
    await debouncer.stop()
    assert debouncer.runs == 2
