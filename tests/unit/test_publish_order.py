"""What runs on the loop between a publish and a stream writing the new set (fan-out, issue
29): neither the release of the set a stream held nor the change tracker's description of
the publish may come first. Driven through a real AdsHandler and ChangeTracker on a loop,
with a stand-in for gRPC's stream context that records when each write begins."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2

from mcpserver.changes import ChangeTracker, describe_change
from mcpserver.metrics import Metrics
from mcpserver.xds.resources import PackedResource, pack
from mcpserver.xds.snapshot import SetChange, Snapshot, build_snapshot
from mcpserver.xds.sotw import AdsHandler, Clients
from mcpserver.xds.store import SnapshotStore
from tests.conftest import eventually

pytestmark = pytest.mark.unit

SE = "networking.istio.io/v1/ServiceEntry"


def entry(name: str, host: str, registry: str = "files") -> PackedResource:
    spec = service_entry_pb2.ServiceEntry(hosts=[host])
    created = datetime(2024, 1, 1, tzinfo=UTC)
    return pack("ServiceEntry", "ns", name, spec, created, (("registry", registry),))


class Journal(list[str]):
    """What happened, in order."""


class Released(dict[str, Any]):
    """A snapshot's sets that note in the journal when the snapshot is let go."""

    def __init__(self, sets: Any, journal: Journal, name: str) -> None:
        super().__init__(sets)
        self._journal, self._name = journal, name

    def __del__(self) -> None:
        self._journal.append(f"released {self._name}")


class Context:
    """The parts of grpc.aio's servicer context a stream uses."""

    def __init__(self, journal: Journal, tracker: ChangeTracker | None) -> None:
        self.journal, self.tracker = journal, tracker
        self.writes = 0

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    async def write(self, payload: bytes) -> None:
        self.writes += 1
        self.journal.append(f"write {self.writes}")
        if self.tracker is not None:
            change = self.tracker.activity.last_change
            self.journal.append(f"described {change.version if change else None}")
        await asyncio.sleep(0)


async def requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
    yield discovery_pb2.DiscoveryRequest(type_url=SE)
    await asyncio.Event().wait()  # the client stays connected and says nothing more


async def stream(store: SnapshotStore, context: Context) -> asyncio.Task[None]:
    handler = AdsHandler(store, Metrics(), Clients())
    task = asyncio.create_task(handler.stream(requests(), context))  # type: ignore[arg-type]  # a stand-in context
    await eventually(lambda: context.writes == 1, 5)
    return task


async def test_the_set_a_stream_held_is_released_after_the_new_one_is_written() -> None:
    journal = Journal()
    store = SnapshotStore()
    first = build_snapshot([entry("a", "a.mesh")])
    store.publish(replace(first, sets=Released(first.sets, journal, "first")))
    del first
    context = Context(journal, None)
    task = await stream(store, context)
    store.publish(build_snapshot([entry("a", "a.other")]))
    await eventually(lambda: "released first" in journal, 5)
    task.cancel()
    # the stream held the only reference to the first set: letting it go (milliseconds at
    # 10k services) must not come between the publish and the client
    assert journal == ["write 1", "write 2", "released first"]


async def test_a_publish_is_described_once_the_woken_streams_have_written() -> None:
    journal = Journal()
    store = SnapshotStore()
    tracker = ChangeTracker(store, lambda: (), Metrics())
    first = build_snapshot([entry("a", "a.mesh")])
    store.publish(first)
    await eventually(lambda: tracker.activity.last_change is not None, 5)
    context = Context(journal, tracker)
    task = await stream(store, context)
    published_at = tracker.activity.published_at
    second = build_snapshot([entry("a", "a.other")])
    store.publish(second)
    assert tracker.activity.published_at != published_at  # said at once (metric, page)
    await eventually(lambda: context.writes == 2, 5)
    await eventually(
        lambda: (c := tracker.activity.last_change) is not None and c.version == second.version,
        5,
    )
    task.cancel()
    # the stream woken by the second publish wrote it before the tracker described it
    described = f"described {first.version}"
    assert journal == ["write 1", described, "write 2", described]
    change = tracker.activity.last_change
    assert change is not None and "registry files changed 1 (ns/a)" in change.summary()


def test_one_owner_of_every_name_groups_them_at_once_and_a_stranger_the_slow_way() -> None:
    old = build_snapshot([entry(n, f"{n}.mesh") for n in ("a", "b", "c")])
    sets = build_snapshot([entry(n, f"{n}.other") for n in ("a", "b", "c")]).sets
    changed = {"ServiceEntry": SetChange(changed=("ns/a", "ns/b", "ns/c"))}
    owned = Snapshot(
        "v2",
        sets,
        base=old.version,
        changes=changed,
        owners=dict.fromkeys(("ns/a", "ns/b", "ns/c"), "zk"),
    )
    change = describe_change(old, owned, lambda r: "asked")
    assert change.services == {"zk": SetChange(changed=("ns/a", "ns/b", "ns/c"))}
    # one name the build did not attribute: asked of `owner`, the others stay the build's
    partly = replace(owned, owners={"ns/a": "zk", "ns/c": "zk"})
    change = describe_change(old, partly, lambda r: "asked")
    assert change.services == {
        "asked": SetChange(changed=("ns/b",)),
        "zk": SetChange(changed=("ns/a", "ns/c")),
    }
