"""The ZooKeeper mirror against a fake asynchronous ZooKeeper client: how it reads (pipelined,
asynchronous only, one re-read per burst of events), and what it makes of the answers.

The fake holds a tree and answers reads only when the test says so, in the order they were
sent (as ZooKeeper answers one session's requests), registering each read's watch as
ZooKeeper does: a children or data watch on a successful read, a data watch on an `exists`
of a missing node, none on an error. Changes to the tree fire the watches registered on the
paths involved, once each (one-shot), with the client's event types.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Generic, TypeVar

import pytest

from mcpserver.metrics import Metrics
from mcpserver.registry.dubbo.mapping import DubboOptions
from mcpserver.registry.view import Status, View
from mcpserver.registry.zookeeper import mirror as mirror_module
from mcpserver.registry.zookeeper import watcher as watcher_module
from mcpserver.registry.zookeeper.assembly import (
    AppRecord,
    InterfaceRecord,
    MappingRecord,
    assemble,
    listing_digest,
)
from mcpserver.registry.zookeeper.config import ZooKeeperRegistrySettings
from mcpserver.registry.zookeeper.connection import (
    CONNECTED,
    SUSPENDED,
    ConnectionLossError,
    NoAuthError,
    NoNodeError,
)
from mcpserver.registry.zookeeper.interface import Pending, Watch, ZkClient, ZnodeStat
from mcpserver.registry.zookeeper.mirror import Mirror, ReadFailure
from mcpserver.registry.zookeeper.watcher import ZooKeeperRegistry
from tests.conftest import eventually

pytestmark = pytest.mark.unit

T = TypeVar("T")


@dataclass(frozen=True)
class Stat:
    ctime: int


@dataclass(frozen=True)
class Event:
    type: str


class Answer(Generic[T]):
    """A kazoo IAsyncResult the fake fills in when it answers."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[Pending[T]], object]] = []
        self.value: T | None = None
        self.error: Exception | None = None

    def rawlink(self, callback: Callable[[Pending[T]], object]) -> None:
        self.callbacks.append(callback)

    def get_nowait(self) -> T:
        if self.error is not None:
            raise self.error
        assert self.value is not None or self.error is None
        return self.value  # type: ignore[return-value]  # None is a value here (exists)

    def resolve(self, value: T | None = None, error: Exception | None = None) -> None:
        self.value, self.error = value, error
        for callback in self.callbacks:
            callback(self)


@dataclass
class Request:
    op: str  # list | get | exists
    path: str
    watch: Watch
    answer: Answer[Any]


