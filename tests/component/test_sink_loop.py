"""The Kubernetes sink's loop without an apiserver (a fake lease, the writes recorded): it
stops when told to, even when the lease's renewal fails at the very moment it is cancelled
(Python 3.11's TaskGroup then raises the renewal's error instead of the cancellation, and a
loop that caught it kept running: stop() waited for ever); and it follows the snapshots'
changes from the first one, even when that was published before the sink started."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2

from mcpserver.metrics import Metrics
from mcpserver.sink.config import KubernetesSinkSettings
from mcpserver.sink.lease import LeaseLostError
from mcpserver.sink.objects import Key
from mcpserver.sink.writer import KubernetesSink
from mcpserver.xds.resources import PackedResource, pack
from mcpserver.xds.snapshot import SetChange, Snapshot, build_snapshot
from mcpserver.xds.store import SnapshotStore
from tests.conftest import eventually


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


def sink_for(tmp_path: Path) -> tuple[KubernetesSink, SnapshotStore]:
    token = tmp_path / "token"
    token.write_text("t\n")
    settings = KubernetesSinkSettings(
        apiserver="http://127.0.0.1:9", token_file=token, lease_namespace="default"
    )
    store = SnapshotStore()
    return KubernetesSink(settings, store, Metrics(), "me", {}), store


async def test_stop_ends_the_loop_when_the_renewal_fails_as_it_is_cancelled(
    tmp_path: Path,
) -> None:
    sink, _ = sink_for(tmp_path)
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


def entry(name: str, port: int) -> PackedResource:
    spec = service_entry_pb2.ServiceEntry(hosts=[f"{name}.shop"])
    spec.ports.add(number=port, name="http", protocol="HTTP")
    return pack("ServiceEntry", "shop", name, spec, datetime(2026, 1, 1, tzinfo=UTC))


async def test_changes_are_followed_from_a_snapshot_published_before_the_start(
    tmp_path: Path,
) -> None:
    sink, store = sink_for(tmp_path)
    first = build_snapshot([entry("a", 80), entry("b", 80)])
    store.publish(first)  # before the sink subscribes, as a quick first build can be
    asked: list[list[Key] | None] = []

    async def write(
        snapshot: Snapshot,
        resources: Mapping[Key, PackedResource],
        keys: list[Key] | None,
        began: float,
    ) -> None:
        asked.append(keys)
        sink._listed = False  # as a sync does: names others create are found by a GET
        sink.synced, sink.synced_at = snapshot.version, time.time()

    async def listed() -> None:
        sink._known = sink._listed = True
        sink._listed_at = time.monotonic()

    sink._write = write  # type: ignore[method-assign,assignment]  # what would be written, recorded
    sink._list = listed  # type: ignore[method-assign]  # nothing owned yet
    sink.lease = FailingOnCancel()  # type: ignore[assignment]
    await sink.start()
    try:
        await eventually(lambda: sink.synced == first.version, within=5)
        built = build_snapshot([entry("a", 80), entry("b", 81)])
        second = replace(
            built,
            base=first.version,
            changes=MappingProxyType({"ServiceEntry": SetChange(changed=("shop/b",))}),
        )
        store.publish(second)
        await eventually(lambda: sink.synced == second.version, within=5)
    finally:
        await sink.stop()
    assert asked == [None, [("ServiceEntry", "shop", "b")]]
    assert sink.plans == {"full": 1, "changed": 1}
