"""Processes under measurement: mcpserver as `mcpserver serve` in a subprocess, and reading
any process's memory and CPU from /proc.

The server runs in its own process so that its peak RSS and CPU are its own, and so that the
measuring side (kazoo writers and watchers, the probe's decoding) does not share its GIL.
Peak RSS is VmHWM from /proc/<pid>/status: the high-water mark of the process's own memory
since its exec. Not ru_maxrss from wait4() or RUSAGE_CHILDREN: on Linux that also counts the
forking parent's RSS, carried across fork/exec (the kernel folds the pre-exec address
space's high-water mark into it), so a small child of a 200 MB suite would report 200 MB.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bench.scrape import Samples, scrape
from mcpserver.xds.shards import PORT_STRIDE, shard_port
from testbed.ports import bindable, free_port

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")

QUIET_WINDOW = 1.0
"""Seconds without CPU beyond the idle rate that count as "the process is done"."""


def cpu_seconds(pid: int) -> float:
    """CPU time of a process so far, every thread's (live and exited), in seconds.

    Read from the process's CPU-time clock (nanosecond resolution): a push that costs istiod
    15 ms is two clock ticks of /proc/<pid>/stat's utime+stime, which cannot tell 15 ms from
    25 ms. The clock's id is Linux's encoding of a process CPU clock (include/linux/posix-timers.h
    MAKE_PROCESS_CPUCLOCK with CPUCLOCK_SCHED); /proc/<pid>/stat where it cannot be read."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)
    except OSError:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of stat


async def quiet(
    pid: int, allowance: float, within: float, window: float = QUIET_WINDOW
) -> tuple[float, float]:
    """Wait until the process used at most `allowance` CPU seconds over a whole `window`
    (seconds); returns (time, cpu) at the start of that quiet window."""
    history: collections.deque[tuple[float, float]] = collections.deque()
    async with asyncio.timeout(within):
        while True:
            at, cpu = time.perf_counter(), cpu_seconds(pid)
            history.append((at, cpu))
            while len(history) > 1 and history[1][0] <= at - window:
                history.popleft()  # the newest reading a whole window old stays first
            if history[0][0] <= at - window and cpu - history[0][1] <= allowance:
                return history[0]
            await asyncio.sleep(0.02)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) seconds of every CPU of the machine so far, from /proc/stat: what all
    processes, ours and everyone else's, used."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def status_kib(pid: int, key: str) -> int:
    """A /proc/<pid>/status figure in KiB (VmHWM: peak RSS so far, VmRSS: current)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def reap(process: subprocess.Popen[bytes], within: float) -> int:
    """Wait for a child to exit, killing it after `within` seconds; its exit status."""
    try:
        return process.wait(within)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(10)


def run_measured(command: list[str], within: float) -> tuple[float, str]:
    """Run a command to completion: (wall seconds from spawn to exit, its stdout). Killed
    after `within` seconds."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    stdout = process.stdout
    assert stdout is not None
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.append(stdout.read()))
    reader.start()
    code = reap(process, within)
    elapsed = time.perf_counter() - started
    reader.join()
    out = b"".join(chunks).decode()
    if code != 0:
        raise RuntimeError(f"{command} exited with {code}")
    return elapsed, out


def sharded_listen_port(shards: int) -> int:
    """A port for server.listen whose shard ports (listen + 100*N + k) are free too, below the
    ephemeral range: there no outgoing connection takes one of them as its source port
    between this check and the server's bind."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    highest = PORT_STRIDE * shards + shards  # past listen, the last shard port
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10_000, low - highest - 1)
        if all(bindable(p) for p in (port, *(shard_port(port, shards, k) for k in range(shards)))):
            return port
    raise RuntimeError(f"no free listen port with {shards} free shard ports")


def bench_settings(
    directory: Path,
    registries: list[dict[str, Any]],
    debounce: tuple[str, str] | None,
    shards: int = 1,
) -> dict[str, Any]:
    """A config for the server under test: loopback ports, these registries, a debounce
    (None: the default), `shards` (server.shards), logs at info as deployed."""
    listen = sharded_listen_port(shards) if shards > 1 else free_port()
    server: dict[str, Any] = {"listen": f"127.0.0.1:{listen}", "admin": f"127.0.0.1:{free_port()}"}
    if shards > 1:
        server["shards"] = shards
    data: dict[str, Any] = {"server": server, "log_level": "info", "registries": registries}
    if debounce is not None:
        data["debounce"] = {"after": debounce[0], "max": debounce[1]}
    return data


@dataclass
class ServerProcess:
    """`python -m mcpserver serve --config FILE` with the given settings."""

    workdir: Path
    settings: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    spawned_at: float = 0.0
    _log: Any = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return int(str(self.settings["server"]["listen"]).rsplit(":", 1)[1])

    @property
    def admin_port(self) -> int:
        return int(str(self.settings["server"]["admin"]).rsplit(":", 1)[1])

    def shard_ports(self, shards: int) -> list[int]:
        """The ports of layout `shards` ([port] for 1: the whole set)."""
        return [shard_port(self.port, shards, k) for k in range(shards)]

    def metrics(self) -> Samples:
        """The server's /metrics now."""
        return scrape(f"http://127.0.0.1:{self.admin_port}/metrics")

    def ready(self) -> bool:
        """Its /readyz says ready (the first complete snapshot is served)."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}/readyz", timeout=5
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        config = self.workdir / "mcpserver.yaml"
        config.write_text(yaml.safe_dump(self.settings))
        self._log = (self.workdir / "mcpserver.log").open("ab")
        self.spawned_at = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mcpserver", "serve", "--config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def running(self, work: Awaitable[T]) -> T:
        """Await `work`, failing at once (with the server's log) if the server exits."""
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.2)
                if not task.done() and not self.alive():
                    raise RuntimeError(f"the server exited; its log ends:\n{self.log_tail()}")
            return task.result()
        finally:
            task.cancel()

    def peak_mib(self) -> float:
        return status_kib(self.pid, "VmHWM") / 1024

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def log_tail(self, chars: int = 3000) -> str:
        path = self.workdir / "mcpserver.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.returncode is None:
            # killed, not stopped: a graceful stop drains for seconds, and nothing here
            # measures shutdown
            self.process.kill()
            reap(self.process, 20)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
