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

log = logging.getLogger("mcpserver.debounce")


def fire_at(first: float, last: float, after: float, max_wait: float) -> float:
    """When a burst that began at `first` and last moved at `last` should be acted on."""
    return min(last + after, first + max_wait)


class Debouncer:
    """Runs `action` once per burst of trigger() calls."""

    def __init__(
        self, action: Callable[[], Awaitable[None]], after: float, max_wait: float
    ) -> None:
        self._action = action
        self._after = after
        self._max = max_wait
        self._event = asyncio.Event()
        self._first: float | None = None
        self._last = 0.0
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self.runs = 0

    @property
    def busy(self) -> bool:
        """A burst is pending or its action is running."""
        return self._running or self._first is not None

    def trigger(self) -> None:
        """Note a change; cheap and non-blocking (call on the loop)."""
        now = asyncio.get_running_loop().time()
        if self._first is None:
            self._first = now
        self._last = now
        self._event.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="debouncer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._event.wait()
            while self._first is not None:
                delay = fire_at(self._first, self._last, self._after, self._max) - loop.time()
                if delay <= 0:
                    break
                self._event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._event.wait(), delay)
            self._event.clear()
            self._first = None
            self.runs += 1
            self._running = True
            try:
                await self._action()
            except Exception:
                log.exception("rebuild failed; keeping the previous snapshot")
            finally:
                self._running = False