@dataclass
class FakeZooKeeper:
    """The tree (path -> (data, ctime)) and one session's reads and watches."""

    nodes: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    outstanding: list[Request] = field(default_factory=list)
    sent: list[tuple[str, str]] = field(default_factory=list)  # (op, path) of every read
    max_outstanding: int = 0
    child_watches: dict[str, list[Watch]] = field(default_factory=dict)
    data_watches: dict[str, list[Watch]] = field(default_factory=dict)
    no_auth: set[str] = field(default_factory=set)
    sync_calls: list[str] = field(default_factory=list)
    clock: int = 1000
    server: str = "fake:2181"
    last_error: str = ""

    # ------------------------------------------------------------- the tree

    def create(self, path: str, data: bytes = b"") -> None:
        parent = path.rsplit("/", 1)[0] or "/"
        if parent != "/" and parent not in self.nodes:
            self.create(parent)
        self.clock += 1
        self.nodes[path] = (data, self.clock)
        self._fire(self.data_watches, path, "CREATED")
        self._fire(self.child_watches, parent, "CHILD")

    def delete(self, path: str) -> None:
        for child in self.children(path):
            self.delete(f"{path}/{child}")
        del self.nodes[path]
        self._fire(self.data_watches, path, "DELETED")
        self._fire(self.child_watches, path, "DELETED")
        self._fire(self.child_watches, path.rsplit("/", 1)[0] or "/", "CHILD")

    def set(self, path: str, data: bytes) -> None:
        self.nodes[path] = (data, self.nodes[path][1])
        self._fire(self.data_watches, path, "CHANGED")

    def children(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted(
            p[len(prefix) :]
            for p in self.nodes
            if p.startswith(prefix) and "/" not in p[len(prefix) :]
        )

    def _fire(self, watches: dict[str, list[Watch]], path: str, kind: str) -> None:
        for watch in watches.pop(path, []):
            watch(Event(kind))

    # ------------------------------------------------------------ the client

    def _request(self, op: str, path: str, watch: Watch) -> Answer[Any]:
        answer: Answer[Any] = Answer()
        self.outstanding.append(Request(op, path, watch, answer))
        self.sent.append((op, path))
        self.max_outstanding = max(self.max_outstanding, len(self.outstanding))
        return answer

    def get_children_async(
        self, path: str, watch: Watch, include_data: bool
    ) -> Answer[tuple[list[str], ZnodeStat]]:
        assert include_data
        return self._request("list", path, watch)

    def get_async(self, path: str, watch: Watch) -> Answer[tuple[bytes, ZnodeStat]]:
        return self._request("get", path, watch)

    def exists_async(self, path: str, watch: Watch) -> Answer[ZnodeStat | None]:
        return self._request("exists", path, watch)

    def answer(self, count: int | None = None) -> int:
        """Answer the oldest `count` reads (all, also those sent meanwhile, by default)."""
        answered = 0
        while self.outstanding and (count is None or answered < count):
            request = self.outstanding.pop(0)
            answered += 1
            node = self.nodes.get(request.path)
            if request.path in self.no_auth and request.op != "exists":
                request.answer.resolve(error=NoAuthError(request.path))
            elif request.op == "exists":
                self.data_watches.setdefault(request.path, []).append(request.watch)
                request.answer.resolve(None if node is None else Stat(node[1]))
            elif node is None:
                request.answer.resolve(error=NoNodeError(request.path))
            elif request.op == "list":
                self.child_watches.setdefault(request.path, []).append(request.watch)
                request.answer.resolve((self.children(request.path), Stat(node[1])))
            else:
                self.data_watches.setdefault(request.path, []).append(request.watch)
                request.answer.resolve((node[0], Stat(node[1])))
        return answered

    def drop_connection(self) -> None:
        """What the client does when the connection goes: every read in flight fails with
        ConnectionLoss, every watch is dropped (and told with a NONE event)."""
        pending, self.outstanding = self.outstanding, []
        for request in pending:
            request.answer.resolve(error=ConnectionLossError("/"))
        watches = [w for ws in self.child_watches.values() for w in ws]
        watches += [w for ws in self.data_watches.values() for w in ws]
        self.child_watches.clear()
        self.data_watches.clear()
        for watch in watches:
            watch(Event("NONE"))

    # the synchronous calls a watcher must not make (not in the ZkClient Protocol at all)
    def get_children(self, path: str, watch: object = None) -> list[str]:
        self.sync_calls.append(f"get_children {path}")
        raise AssertionError("synchronous get_children")

    def get(self, path: str, watch: object = None) -> tuple[bytes, ZnodeStat]:
        self.sync_calls.append(f"get {path}")
        raise AssertionError("synchronous get")

    def exists(self, path: str, watch: object = None) -> ZnodeStat | None:
        self.sync_calls.append(f"exists {path}")
        raise AssertionError("synchronous exists")

    # the lifecycle calls of ZkClient: the mirror makes none
    def start(self, timeout: float = 15) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...

    def add_listener(self, listener: Callable[[str], object]) -> None: ...

    def remove_listener(self, listener: Callable[[str], object]) -> None: ...


def provider(iface: str, host: str) -> str:
    return f"dubbo%3A%2F%2F{host}%3A20880%2F{iface}%3Fside%3Dprovider"


def dubbo_tree(interfaces: int, providers: int = 2) -> FakeZooKeeper:
    zk = FakeZooKeeper()
    for i in range(interfaces):
        iface = f"com.example.S{i}"
        for j in range(providers):
            zk.create(f"/dubbo/{iface}/providers/{provider(iface, f'10.0.{i}.{j + 1}')}")
    return zk


@dataclass
class Setup:
    zk: FakeZooKeeper
    mirror: Mirror
    wakes: list[int]


def mirror_of(zk: FakeZooKeeper, services_roots: tuple[str, ...] = ()) -> Setup:
    wakes: list[int] = []
    client: ZkClient = zk
    mirror = Mirror(
        client,
        ["/dubbo"],
        list(services_roots),
        mapping=True,
        wake=lambda: wakes.append(1),
    )
    return Setup(zk, mirror, wakes)


def walked(zk: FakeZooKeeper, services_roots: tuple[str, ...] = ()) -> Setup:
    setup = mirror_of(zk, services_roots)
    setup.mirror.watch_roots()
    zk.answer()
    return setup


def sent_since(zk: FakeZooKeeper, mark: int) -> list[tuple[str, str]]:
    return zk.sent[mark:]


# ----------------------------------------------------------------- how it reads


def test_the_first_walk_sends_every_read_it_can_before_waiting_for_any() -> None:
    zk = dubbo_tree(300)
    setup = mirror_of(zk)
    setup.mirror.watch_roots()
    assert zk.answer(1) == 1  # the root's children: 300 interfaces
    # all 300 providers reads are out before the first of them is answered
    assert len(zk.outstanding) == 300
    assert all(r.op == "list" and r.path.endswith("/providers") for r in zk.outstanding)
    zk.answer()
    taken = setup.mirror.take()
    assert taken.listed
    assert len(taken.changes.interfaces) == 300
    assert zk.sync_calls == []


def test_reads_in_flight_are_bounded_by_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mirror_module, "WINDOW", 50)
    zk = dubbo_tree(300)
    setup = mirror_of(zk)
    setup.mirror.watch_roots()
    zk.answer(1)
    assert len(zk.outstanding) == 50  # pipelined, up to the window
    zk.answer(10)
    assert len(zk.outstanding) == 50  # each answer sends the next
    zk.answer()
    assert zk.max_outstanding == 50
    assert len(setup.mirror.take().changes.interfaces) == 300


