"""Coalescing bursts of registry changes into few rebuilds.

A registry callback only says "something changed". A rebuild starts after `after` seconds of
quiet, or `max` seconds after the first trigger of a burst if changes keep coming, and only
one rebuild runs at a time; triggers that arrive during a rebuild start the next burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger("mcpserver.debounce")


def fire_at(first: float, last: float, after: float, max_wait: float) -> float:
    """When a burst that began at `first` and last moved at `last` should be acted on."""
    return min(last + after, first + max_wait)


class Clock(Protocol):
    """The time the debouncer reads and waits on: the event loop's, or a test's own."""

    def now(self) -> float: ...

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        """Return when `event` is set or `seconds` have passed, whichever is first."""


class LoopClock:
    """The running event loop's monotonic clock and timers."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)


class Debouncer:
    """Runs `action` once per burst of trigger() calls."""

    def __init__(
        self,
        action: Callable[[], Awaitable[None]],
        after: float,
        max_wait: float,
        clock: Clock | None = None,
    ) -> None:
        self._action = action
        self._clock: Clock = clock or LoopClock()
        self._after = after
        self._max = max_wait
        self._event = asyncio.Event()
        self._first: float | None = None
        self._last = 0.0
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._at_once = False
        self.runs = 0

    @property
    def busy(self) -> bool:
        """A burst is pending or its action is running."""
        return self._running or self._first is not None

    def trigger(self, at_once: bool = False) -> None:
        """Note a change; cheap and non-blocking (call on the loop). `at_once`: act on the
        burst now, without waiting for quiet (when there is nothing to coalesce for: the
        first snapshot once every registry has listed)."""
        now = self._clock.now()
        if self._first is None:
            self._first = now
        self._last = now
        self._at_once = self._at_once or at_once
        self._event.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="debouncer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._event.wait()
            while self._first is not None and not self._at_once:
                delay = fire_at(self._first, self._last, self._after, self._max)
                delay -= self._clock.now()
                if delay <= 0:
                    break
                self._event.clear()
                await self._clock.wait(self._event, delay)
            self._event.clear()
            self._first = None
            self._at_once = False
            self.runs += 1
            self._running = True
            try:
                await self._action()
            except Exception:
                log.exception("rebuild failed; keeping the previous snapshot")
            finally:
                self._running = False
