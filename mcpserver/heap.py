"""The allocator's settings, and handing freed heap pages back to the operating system at
the moments a large part of the heap was just freed.

Settings (`configure`, once at start). glibc serves blocks of at least its mmap threshold
(128 KiB) from their own mappings, returned whole when freed; but each time such a block
is freed it raises the threshold to that block's size (up to 32 MiB), so after the first
large buffers (a ZooKeeper answer, a joined response) every later one of that size comes
from the heap, where freeing it leaves holes that stay resident among smaller live blocks.
Fixing the threshold at its default keeps large transient buffers out of the heap: a cold
start of 10k ZooKeeper interfaces x 10 providers peaked at 184-185 MiB with the moving
threshold and 179 MiB with it fixed (three runs each, alternated; 64 KiB and 32 KiB gave
the same), CPU unchanged. Limiting the arenas (one per thread: gRPC's, the ZooKeeper
client's, the workers') paid nothing measurable (178.6 against 178.9 MiB), so it is left.

Once serving (`serve_large_blocks`, with the collector's settle in runtime.py, after the
first pushes). What a fixed threshold keeps out of the heap at start then costs every large
write: gRPC copies each response it sends (8 MB at 10k services), and as a fresh mapping
that copy faults in each of its 2,048 pages, on the event loop, per stream and per new set.
From then on blocks up to 32 MiB come from the heap and up to 32 MiB free is kept at its
top, so each copy finds the resident pages of the one before. The price is that much more
RSS held between sets, after the cold start's peak, where fixing the threshold paid
(figures in docs/performance.md, on fan-out). Responses above 32 MiB (about 40k services
in one set) keep their own mappings.

Trims.

The allocator keeps what Python frees for reuse, and returns only the top of its heaps on
its own. At a cold start the packed resources' own bytes (13 MiB at 10k services) are freed
once the first response holds them (xds/snapshot.py), in thousands of small blocks spread
through the heap, and at once gRPC copies that response (another 13 MiB, a fresh mapping):
unreturned, the freed blocks stay resident beside the copy and the process peaks at both.
glibc's malloc_trim(0) returns every whole free page of every arena; elsewhere (musl) this
is a no-op, and the peak is what it was.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

MMAP_THRESHOLD: Final = 128 << 10
"""Bytes from which a block gets its own mapping (glibc's default, fixed: see above)."""

SERVING_THRESHOLD: Final = 32 << 20
"""Once serving: blocks below this come from the heap, and this much free memory is kept at
its top (glibc's largest mmap threshold on 64-bit)."""

_M_MMAP_THRESHOLD: Final = -3  # mallopt's parameter numbers (malloc.h)
_M_TRIM_THRESHOLD: Final = -1

RELEASE_AT: Final = 8 << 20
"""Bytes freed at once worth a trim: a cold start's set, not a rebuild's few changes (the
trim walks every arena's free blocks, a few milliseconds at 10k services)."""


def _glibc(name: str) -> Callable[..., int] | None:
    """The C library's function `name`, None where it has none (not glibc)."""
    try:
        function: Callable[..., int] = getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError):
        return None
    return function


_TRIM: Final = _glibc("malloc_trim")
_MALLOPT: Final = _glibc("mallopt")


def configure() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD (once, at start); False where the
    allocator is not glibc's (nothing to set) or refused it."""
    return _MALLOPT is not None and _MALLOPT(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


def serve_large_blocks() -> bool:
    """Serve blocks below SERVING_THRESHOLD from the heap and keep that much free at its top
    (once, after the first pushes): each response's copy then reuses the resident pages of
    the one before. False where the allocator is not glibc's or refused it."""
    return (
        _MALLOPT is not None
        and _MALLOPT(_M_MMAP_THRESHOLD, SERVING_THRESHOLD) == 1
        and _MALLOPT(_M_TRIM_THRESHOLD, SERVING_THRESHOLD) == 1
    )


def release(freed: int) -> None:
    """Return free heap pages to the OS if `freed` bytes (just freed) reach RELEASE_AT."""
    if _TRIM is None or freed < RELEASE_AT:
        return
    began = time.perf_counter()
    _TRIM(0)
    log.debug(
        "heap trimmed after %d bytes freed in %.1f ms", freed, (time.perf_counter() - began) * 1000
    )