def test_nothing_is_handed_over_until_the_first_walk_settles_then_one_wake() -> None:
    zk = dubbo_tree(20)
    setup = mirror_of(zk)
    setup.mirror.watch_roots()
    zk.answer(1 + 10)  # the root and half the interfaces
    taken = setup.mirror.take()
    assert not taken.listed
    assert not taken.changes
    assert setup.wakes == []
    zk.answer()
    assert setup.wakes == [1]  # the whole walk: one wake, one take
    taken = setup.mirror.take()
    assert taken.listed
    assert len(taken.changes.interfaces) == 20


def test_a_burst_of_events_on_one_node_is_one_re_read() -> None:
    zk = dubbo_tree(3)
    setup = walked(zk)
    setup.mirror.take()
    path = "/dubbo/com.example.S1/providers"
    # the node was read three times (the walk, two re-lists): three watch callables on it
    setup.mirror.relist()
    zk.answer()
    setup.mirror.relist()
    zk.answer()
    fired = list(zk.child_watches[path])
    assert len(fired) == 3
    mark = len(zk.sent)
    zk.create(f"{path}/{provider('com.example.S1', '10.9.9.9')}")  # fires all three
    assert sent_since(zk, mark) == [("list", path)]
    # the same watches again (the client also hands each a NONE event when the connection goes)
    # while that read is in flight: nothing more
    for watch in fired * 3:
        watch(Event("CHILD"))
        watch(Event("NONE"))
    assert sent_since(zk, mark) == [("list", path)]
    zk.answer()
    record = setup.mirror.take().changes.interfaces[("/dubbo", "com.example.S1")]
    assert record is not None and len(record.providers) == 3
    assert record.listing == listing_digest(record.providers)  # the assembly's, made once


def test_an_event_before_the_answer_of_its_read_is_processed_still_re_reads() -> None:
    """The mirror does not depend on the client delivering answers and events in order
    (kazoo's event and completion threads did not): the watch of a read may fire before
    the read's answer is handled. The answer is then stale; the re-read is not."""
    zk = dubbo_tree(1)
    setup = walked(zk)
    setup.mirror.take()
    path = "/dubbo/com.example.S0/providers"
    setup.mirror.relist()
    (request,) = [r for r in zk.outstanding if r.path == path]
    zk.outstanding.remove(request)
    # ZooKeeper answered (the watch is registered) and then a provider came; the event is
    # handled first, the answer (without the new provider) after it
    zk.child_watches.setdefault(path, []).append(request.watch)
    old = (zk.children(path), Stat(zk.nodes[path][1]))
    mark = len(zk.sent)
    zk.create(f"{path}/{provider('com.example.S0', '10.9.9.8')}")
    assert sent_since(zk, mark) == [("list", path)]
    request.answer.resolve(old)  # stale: overtaken by the re-read
    zk.answer()
    record = setup.mirror.take().changes.interfaces[("/dubbo", "com.example.S0")]
    assert record is not None and len(record.providers) == 3


