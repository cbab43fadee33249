"""The registry's own ZooKeeper client against a real ZooKeeper: reads and one-shot watches
as ZooKeeper's own client has them, a chroot, pipelined reads answered in order, digest auth,
and what the connection does when the path to the server drops or freezes (the session kept
across a short cut, expired across a long one, each told to the listeners)."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.security import make_digest_acl

from mcpserver.registry.zookeeper.connection import (
    CONNECTED,
    LOST,
    SUSPENDED,
    Connection,
    ConnectionLossError,
    ConnectTimeoutError,
    Credentials,
    NoAuthError,
    NoNodeError,
    Result,
    WatchedEvent,
)
from testbed.ports import free_port
from testbed.zookeeper import ZooKeeper
from tests.resilience.faults_proxy import StallProxy

pytestmark = pytest.mark.integration


class Seen:
    """Everything the client handed us (watch events and states), in order."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = threading.Condition()

    def add(self, item: Any) -> None:
        with self._changed:
            self.items.append(item)
            self._changed.notify_all()

    def watch(self, tag: str) -> Callable[[WatchedEvent], None]:
        return lambda event: self.add((tag, event.type, event.path))

    def until(self, check: Callable[[list[Any]], bool], within: float = 20.0) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: check(self.items), within), self.items


def answer(result: Result[Any], within: float = 10.0) -> Any:
    done = threading.Event()
    result.rawlink(lambda _: done.set())
    assert done.wait(within), "no answer"
    return result.get_nowait()


@pytest.fixture
def client(zookeeper: ZooKeeper) -> Iterator[Connection]:
    connection = Connection(zookeeper.address, 10.0)
    connection.start(15)
    yield connection
    connection.close()


def test_reads_and_one_shot_watches(client: Connection, zk_writer: KazooClient) -> None:
    zk_writer.create("/t/a", b"one", makepath=True)
    seen = Seen()
    data, stat = answer(client.get_async("/t/a", seen.watch("data")))
    assert (data, stat.ctime > 0) == (b"one", True)
    names, _ = answer(client.get_children_async("/t", seen.watch("children"), True))
    assert names == ["a"]
    assert answer(client.exists_async("/t/later", seen.watch("exists"))) is None
    with pytest.raises(NoNodeError):
        answer(client.get_async("/t/none", seen.watch("never")))
    zk_writer.set("/t/a", b"two")
    zk_writer.create("/t/later", b"")
    seen.until(lambda items: len(items) >= 3)
    # a new watch on /t/a: the next change fires it, and not the one that fired already
    assert answer(client.get_async("/t/a", seen.watch("again")))[0] == b"two"
    zk_writer.set("/t/a", b"three")
    seen.until(lambda items: ("again", "CHANGED", "/t/a") in items)
    zk_writer.create("/t/none", b"")  # a read that failed left no watch
    marker = Seen()
    answer(client.exists_async("/t/marker", marker.watch("marker")))
    zk_writer.create("/t/marker", b"")
    marker.until(lambda items: len(items) == 1)  # later than anything of /t/none's
    assert sorted(seen.items) == [
        ("again", "CHANGED", "/t/a"),
        ("children", "CHILD", "/t"),
        ("data", "CHANGED", "/t/a"),
        ("exists", "CREATED", "/t/later"),
    ]


def test_a_deleted_node_fires_data_and_children_watches(
    client: Connection, zk_writer: KazooClient
) -> None:
    zk_writer.create("/gone", b"x")
    seen = Seen()
    answer(client.get_async("/gone", seen.watch("data")))
    answer(client.get_children_async("/gone", seen.watch("children"), True))
    zk_writer.delete("/gone")
    seen.until(lambda items: len(items) == 2)
    assert sorted(seen.items) == [("children", "DELETED", "/gone"), ("data", "DELETED", "/gone")]


def test_a_chroot_is_invisible_to_the_reader(zookeeper: ZooKeeper, zk_writer: KazooClient) -> None:
    zk_writer.create("/apps/dubbo/x", b"", makepath=True)
    client = Connection(f"{zookeeper.address}/apps/dubbo", 10.0)
    client.start(15)
    try:
        seen = Seen()
        names, _ = answer(client.get_children_async("/", seen.watch("root"), True))
        assert names == ["x"]
        assert answer(client.get_async("/x", None))[0] == b""
        zk_writer.create("/apps/dubbo/y", b"")
        seen.until(lambda items: items == [("root", "CHILD", "/")])
    finally:
        client.close()


