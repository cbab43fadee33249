"""The interpreter settings of `mcpserver serve`: what the cyclic garbage collector walks,
and how long one thread may hold the GIL while another waits for it (and, through heap.py,
the allocator's settings).

Collector. The estate's model (Services, Instances, their tuples and strings: a few million
objects at 100k instances) lives as long as the process and holds no reference cycles
(reference counting frees what a change drops). CPython's collector still walks all of it
in each full collection, which churn triggers every few thousand changes: 0.4-0.5 s at 10k
services, holding the GIL, so every stream and the event loop stall meanwhile. So once the
first snapshot has been served, what startup built is moved to the permanent generation
(`gc.freeze()`), which collections no longer walk. Frozen objects are still freed by
reference counting; a cycle alive at the freeze and dropped later is never collected, and
at that point the process holds few (its registries' tasks and connections, which live as
long as it does). The thresholds stay CPython's: a young generation 30x larger saved little
CPU once the estate was frozen, and made the middle generation's collections long enough to
show in the one-change latency (p99 100-113 ms against 78-86 ms).

GIL. The ZooKeeper client's thread wakes for every event and answer (thousands a second in
a rolling restart), each time needing the GIL, while worker threads assemble and convert
batches of changes. A thread waiting for the GIL gets it only when the holder blocks or its
switch interval (5 ms by default) runs out, so under churn the client read ZooKeeper in
5 ms steps and fell behind: with 1 ms (or 0.5 ms), the churn benchmark's lag (1,000
writes/s, 10k services) was p50 1.0, 1.0, 1.7 and 3.0 s against 2.8 and 4.4 s with 5 ms, in
runs alternated on the same shared machine, CPU per write unchanged within noise (0.51-0.59
ms). The event loop's streams get the same quicker turn.

Collector at start. Until the first snapshot is out the collector is paused altogether:
startup builds the estate from nothing (the parsed file or the walk, the model, the packed
resources), and a collector running meanwhile walks all of it again every time it has grown
by a quarter (CPython's rule for full collections). At 10k services from a static JSON file
those repeated full collections were 1.2-1.4 s of a 5.5 s parse and build, a quarter of the
cold start, where the estate they walked holds no cycles to find. The first snapshot ends
the pause: what startup built is frozen (as `settle` does, without a collection) and the
collector resumes; so does a start that takes longer than STARTUP_PAUSE_LIMIT (a registry
that does not list), so that what a long wait drops is collected as usual. The cost is the
cyclic garbage startup itself dropped, frozen with the rest: once, and small (60 objects at
10k services; ~1,900 objects, 0.8 MiB, since the pause begins before the CLI's imports,
__main__.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from typing import Final

from mcpserver import heap
from mcpserver.metrics import Metrics
from mcpserver.xds.store import SnapshotStore

log = logging.getLogger(__name__)

SWITCH_INTERVAL: Final = 0.001
"""Seconds a thread may hold the GIL while another waits (CPython's default: 0.005)."""

STARTUP_PAUSE_LIMIT: Final = 30.0
"""Seconds at most the collector stays paused waiting for the first snapshot."""

SETTLE_AFTER: Final = 2.0
"""Seconds after the first snapshot before the freeze: its first pushes go out first."""


def tune() -> None:
    """Set the process's GIL switch interval and the allocator's settings (heap.py), and
    pause the collector until the first snapshot (once, at start)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    heap.configure()
    gc.disable()


def resume_collector() -> None:
    """End the startup pause, if any: freeze what startup built, then collect as usual."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def settle(metrics: Metrics) -> None:
    """Take everything alive out of later scans. No collection first: a full one is a pause
    of the loop (0.5 s at 10k services; the GIL would stall it from any thread), and the
    bench's change latency caught it (a 0.5 s sample; p99 0.2 s against 0.08 s). What it would have
    freed, reference cycles startup dropped before this instant, stays: once, and small."""
    began = time.perf_counter()
    gc.freeze()
    heap.serve_large_blocks()
    metrics.heap_frozen.set(gc.get_freeze_count())
    log.info(
        "heap settled after the first snapshot: %d objects frozen in %.1f ms",
        gc.get_freeze_count(),
        (time.perf_counter() - began) * 1000,
    )


def settle_after_first(store: SnapshotStore, metrics: Metrics, delay: float = SETTLE_AFTER) -> None:
    """End the collector's startup pause at the store's first snapshot (or after
    STARTUP_PAUSE_LIMIT seconds), and `settle()` once, `delay` seconds after it."""
    loop = asyncio.get_running_loop()
    limit = loop.call_later(STARTUP_PAUSE_LIMIT, resume_collector)

    def published() -> None:
        if store.snapshot is not None:
            unsubscribe()
            limit.cancel()
            resume_collector()
            loop.call_later(delay, settle, metrics)

    unsubscribe = store.subscribe(published)
    published()  # already primed: settle all the same