def test_changes_are_followed_with_asynchronous_reads_only() -> None:
    zk = dubbo_tree(2)
    setup = walked(zk, ("/services",))
    setup.mirror.take()
    zk.create(f"/dubbo/com.example.S0/providers/{provider('com.example.S0', '10.1.1.1')}")
    zk.delete("/dubbo/com.example.S1")
    zk.create("/services/shop/a", b"{}")
    zk.create("/dubbo/mapping/com.example.S0", b"shop")
    zk.answer()
    changes = setup.mirror.take().changes
    assert changes.interfaces[("/dubbo", "com.example.S1")] is None
    s0 = changes.interfaces[("/dubbo", "com.example.S0")]
    assert s0 is not None and len(s0.providers) == 3
    assert changes.apps[("/services", "shop")] == AppRecord(
        (("a", b"{}"),), zk.nodes["/services/shop"][1]
    )
    assert changes.mappings[("/dubbo", "com.example.S0")] == MappingRecord(
        b"shop", zk.nodes["/dubbo/mapping/com.example.S0"][1]
    )
    assert zk.sync_calls == []


# ------------------------------------------------------------ what it makes of it


def test_a_missing_root_is_listed_as_empty_and_watched_until_it_comes() -> None:
    zk = FakeZooKeeper()
    setup = walked(zk)
    taken = setup.mirror.take()
    assert taken.listed and not taken.changes
    assert "/dubbo" in zk.data_watches  # an exists watch
    zk.create(f"/dubbo/com.example.A/providers/{provider('com.example.A', '10.0.0.1')}")
    zk.answer()
    record = setup.mirror.take().changes.interfaces[("/dubbo", "com.example.A")]
    assert record is not None and len(record.providers) == 1


def test_a_providers_node_deleted_and_created_again_is_a_new_incarnation() -> None:
    zk = dubbo_tree(1, providers=1)
    setup = walked(zk)
    key = ("/dubbo", "com.example.S0")
    first = setup.mirror.take().changes.interfaces[key]
    assert first is not None
    path = "/dubbo/com.example.S0/providers"
    zk.delete(path)
    zk.answer()
    assert setup.mirror.take().changes.interfaces[key] == InterfaceRecord((), 0)
    # the missing providers node is watched through its interface node's children
    assert "/dubbo/com.example.S0" in zk.child_watches and path not in zk.data_watches
    zk.create(f"{path}/{provider('com.example.S0', '10.0.0.7')}")
    zk.answer()
    again = setup.mirror.take().changes.interfaces[key]
    assert again is not None and again.ctime > first.ctime
    assert len(again.providers) == 1


def test_an_instance_deleted_and_created_between_two_reads_is_read_again() -> None:
    zk = FakeZooKeeper()
    zk.create("/services/shop/a", b"one")
    setup = walked(zk, ("/services",))
    setup.mirror.take()
    zk.delete("/services/shop/a")  # the instance's read and the app's listing are queued
    zk.answer(1)  # the instance: missing
    zk.create("/services/shop/a", b"two")  # its parent's listing brings it back
    zk.answer()
    record = setup.mirror.take().changes.apps[("/services", "shop")]
    assert record is not None and record.instances == (("a", b"two"),)


def test_an_unreadable_path_fails_is_retried_and_recovers() -> None:
    zk = dubbo_tree(2)
    secret = "/dubbo/com.example.S1/providers"
    zk.no_auth.add(secret)
    setup = walked(zk)
    taken = setup.mirror.take()
    assert taken.listed  # as complete as it can be
    assert taken.unreadable == (ReadFailure(secret, "NoAuthError", no_auth=True),)
    assert taken.failures == taken.unreadable
    assert ("/dubbo", "com.example.S1") not in taken.changes.interfaces
    setup.mirror.retry()
    zk.answer()
    taken = setup.mirror.take()
    assert taken.failures == taken.unreadable  # failed again, counted again
    zk.no_auth.clear()
    setup.mirror.retry()
    zk.answer()
    taken = setup.mirror.take()
    assert taken.unreadable == ()
    record = taken.changes.interfaces[("/dubbo", "com.example.S1")]
    assert record is not None and len(record.providers) == 2


def test_an_unreadable_root_is_never_listed() -> None:
    zk = dubbo_tree(1)
    zk.no_auth.add("/dubbo")
    setup = walked(zk)
    taken = setup.mirror.take()
    assert not taken.listed
    assert [f.path for f in taken.unreadable] == ["/dubbo"]
    assert setup.wakes == [1]  # the walk is over (as far as it goes): the loop shows it


