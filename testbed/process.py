"""How a test-bed server runs: started with its output in a log file, waited on until a
readiness check passes within a deadline (failing at once, with the end of its log, if it
exits first), and stopped by signal with a grace period, by the kernel too when the test
process dies without teardown.

Every launcher in the test bed (the Kubernetes control plane, istiod, Envoy, ZooKeeper,
Consul, r-nacos, Eureka, moto, the Dubbo provider, mcpserver replicas) starts a `Process`
and waits on it with `wait_ready`: one readiness loop, one failure message, one way to stop.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# What a readiness check may raise while the server is not up yet: a refused or reset
# connection, an HTTP error status (urllib's HTTPError is an OSError), a half-written answer.
NOT_YET: tuple[type[BaseException], ...] = (OSError, ValueError)


def dying_with_us(command: list[str]) -> list[str]:
    """The command, SIGTERMed by the kernel when the test process dies (util-linux setpriv),
    so that a pytest killed without teardown (a CI timeout) leaves no server behind.

    The kernel ties the signal to the *thread* that started the child: a server started in
    a worker thread (`asyncio.to_thread(server.start)`) dies when that thread ends, which
    for the loop's default executor is when the test's event loop closes. Start servers
    that must outlive the test from the main thread (wait for them in a worker)."""
    setpriv = shutil.which("setpriv")
    return command if setpriv is None else [setpriv, "--pdeathsig", "TERM", "--", *command]


def terminate(
    process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, grace: float = 15.0
) -> None:
    """Ask a test server to stop, and kill it if it does not within `grace` seconds."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def tail(log: Path, size: int = 4000) -> str:
    """The end of a log file ("" while there is none)."""
    return log.read_text(errors="replace")[-size:] if log.exists() else ""


def wait_ready(
    what: str,
    ready: Callable[[], T],
    process: subprocess.Popen[Any] | None,
    log: Path | None,
    within: float = 60.0,
    every: float = 0.1,
) -> T:
    """Poll `ready()` until it is truthy, and return its value; fail early, with the end of
    the log, if the process exits first, and with it too once `within` seconds have passed.
    `ready` may raise what a server not up yet makes a client raise (NOT_YET). `process`
    None: a server this test does not own (a container), whose log is read all the same;
    `log` None: a process whose output the test reads itself."""
    deadline = time.monotonic() + within
    while True:
        try:
            value = ready()
            if value:
                return value
        except NOT_YET:
            pass
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what} exited (status {process.returncode}){said(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready in {within:g}s{said(log)}")
        time.sleep(every)


def said(log: Path | None) -> str:
    """The log's name and end, for a failure message."""
    return "" if log is None else f" (log {log}):\n{tail(log)}"


class Process(subprocess.Popen[bytes]):
    """One test-bed server process, its stdout and stderr appended to `log_path` (or the file
    started afresh: `fresh_log`). A `subprocess.Popen`: tests signal it, read its pid and
    poll it as one.

    `die_with_us`: the kernel SIGTERMs it when the test process dies (see `dying_with_us`
    for the thread caveat). `own_group`: it leads a process group of its own, and `stop`
    signals the whole group (a command that starts children, as `make run` does)."""

    def __init__(
        self,
        command: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        fresh_log: bool = False,
        die_with_us: bool = False,
        own_group: bool = False,
    ) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self.own_group = own_group
        # where this start's output begins in the log (a restarted server appends)
        self.log_offset = 0 if fresh_log or not log_path.exists() else log_path.stat().st_size
        argv = dying_with_us(list(command)) if die_with_us else list(command)
        with log_path.open("wb" if fresh_log else "ab") as log:
            super().__init__(
                argv,
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=own_group,
            )

    def output(self) -> str:
        """What this process has written to its log so far."""
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    def tail(self, size: int = 4000) -> str:
        return tail(self.log_path, size)

    def wait_ready(
        self, what: str, ready: Callable[[], T], within: float = 60.0, every: float = 0.1
    ) -> T:
        """`wait_ready` (the module's) for this process and its log."""
        return wait_ready(what, ready, self, self.log_path, within, every)

    def stop(self, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
        """Signal it (its whole group, with `own_group`) and wait `grace` seconds before
        killing it."""
        if self.poll() is not None:
            return
        if not self.own_group:
            terminate(self, sig, grace)
            return
        os.killpg(self.pid, sig)
        try:
            self.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.wait(5)
