"""What the mcpserver process holds, sampled from outside: resident memory, threads and open
file descriptors from /proc, live asyncio tasks from its /metrics (`mcpserver_asyncio_tasks`),
and the least-squares slope of memory over time."""

from __future__ import annotations

import os
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Usage:
    at: float  # seconds since the churn started
    rss_mib: float
    threads: int
    fds: int
    tasks: int
    builds: int  # snapshots published so far

    def json(self) -> dict[str, Any]:
        return asdict(self)


def scrape(admin_port: int) -> dict[str, float]:
    """The unlabelled samples of mcpserver's /metrics."""
    url = f"http://127.0.0.1:{admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if line and not line.startswith("#") and "{" not in name:
            found[name] = float(value)
    return found


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def sample(pid: int, admin_port: int, at: float) -> Usage:
    metrics = scrape(admin_port)
    return Usage(
        at=at,
        rss_mib=rss_mib(pid),
        threads=len(os.listdir(f"/proc/{pid}/task")),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        tasks=int(metrics["mcpserver_asyncio_tasks"]),
        builds=int(metrics["mcpserver_snapshot_builds_total"]),
    )


def slope_per_hour(samples: list[Usage]) -> float:
    """Least-squares slope of RSS over time, in MiB per hour."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(s.at for s in samples) / n
    mean_r = sum(s.rss_mib for s in samples) / n
    spread = sum((s.at - mean_t) ** 2 for s in samples)
    if spread == 0:
        return 0.0
    covariance = sum((s.at - mean_t) * (s.rss_mib - mean_r) for s in samples)
    return covariance / spread * 3600