def test_a_lost_connection_mid_walk_is_re_listed_and_reconciled() -> None:
    zk = dubbo_tree(10)
    setup = mirror_of(zk)
    setup.mirror.watch_roots()
    zk.answer(1 + 4)
    zk.drop_connection()  # six providers reads fail; every watch is gone
    taken = setup.mirror.take()
    assert taken.lost and not taken.listed and not taken.changes
    assert taken.unreadable == ()  # the connection's problem, not the paths'
    # meanwhile one interface went and one provider came
    zk.delete("/dubbo/com.example.S9")
    zk.create(f"/dubbo/com.example.S0/providers/{provider('com.example.S0', '10.5.5.5')}")
    setup.mirror.relist()
    zk.answer()
    taken = setup.mirror.take()
    assert taken.listed and not taken.lost
    assert sorted(k[1] for k, r in taken.changes.interfaces.items() if r is not None) == [
        f"com.example.S{i}" for i in range(9)
    ]
    s0 = taken.changes.interfaces[("/dubbo", "com.example.S0")]
    assert s0 is not None and len(s0.providers) == 3
    # and it is watched again: the next change is followed
    zk.create(f"/dubbo/com.example.S1/providers/{provider('com.example.S1', '10.5.5.6')}")
    zk.answer()
    s1 = setup.mirror.take().changes.interfaces[("/dubbo", "com.example.S1")]
    assert s1 is not None and len(s1.providers) == 3


def test_after_close_nothing_is_read() -> None:
    zk = dubbo_tree(2)
    setup = walked(zk)
    setup.mirror.close()
    mark = len(zk.sent)
    zk.create(f"/dubbo/com.example.S0/providers/{provider('com.example.S0', '10.6.6.6')}")
    setup.mirror.relist()
    setup.mirror.retry()
    assert sent_since(zk, mark) == []


def test_a_registry_without_roots_is_listed_at_once() -> None:
    wakes: list[int] = []
    client: ZkClient = FakeZooKeeper()
    mirror = Mirror(client, [], [], mapping=True, wake=lambda: wakes.append(1))
    mirror.watch_roots()
    assert wakes == [1]
    assert mirror.take().listed


def test_interfaces_that_come_and_go_leave_no_watch_behind() -> None:
    """A deleted interface's providers node goes first, and was then watched with an exists
    watch, which ZooKeeper keeps for the session on a path that never comes back (and the
    client its callback): one per interface ever deleted. Watched through the interface
    node's children instead, nothing is left once the interface is gone."""
    zk = dubbo_tree(1, providers=1)
    setup = walked(zk)
    setup.mirror.take()

    def watches() -> int:
        return sum(map(len, zk.child_watches.values())) + sum(map(len, zk.data_watches.values()))

    before = watches()
    for n in range(20):
        iface = f"com.example.Gone{n}"
        zk.create(f"/dubbo/{iface}/providers/{provider(iface, '10.9.0.1')}")
        zk.answer()
        zk.delete(f"/dubbo/{iface}")
        zk.answer()
    interfaces = setup.mirror.take().changes.interfaces
    assert all(interfaces.get(("/dubbo", f"com.example.Gone{n}")) is None for n in range(20))
    assert watches() == before


# ------------------------------------------------------- assembling ahead of the walk


def test_the_walk_read_so_far_is_handed_over_ahead_and_a_later_change_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mirror_module, "WALK_BATCH", 4)
    zk = dubbo_tree(10)
    setup = mirror_of(zk)
    setup.mirror.watch_roots()
    zk.answer(1 + 3)
    assert setup.wakes == []  # fewer than WALK_BATCH keys read
    zk.answer(1)
    assert setup.wakes == [1]  # a batch to assemble ahead
    assert not setup.mirror.take().changes  # a plain take still hands over nothing
    taken = setup.mirror.take(ahead=True)
    assert taken.walking and not taken.listed
    assert sorted(k[1] for k in taken.changes.interfaces) == [f"com.example.S{i}" for i in range(4)]
    # S0, handed over ahead, loses a provider before the walk ends
    zk.delete(f"/dubbo/com.example.S0/providers/{provider('com.example.S0', '10.0.0.1')}")
    zk.answer()
    taken = setup.mirror.take(ahead=True)
    assert not taken.walking and taken.listed
    assert sorted(k[1] for k in taken.changes.interfaces) == [
        f"com.example.S{i}" for i in [0, *range(4, 10)]
    ]
    assert taken.changes.interfaces[("/dubbo", "com.example.S0")] == InterfaceRecord(
        (provider("com.example.S0", "10.0.0.2"),), zk.nodes["/dubbo/com.example.S0/providers"][1]
    )


