"""What istiod's CPU went to, read from its own outputs, and how a churn's writes fell on
shards: pure helpers of parts (f) and (c)-with-istiod, kept apart from the test bed those
parts start so that unit tests (tests/unit/test_bench_workload.py) load neither istiod nor
kube-apiserver launchers."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.workload import ZK_NAMESPACE, zk_host
from mcpserver.xds.shards import shard_of

WINDOW = 0.5
"""The default debounce's longest wait (debounce.max): under steady churn a snapshot carries
about this long of writes."""


GC_LINE = re.compile(r"^gc (\d+) @[\d.]+s \d+%: .*?, ([\d.+/]+) ms cpu", re.MULTILINE)


@contextlib.contextmanager
def gc_traced() -> Iterator[None]:
    """Processes started inside print a line per Go garbage collection (GODEBUG=gctrace=1):
    a log line per collection, no change to when or how it collects."""
    previous = os.environ.get("GODEBUG")
    os.environ["GODEBUG"] = "gctrace=1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["GODEBUG"]
        else:
            os.environ["GODEBUG"] = previous


def collections_in(log: str) -> dict[int, float]:
    """Go's collections in a gctrace log: number -> CPU milliseconds (every phase)."""
    found: dict[int, float] = {}
    for match in GC_LINE.finditer(log):
        parts = re.split(r"[+/]", match.group(2))
        found[int(match.group(1))] = sum(float(p) for p in parts)
    return found


PROFILED = {
    "adsc.handleMCP (config sources: every resource of each response)": "adsc.(*ADSC).handleMCP",
    "memory store updates": "memory.(*Store).Update",
    "Go garbage collection (background marking)": "runtime.gcBgMarkWorker",
    "xDS pushes to the sidecar": "xds.(*DiscoveryServer).pushXds",
}
"""Where istiod's CPU goes: functions whose cumulative share a profile reports (nested:
the store updates run inside handleMCP)."""


def profile_top(path: Path, lines: int = 45) -> list[str]:
    """`go tool pprof -top -cum` of a CPU profile (the profile carries its symbols)."""
    go = shutil.which("go")
    if go is None:
        return ["go not found: no summary"]
    done = subprocess.run(
        [go, "tool", "pprof", "-top", "-cum", f"-nodecount={lines}", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return (done.stdout or done.stderr).splitlines()


def shares(top: list[str]) -> dict[str, float]:
    """The cumulative share (0..1) of each PROFILED function in a `-top -cum` listing
    (columns: flat, flat%, sum%, cum, cum%, name)."""
    found: dict[str, float] = {}
    for line in top:
        fields = line.split()
        if len(fields) < 6 or not fields[4].endswith("%"):
            continue
        for what, function in PROFILED.items():
            if fields[5].endswith(function) and what not in found:
                found[what] = float(fields[4].rstrip("%")) / 100
    return found


def spread(ops: list[list[Any]], shards: int) -> dict[str, float]:
    """How the writes fell on services and shards: per WINDOW of writes (by issue time), the
    mean number of distinct services written, and of distinct shards of `shards` they are
    in (what a snapshot changes at most, and so what istiod re-reads)."""
    windows: dict[int, tuple[set[int], set[int]]] = {}
    first = min(op[3] for op in ops)
    for _kind, service, _address, issued, _acked, _error in ops:
        services, parts = windows.setdefault(int((issued - first) / WINDOW), (set(), set()))
        services.add(service)
        parts.add(shard_of(f"{ZK_NAMESPACE}/{zk_host(service)}", shards))
    return {
        "window_seconds": WINDOW,
        "services_per_window": sum(len(v[0]) for v in windows.values()) / len(windows),
        "shards_per_window": sum(len(v[1]) for v in windows.values()) / len(windows),
    }
