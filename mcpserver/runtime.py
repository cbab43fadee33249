"""The interpreter settings of `mcpserver serve`: how often the cyclic garbage collector
runs, and how long one thread may hold the GIL while another waits for it.

Collector. The estate's model (Services, Instances, their tuples and strings: a few million
objects at 100k instances) lives as long as the process, holds no reference cycles
(reference counting frees what a change drops) and is rebuilt piecemeal by every change.
With CPython's default thresholds (700, 10, 10) the collector ran every few hundred changed
services: in the ZooKeeper churn benchmark's loop (10k services, batches of 500 changes) it
was a third of the CPU per changed service (0.50 ms against 0.33 ms with these settings),
and each full collection walked the whole estate (0.5 s at 10k services, holding the GIL:
every stream and the event loop stall meanwhile). So the young generation is 30x larger
(young collections stay short; they are just rarer), and once the first snapshot has been
served, what startup built is moved to the permanent generation (`gc.freeze()`), which
collections no longer walk. Frozen objects are still freed by reference counting; a cycle
alive at the freeze and dropped later is never collected, and at that point the process
holds few (its registries' tasks and connections, which live as long as it does).

GIL. The ZooKeeper client's thread wakes for every event and answer (thousands a second in
a rolling restart), each time needing the GIL, while worker threads assemble and convert
batches of changes. A thread waiting for the GIL gets it only when the holder blocks or its
switch interval (5 ms by default) runs out, so under churn the client read ZooKeeper in
5 ms steps and fell behind: with 1 ms (or 0.5 ms), the churn benchmark's lag (1,000
writes/s, 10k services) was p50 1.0, 1.0, 1.7 and 3.0 s against 2.8 and 4.4 s with 5 ms, in
runs alternated on the same shared machine, CPU per write unchanged within noise (0.51-0.59
ms). The event loop's streams get the same quicker turn.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from typing import Final

from mcpserver.metrics import Metrics
from mcpserver.xds.store import SnapshotStore

log = logging.getLogger(__name__)

THRESHOLDS: Final = (20_000, 20, 10)
"""Allocations before a young collection, and young (then middle) collections before the next
older one. CPython's default is (700, 10, 10)."""

SWITCH_INTERVAL: Final = 0.001
"""Seconds a thread may hold the GIL while another waits (CPython's default: 0.005)."""

SETTLE_AFTER: Final = 2.0
"""Seconds after the first snapshot before the freeze: its first pushes go out first."""


def tune() -> None:
    """Set the process's collection thresholds and GIL switch interval (once, at start)."""
    gc.set_threshold(*THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL)


def settle(metrics: Metrics) -> None:
    """Collect what startup left behind, then take everything alive out of later scans: one
    full collection, on the loop (the GIL would stall it from any thread), once, after the
    first pushes went out (the log line says how long it took)."""
    began = time.perf_counter()
    gc.collect()
    gc.freeze()
    metrics.heap_frozen.set(gc.get_freeze_count())
    log.info(
        "heap settled after the first snapshot: %d objects frozen in %.0f ms",
        gc.get_freeze_count(),
        (time.perf_counter() - began) * 1000,
    )


def settle_after_first(store: SnapshotStore, metrics: Metrics, delay: float = SETTLE_AFTER) -> None:
    """`settle()` once, `delay` seconds after the store's first snapshot."""
    loop = asyncio.get_running_loop()

    def published() -> None:
        if store.snapshot is not None:
            unsubscribe()
            loop.call_later(delay, settle, metrics)

    unsubscribe = store.subscribe(published)
    published()  # already primed: settle all the same