def small_walk(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeZooKeeper, Setup]:
    """A walk of 40 interfaces begun, 4 reads in flight at most, woken every 4 keys read,
    reading ahead of the takes by 8 keys."""
    monkeypatch.setattr(mirror_module, "WINDOW", 4)
    monkeypatch.setattr(mirror_module, "WALK_BATCH", 4)
    monkeypatch.setattr(mirror_module, "WALK_BACKLOG", 8)
    zk = dubbo_tree(40)
    setup = mirror_of(zk)
    setup.mirror.watch_roots()
    return zk, setup


def test_a_walk_taken_ahead_reads_no_further_than_the_backlog_ahead_of_the_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    zk, setup = small_walk(monkeypatch)
    zk.answer(1 + 4)  # the root, then the first 4 listings
    assert setup.wakes == [1]
    handed: list[str] = []
    taken = setup.mirror.take(ahead=True)
    handed += [k[1] for k in taken.changes.interfaces]
    most = 0
    while not taken.listed:
        zk.answer()  # everything in flight: the walk then waits for the loop
        assert not zk.outstanding
        wakes = len(setup.wakes)
        taken = setup.mirror.take(ahead=True)  # the loop, woken, takes: the reads go on
        assert wakes > 0 and (zk.outstanding or taken.listed)
        most = max(most, len(taken.changes.interfaces))
        handed += [k[1] for k in taken.changes.interfaces]
    assert most <= 8 + 4  # the backlog, and the reads in flight (WINDOW) when it was reached
    assert sorted(handed) == sorted(f"com.example.S{i}" for i in range(40))


