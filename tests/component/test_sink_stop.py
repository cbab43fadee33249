"""The Kubernetes sink stops when told to, even when the lease's renewal fails at the very
moment it is cancelled: Python 3.11's TaskGroup then raises the renewal's error instead of
the cancellation, and a loop that caught it kept running (stop() waited for ever)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mcpserver.metrics import Metrics
from mcpserver.sink.config import KubernetesSinkSettings
from mcpserver.sink.lease import LeaseLostError
from mcpserver.sink.writer import KubernetesSink
from mcpserver.xds.store import SnapshotStore


class WentRound(BaseException):
    """The loop went round after it was cancelled (a BaseException: nothing catches it, so
    the test fails instead of hanging)."""


class FailingOnCancel:
    """A lease held at once, whose renewal loop fails with LeaseLostError when cancelled."""

    namespace = "default"
    name = "test-sink"
    leading = False
    holder = ""
    error = ""

    def __init__(self) -> None:
        self.holding = asyncio.Event()
        self.acquired = 0

    async def acquire(self) -> None:
        self.acquired += 1
        if self.acquired > 1:
            raise WentRound
        self.leading = True

    async def hold(self) -> None:
        self.holding.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise LeaseLostError("someone") from None

    async def release(self) -> None:
        self.leading = False


async def test_stop_ends_the_loop_when_the_renewal_fails_as_it_is_cancelled(
    tmp_path: Path,
) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    settings = KubernetesSinkSettings(
        apiserver="http://127.0.0.1:9", token_file=token, lease_namespace="default"
    )
    sink = KubernetesSink(settings, SnapshotStore(), Metrics(), "me", {})
    lease = FailingOnCancel()
    sink.lease = lease  # type: ignore[assignment]  # the fake has what the loop uses

    async def lead() -> None:
        await asyncio.sleep(3600)

    sink._lead = lead  # type: ignore[method-assign]  # the loop's own step, held open
    await sink.start()
    await asyncio.wait_for(lease.holding.wait(), 5)
    await asyncio.wait_for(sink.stop(), 5)
    assert lease.acquired == 1  # it did not go round again
    assert sink._task is not None and sink._task.cancelled()