def test_pipelined_reads_are_answered_in_order(client: Connection, zk_writer: KazooClient) -> None:
    transaction = zk_writer.transaction()
    transaction.create("/many")
    for i in range(300):
        transaction.create(f"/many/n{i}", str(i).encode())
    transaction.commit()
    order: list[int] = []
    wrong: list[int] = []
    done = threading.Event()
    count = 3000

    def answered(i: int, result: Result[tuple[bytes, object]]) -> None:
        order.append(i)
        if result.get_nowait()[0] != b"%d" % (i % 300):
            wrong.append(i)
        if len(order) == count:
            done.set()

    def issue() -> None:  # from a thread of our own, as the mirror's workers do
        for i in range(count):
            client.get_async(f"/many/n{i % 300}", None).rawlink(functools.partial(answered, i))

    began = time.monotonic()
    threading.Thread(target=issue).start()
    assert done.wait(30)
    assert order == list(range(count))
    assert wrong == []
    assert time.monotonic() - began < 20


def test_digest_auth_opens_what_the_acl_closes(
    zookeeper: ZooKeeper, zk_writer: KazooClient
) -> None:
    acl = make_digest_acl("mesh", "s3cret", all=True)
    zk_writer.create("/secret", b"payload", acl=[acl])
    anonymous = Connection(zookeeper.address, 10.0)
    with_auth = Connection(zookeeper.address, 10.0, Credentials(digest=("digest", "mesh:s3cret")))
    try:
        anonymous.start(15)
        with_auth.start(15)
        with pytest.raises(NoAuthError):
            answer(anonymous.get_async("/secret", None))
        assert answer(with_auth.get_async("/secret", None))[0] == b"payload"
    finally:
        anonymous.close()
        with_auth.close()


def test_no_server_fails_start_in_time_and_stop_is_prompt() -> None:
    client = Connection(f"127.0.0.1:{free_port()}", 10.0)
    began = time.monotonic()
    with pytest.raises(ConnectTimeoutError):
        client.start(1.0)
    assert time.monotonic() - began < 5
    with pytest.raises(ConnectionLossError):  # not connected: fails at once
        client.get_async("/", None).get_nowait()
    client.close()


@pytest.fixture
def proxied(zookeeper: ZooKeeper, tmp_path: Path) -> Iterator[tuple[StallProxy, Connection, Seen]]:
    proxy = StallProxy(zookeeper.port)
    proxy.start()
    states = Seen()
    client = Connection(f"127.0.0.1:{proxy.port}", 2.0)
    client.add_listener(states.add)
    client.start(15)
    yield proxy, client, states
    client.close()
    proxy.stop()


def test_a_frozen_path_is_noticed_and_a_short_one_keeps_the_session(
    proxied: tuple[StallProxy, Connection, Seen], zk_writer: KazooClient
) -> None:
    """Nothing heard for two thirds of the session timeout: the connection is given up
    (SUSPENDED), the reads in flight fail, each watch is told; back within the session
    timeout, the session is resumed (CONNECTED, no LOST)."""
    proxy, client, states = proxied
    zk_writer.create("/w", b"")
    watched = Seen()
    answer(client.get_children_async("/w", watched.watch("w"), True))
    session = client._session_id
    proxy.freeze()
    pending = client.get_async("/w", None)
    states.until(lambda items: SUSPENDED in items, within=10)
    with pytest.raises(ConnectionLossError):
        answer(pending)
    assert watched.items == [("w", "NONE", "/w")]
    proxy.thaw()
    states.until(lambda items: items[-1] == CONNECTED and items.count(CONNECTED) == 2)
    assert states.items == [CONNECTED, SUSPENDED, CONNECTED]
    assert client._session_id == session
    assert answer(client.get_children_async("/w", None, True))[0] == []


def test_a_long_freeze_expires_the_session_and_a_new_one_follows(
    proxied: tuple[StallProxy, Connection, Seen],
) -> None:
    proxy, client, states = proxied
    session = client._session_id
    proxy.freeze()
    states.until(lambda items: SUSPENDED in items, within=10)
    # the fault itself: held well past the 2 s session timeout, so the server expires it
    time.sleep(6)
    proxy.thaw()
    states.until(lambda items: items.count(CONNECTED) == 2)
    assert states.items == [CONNECTED, SUSPENDED, LOST, CONNECTED]
    assert client._session_id not in (0, session)
    assert answer(client.exists_async("/", None)) is not None
