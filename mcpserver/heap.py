"""Keeps CPython's cyclic garbage collector off the change path.

The estate's model (Services, Instances, their tuples and strings: a few million objects at
100k instances) lives as long as the process, holds no reference cycles (reference counting
frees what a change drops) and is rebuilt piecemeal by every change. With CPython's default
thresholds (700, 10, 10) the collector ran every few hundred changed services: in the
ZooKeeper churn benchmark's loop (10k services, batches of 500 changes) it was a third of the
CPU per changed service (0.50 ms against 0.33 ms with these settings), and each full
collection walked the whole estate (0.5 s at 10k services, holding the GIL: every stream and
the event loop stall meanwhile).

So the process (`mcpserver serve`, not a library user) gets a young generation 30x larger
(young collections stay short; they are just rarer), and once the first snapshot has been
served, what startup built is moved to the permanent generation (`gc.freeze()`), which
collections no longer walk. Frozen objects are still freed by reference counting; a cycle
alive at the freeze and dropped later is never collected, and at that point the process
holds few (its registries' tasks and connections, which live as long as it does).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Final

from mcpserver.metrics import Metrics
from mcpserver.xds.store import SnapshotStore

log = logging.getLogger(__name__)

THRESHOLDS: Final = (20_000, 20, 10)
"""Allocations before a young collection, and young (then middle) collections before the next
older one. CPython's default is (700, 10, 10)."""

SETTLE_AFTER: Final = 2.0
"""Seconds after the first snapshot before the freeze: its first pushes go out first."""


def tune() -> None:
    """Set the process's collection thresholds (once, at start)."""
    gc.set_threshold(*THRESHOLDS)


def settle(metrics: Metrics) -> None:
    """Collect what startup left behind, then take everything alive out of later scans."""
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
