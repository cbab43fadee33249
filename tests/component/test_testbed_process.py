"""The test bed's process helper (testbed/process.py), on small shell commands: output kept
in the log, readiness waited on with a deadline, an exit failing the wait at once with the
log's end, and a stop that reaches a whole process group."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from testbed.process import Process, wait_ready

pytestmark = pytest.mark.component


def test_waits_until_ready_then_stops_within_the_grace(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("an earlier run\n")
    server = Process(["sh", "-c", "sleep 0.3; echo listening; exec sleep 60"], log)
    assert server.wait_ready("server", lambda: "listening" in server.output(), 10, 0.02)
    assert server.output() == "listening\n"  # this start's output, not the earlier run's
    assert log.read_text() == "an earlier run\nlistening\n"
    server.stop(grace=5)
    assert server.returncode == -signal.SIGTERM


def test_an_exit_fails_the_wait_at_once_with_the_end_of_the_log(tmp_path: Path) -> None:
    server = Process(["sh", "-c", "echo bad flag; exit 3"], tmp_path / "server.log")
    began = time.monotonic()
    with pytest.raises(AssertionError, match=r"(?s)server exited \(status 3\).*bad flag"):
        server.wait_ready("server", lambda: False, within=30)
    assert time.monotonic() - began < 10


def test_a_deadline_passed_fails_naming_what_and_the_log(tmp_path: Path) -> None:
    server = Process(["sleep", "60"], tmp_path / "server.log")
    try:
        with pytest.raises(AssertionError, match=r"server not ready in 0\.2s"):
            server.wait_ready("server", lambda: False, within=0.2, every=0.05)
    finally:
        server.stop(grace=5)


def test_a_server_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    command = ["sh", "-c", "trap '' TERM; echo up; sleep 60 & wait"]
    server = Process(command, tmp_path / "s.log", own_group=True)  # the sleep dies too
    server.wait_ready("server", lambda: "up" in server.output(), 10, 0.02)
    began = time.monotonic()
    server.stop(grace=0.5)
    assert server.returncode == -signal.SIGKILL
    assert time.monotonic() - began < 5


def test_own_group_stops_the_children_too(tmp_path: Path) -> None:
    pids = tmp_path / "child.pid"
    server = Process(
        ["sh", "-c", f"sleep 60 & echo $! > {pids}; wait"], tmp_path / "s.log", own_group=True
    )
    child = int(server.wait_ready("child", lambda: pids.exists() and pids.read_text().strip()))
    server.stop(grace=5)

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        # a zombie until its parent (the test process's reaper) collects it
        return Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"

    wait_ready("the child's end", gone, None, None, within=5, every=0.05)
