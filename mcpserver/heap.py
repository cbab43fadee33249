"""Handing freed heap pages back to the operating system at the moments a large part of the
heap was just freed.

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

RELEASE_AT: Final = 8 << 20
"""Bytes freed at once worth a trim: a cold start's set, not a rebuild's few changes (the
trim walks every arena's free blocks, a few milliseconds at 10k services)."""


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    return trim


_TRIM: Final = _malloc_trim()


def release(freed: int) -> None:
    """Return free heap pages to the OS if `freed` bytes (just freed) reach RELEASE_AT."""
    if _TRIM is None or freed < RELEASE_AT:
        return
    began = time.perf_counter()
    _TRIM(0)
    log.debug(
        "heap trimmed after %d bytes freed in %.1f ms", freed, (time.perf_counter() - began) * 1000
    )
