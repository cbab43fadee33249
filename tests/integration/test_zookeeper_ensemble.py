"""The ZooKeeper registry against a real ensemble of three ZooKeeper 3.8 servers on
loopback: the server the client is connected to killed, or frozen, and the client on
another one within the session timeout, its session kept and nothing withdrawn; an ensemble
that loses its quorum, read from its read-only member by a replica that starts then, while
a replica that had listed keeps its view; and a client on a read-only server that moves to
a read-write one as soon as one answers.

One ensemble (global sessions, ZooKeeper's default) serves the module; each test leaves it
whole. The read-only tests run their own ensemble with `localSessionsEnabled`, without
which a read-only ZooKeeper makes no session for anyone."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from kazoo.client import KazooClient

from mcpserver.app import App
from mcpserver.registry.view import Status
from mcpserver.registry.zookeeper.connection import (
    CONNECTED,
    LOST,
    READ_ONLY,
    SUSPENDED,
    Connection,
)
from mcpserver.registry.zookeeper.watcher import ZooKeeperRegistry
from mcpserver.xds.client import IstiodLikeClient
from testbed.zookeeper import Ensemble, ZooKeeper
from tests.conftest import (
    eventually,
    every_response_holds,
    past_next_rebuild,
    registry_errors,
    settings_for,
)
from tests.integration.conftest import ServeFactory

IFACE = "org.example.EnsembleService"
HOST = "org.example.ensembleservice"
SESSION_TIMEOUT = 4.0


def provider(address: str) -> str:
    url = f"dubbo://{address}:20880/{IFACE}?interface={IFACE}&side=provider&version=1.0.0"
    return f"/dubbo/{IFACE}/providers/{quote(url, safe='')}"


def write(hosts: str, *addresses: str) -> None:
    """Persistent provider nodes, written through any member."""
    writer = KazooClient(hosts=hosts, timeout=10)
    writer.start(20)
    try:
        for address in addresses:
            writer.create(provider(address), b"", makepath=True)
    finally:
        writer.stop()
        writer.close()


@contextlib.contextmanager
def running(members: Ensemble, *addresses: str) -> Iterator[Ensemble]:
    """The ensemble started, with providers at `addresses`; stopped at the end."""
    try:
        members.start()
        write(members.hosts, *addresses)
        yield members
    finally:
        members.stop()


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ensemble]:
    with running(Ensemble(tmp_path_factory.mktemp("ensemble")), "10.20.0.1", "10.20.0.2") as e:
        yield e


def settings(tmp_path: Path, hosts: str) -> Any:
    return settings_for(
        tmp_path,
        {
            "kind": "zookeeper",
            "name": "zk",
            "hosts": hosts,
            "namespace": "dubbo",
            "services_roots": [],
            "mapping": False,
            "session_timeout": f"{SESSION_TIMEOUT:g}s",
            "connect_timeout": "10s",
        },
    )


def endpoints(client: IstiodLikeClient) -> list[str]:
    for resource in client.latest("ServiceEntry"):
        if resource.name == HOST:
            return sorted(e.address for e in resource.service_entry.endpoints)
    return []


def registry_of(app: App) -> ZooKeeperRegistry:
    registry = app.registries[0]
    assert isinstance(registry, ZooKeeperRegistry)
    return registry


async def moved_within_the_session(
    app: App, client: IstiodLikeClient, ensemble: Ensemble, fault: str
) -> ZooKeeper:
    """Break the connected server (`kill` or `freeze`); the client must be on another
    server within the session timeout, with its session, and nothing withdrawn."""
    registry = registry_of(app)
    victim = ensemble.by_address(registry.server())
    began = time.monotonic()
    if fault == "kill":
        await asyncio.to_thread(victim.kill)
    else:
        victim.signal(signal.SIGSTOP)
    moved = await eventually(
        lambda: registry.server() not in ("", victim.address) and registry.server(),
        within=SESSION_TIMEOUT * 2,
    )
    took = time.monotonic() - began
    assert took < SESSION_TIMEOUT, f"moved to {moved} after {took:.1f}s"
    await eventually(lambda: registry.view().status is Status.READY, within=10)
    assert registry_errors(app, "lost") == 0  # the session was resumed, not replaced
    assert registry_errors(app, "suspended") >= 1
    # a change made now, through the quorum that is left, flows
    await asyncio.to_thread(write, ensemble.by_address(moved).address, "10.20.0.9")
    await client.wait_for(lambda c: "10.20.0.9" in endpoints(c), 20)
    await past_next_rebuild(app)
    every_response_holds(client, HOST, ["10.20.0.1", "10.20.0.2"])
    return victim


async def remove_the_change(ensemble: Ensemble) -> None:
    def delete() -> None:
        writer = KazooClient(hosts=ensemble.hosts, timeout=10)
        writer.start(20)
        try:
            writer.delete(provider("10.20.0.9"))
        finally:
            writer.stop()
            writer.close()

    await asyncio.to_thread(delete)


async def test_the_connected_server_killed(
    tmp_path: Path, ensemble: Ensemble, serve: ServeFactory
) -> None:
    app, client = await serve(settings(tmp_path, ensemble.hosts))
    assert endpoints(client) == ["10.20.0.1", "10.20.0.2"]
    victim = await moved_within_the_session(app, client, ensemble, "kill")
    await asyncio.to_thread(victim.launch)
    await asyncio.to_thread(ensemble.wait_quorum)
    await remove_the_change(ensemble)


async def test_the_connected_server_frozen(
    tmp_path: Path, ensemble: Ensemble, serve: ServeFactory
) -> None:
    app, client = await serve(settings(tmp_path, ensemble.hosts))
    assert endpoints(client) == ["10.20.0.1", "10.20.0.2"]
    victim = await moved_within_the_session(app, client, ensemble, "freeze")
    victim.signal(signal.SIGCONT)
    await asyncio.to_thread(ensemble.wait_quorum)
    await remove_the_change(ensemble)


# ------------------------------------------------------------------ read-only servers


@pytest.fixture
def local_ensemble(tmp_path: Path) -> Iterator[Ensemble]:
    with running(Ensemble(tmp_path / "local", local_sessions=True), "10.21.0.1", "10.21.0.2") as e:
        yield e


async def test_a_quorum_lost_keeps_a_listed_view_and_lists_a_new_replica(
    tmp_path: Path, local_ensemble: Ensemble, serve: ServeFactory
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    app_a, client_a = await serve(settings(tmp_path / "a", local_ensemble.hosts))
    assert endpoints(client_a) == ["10.21.0.1", "10.21.0.2"]
    survivor, *others = local_ensemble.servers
    for server in others:
        await asyncio.to_thread(server.kill)
    await eventually(lambda: survivor.mode() == "read-only", within=30)

    # the replica that had listed: on the read-only server, its view kept, nothing read
    registry_a = registry_of(app_a)
    await eventually(lambda: "read-only" in registry_a.view().detail, within=20)
    assert registry_a.view().status is Status.DEGRADED
    assert registry_a.view().detail == (
        f"connected to a read-only ZooKeeper server {survivor.address} (its ensemble has lost "
        "its quorum): serving the last known view (reading nothing from it); looking for a "
        "read-write server"
    )
    # a replica started now lists what the read-only server holds
    app_b, client_b = await serve(settings(tmp_path / "b", local_ensemble.hosts))
    assert endpoints(client_b) == ["10.21.0.1", "10.21.0.2"]
    registry_b = registry_of(app_b)
    assert registry_b.view().status is Status.DEGRADED
    assert "listing what it holds" in registry_b.view().detail
    assert registry_errors(app_b, "read-only") >= 1

    # the quorum back: both read-write again, and a change reaches both
    for server in others:
        await asyncio.to_thread(server.launch)
    await asyncio.to_thread(local_ensemble.wait_quorum)
    await eventually(lambda: registry_a.view().status is Status.READY, within=30)
    await eventually(lambda: registry_b.view().status is Status.READY, within=30)
    await asyncio.to_thread(write, local_ensemble.hosts, "10.21.0.3")
    for client in (client_a, client_b):
        await client.wait_for(lambda c: endpoints(c) == ["10.21.0.1", "10.21.0.2", "10.21.0.3"], 20)
    await past_next_rebuild(app_a)
    every_response_holds(client_a, HOST, ["10.21.0.1", "10.21.0.2"])


def test_a_client_on_a_read_only_server_moves_to_a_read_write_one(
    tmp_path: Path, ensemble: Ensemble
) -> None:
    """A member cut off from its ensemble (its peers' ports answer nothing) stays read-only;
    the client, put there first, asks the others `isro` and moves to one that says `rw`."""
    from testbed.ports import free_port

    lonely = ZooKeeper(
        tmp_path / "lonely",
        server_id=1,
        members=[f"server.{i}=127.0.0.1:{free_port()}:{free_port()}" for i in (1, 2, 3)],
        read_only=True,
        local_sessions=True,
        tick_ms=300,
    )
    try:
        lonely.launch()
        assert lonely.process is not None
        lonely.process.wait_ready("ZooKeeper, read-only", lambda: lonely.mode() == "read-only")
        read_write = ensemble.servers[0]
        states: list[str] = []
        changed = threading.Condition()

        def seen(state: str) -> None:
            with changed:
                states.append(state)
                changed.notify_all()

        client = Connection(
            f"{lonely.address},{read_write.address}", SESSION_TIMEOUT, shuffle=False
        )
        client.add_listener(seen)
        try:
            client.start(15)
            assert client.read_only
            with changed:
                assert changed.wait_for(lambda: CONNECTED in states, 15), states
            assert states == [READ_ONLY, SUSPENDED, LOST, CONNECTED]
            assert client.server == read_write.address
            assert not client.read_only
        finally:
            client.close()
    finally:
        lonely.stop()
