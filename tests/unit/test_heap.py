"""The allocator's settings (mcpserver/heap.py), checked in a process of their own: a large
block freed must not move glibc's mmap threshold, so the next large one is a mapping of its
own again (returned whole when freed), not a hole in the heap."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

PROBE = """
import ctypes, sys
from mcpserver import heap

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
configured = heap.configure() if sys.argv[1] == "configure" else False
libc.free(libc.malloc(4 << 20))  # a large block, freed: glibc would raise its threshold
before = libc.mallinfo2().hblks
block = libc.malloc(1 << 20)  # below 4 MiB, above the fixed threshold
print(configured, libc.mallinfo2().hblks - before)
libc.free(block)
"""


def probe(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], check=True, capture_output=True, text=True
    ).stdout.split()
    return out[0], int(out[1])


def test_a_freed_large_block_leaves_the_mmap_threshold_where_it_was() -> None:
    if platform.libc_ver()[0] != "glibc":
        assert probe("configure")[0] == "False"  # nothing to set: the allocator's own rules
        return
    assert probe("configure") == ("True", 1)  # its own mapping
    assert probe("default") == ("False", 0)  # without: from the heap (what configure avoids)
