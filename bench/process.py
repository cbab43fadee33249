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
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.integration.real import free_port

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, from /proc/<pid>/stat (clock-tick resolution)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of stat


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


def bench_settings(
    directory: Path, registries: list[dict[str, Any]], debounce: tuple[str, str] | None
) -> dict[str, Any]:
    """A config for the server under test: loopback ports, these registries, a debounce
    (None: the default), logs at info as deployed."""
    data: dict[str, Any] = {
        "server": {"listen": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"},
        "log_level": "info",
        "registries": registries,
    }
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
