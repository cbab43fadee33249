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


def run(script: str, mode: str) -> tuple[str, int]:
    """`script` in a fresh interpreter (allocator settings last a process): what it printed,
    whether the settings took and a count."""
    out = subprocess.run(
        [sys.executable, "-c", script, mode], check=True, capture_output=True, text=True
    ).stdout.split()
    return out[0], int(out[1])


def probe(mode: str) -> tuple[str, int]:
    return run(PROBE, mode)


def test_a_freed_large_block_leaves_the_mmap_threshold_where_it_was() -> None:
    if platform.libc_ver()[0] != "glibc":
        assert probe("configure")[0] == "False"  # nothing to set: the allocator's own rules
        return
    assert probe("configure") == ("True", 1)  # its own mapping
    assert probe("default") == ("False", 0)  # without: from the heap (what configure avoids)


SECOND_COPY = """
import ctypes, resource, sys
from mcpserver import heap

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
size = 8 << 20  # a 10k-service response, as gRPC copies it to send

def copy() -> None:
    block = libc.malloc(size)
    libc.memset(block, 1, size)  # every page written, as a copy writes them
    libc.free(block)

heap.configure()
serving = heap.serve_large_blocks() if sys.argv[1] == "serving" else False
copy()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
copy()
print(serving, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def second_copy(mode: str) -> tuple[str, int]:
    """Page faults of the second 8 MB block written after a first was freed."""
    return run(SECOND_COPY, mode)


def test_once_serving_a_large_block_reuses_the_pages_of_the_one_freed_before() -> None:
    if platform.libc_ver()[0] != "glibc":
        assert second_copy("serving")[0] == "False"
        return
    pages = (8 << 20) // 4096
    serving, faults = second_copy("serving")
    assert serving == "True"
    assert faults < pages // 20  # resident already: at most a few stray faults
    configured, faults = second_copy("start")
    assert configured == "False" and faults >= pages // 2  # a fresh mapping: faulted in again