def test_a_walk_not_taken_ahead_reads_on_whatever_it_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A taker that does not assemble ahead takes the walk whole once read: its reads
    never wait for a take (none comes before the walk settles)."""
    zk, setup = small_walk(monkeypatch)
    zk.answer()
    taken = setup.mirror.take()
    assert taken.listed and len(taken.changes.interfaces) == 40


class ListeningZooKeeper(FakeZooKeeper):
    """The fake, telling the registry its connection states as the client does."""

    def __init__(self, tree: FakeZooKeeper) -> None:
        super().__init__(nodes=tree.nodes, clock=tree.clock)
        self.listeners: list[Callable[[str], object]] = []

    def add_listener(self, listener: Callable[[str], object]) -> None:
        self.listeners.append(listener)

    def tell(self, state: str) -> None:
        for listener in self.listeners:
            listener(state)


def hosts_of(view: View) -> dict[str, int]:
    return {s.name: len(s.instances) for s in view.services}


async def registry_on(
    zk: FakeZooKeeper, monkeypatch: pytest.MonkeyPatch, views: list[View]
) -> ZooKeeperRegistry:
    monkeypatch.setattr(mirror_module, "WALK_BATCH", 4)
    monkeypatch.setattr(watcher_module, "new_client", lambda *args, **kwargs: zk)
    settings = ZooKeeperRegistrySettings(
        kind="zookeeper",
        name="zk",
        hosts="fake:2181",
        roots=["/dubbo"],
        services_roots=[],
        keep_when_empty=True,
    )
    registry = ZooKeeperRegistry(settings, Metrics(), {})
    await registry.start(lambda: views.append(registry.view()))
    await eventually(lambda: zk.outstanding)  # the root's read
    return registry


async def test_the_first_walk_is_assembled_ahead_and_published_once_whole_and_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    zk = dubbo_tree(20)
    views: list[View] = []
    registry = await registry_on(zk, monkeypatch, views)
    try:
        zk.answer(1 + 10)
        # the ten interfaces read are assembled while the walk goes on, and not published
        await eventually(lambda: len(registry._assembly.interfaces) == 10)
        assert registry.view().services == () and not registry.view().synced
        # S0 (assembled ahead) loses both providers, S5 (not read yet) gains one
        for j in (1, 2):
            zk.delete(
                f"/dubbo/com.example.S0/providers/{provider('com.example.S0', f'10.0.0.{j}')}"
            )
        zk.create(f"/dubbo/com.example.S5/providers/{provider('com.example.S5', '10.9.9.9')}")
        zk.answer()
        await eventually(lambda: registry.view().synced)
        # one view, the whole walk as it ended: S0 is not kept empty (nothing was shown)
        expected = {f"com.example.s{i}": 2 for i in range(1, 20)} | {"com.example.s5": 3}
        assert [hosts_of(v) for v in views if v.services] == [expected]
    finally:
        await registry.stop()


async def test_a_first_walk_cut_off_midway_publishes_nothing_until_it_is_read_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    zk = ListeningZooKeeper(dubbo_tree(20))
    views: list[View] = []
    registry = await registry_on(zk, monkeypatch, views)
    try:
        zk.answer(1 + 10)
        await eventually(lambda: len(registry._assembly.interfaces) == 10)
        zk.drop_connection()  # the other ten reads fail
        zk.tell(SUSPENDED)
        await eventually(lambda: registry.view().status is Status.DEGRADED)
        registry._wakeup.set()  # a refresh while the walk is cut off: still nothing shown
        await eventually(lambda: not registry._wakeup.is_set())
        assert all(not v.services for v in views) and not registry.view().synced
        zk.create(f"/dubbo/com.example.S19/providers/{provider('com.example.S19', '10.9.9.9')}")
        zk.tell(CONNECTED)  # the re-list reads the whole tree
        await eventually(lambda: zk.outstanding)
        zk.answer()
        await eventually(lambda: registry.view().synced)
        expected = {f"com.example.s{i}": 2 for i in range(19)} | {"com.example.s19": 3}
        assert [hosts_of(v) for v in views if v.services] == [expected]
    finally:
        await registry.stop()


# ----------------------------------------------------- provider names are not kept


def strings_reachable(*roots: object) -> set[str]:
    """Every str reachable from `roots` through the objects they refer to."""
    seen: set[int] = set()
    found: set[str] = set()
    todo = list(roots)
    while todo:
        item = todo.pop()
        if id(item) in seen or isinstance(item, type | ModuleType):
            continue
        seen.add(id(item))
        if isinstance(item, str):
            found.add(item)
            continue
        if isinstance(item, dict):
            todo.extend(item)  # a dict of str keys does not show its keys to the collector
        todo.extend(gc.get_referents(item))
    return found


def test_neither_the_mirror_nor_the_assembly_keeps_provider_names() -> None:
    zk = dubbo_tree(5, providers=3)
    setup = walked(zk)
    options = DubboOptions("zk", "dubbo", "{interface}", "{application}.dubbo", (), "inline")
    assembly = assemble(options, setup.mirror.take().changes)
    assert len(assembly.services) == 5  # what the names said is there ...
    names = {p.rsplit("/", 1)[1] for p in zk.nodes if "/providers/" in p}
    assert len(names) == 15
    # ... and no name itself (a URL of hundreds of characters each) is held any more
    assert not names & strings_reachable(setup.mirror, assembly)
    # a change is still told apart, and reuses the parses of the providers it kept
    zk.create(f"/dubbo/com.example.S0/providers/{provider('com.example.S0', '10.7.7.7')}")
    zk.answer()
    again = assemble(options, setup.mirror.take().changes, assembly)
    s0 = ("/dubbo", "com.example.S0")
    assert len(again.interfaces[s0].parsed) == 4
    kept = {id(m) for m in assembly.interfaces[s0].parsed.values()}
    assert len(kept & {id(m) for m in again.interfaces[s0].parsed.values()}) == 3


def test_redo_reads_every_listing_again_and_hands_the_whole_tree_over_once_read() -> None:
    zk = dubbo_tree(6)
    setup = walked(zk)
    first = setup.mirror.take().changes.interfaces
    assert len(first) == 6
    setup.mirror.redo()
    # the names were handed over and not kept: the listings are read again, as a walk
    assert sorted(path for _, path in zk.sent[-6:]) == sorted(
        f"/dubbo/{key[1]}/providers" for key in first
    )
    taken = setup.mirror.take(ahead=True)
    assert taken.walking and not taken.listed and not taken.changes.interfaces
    zk.answer()
    taken = setup.mirror.take()
    assert taken.listed and not taken.walking
    assert taken.changes.interfaces == first  # unchanged listings are handed over again
