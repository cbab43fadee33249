"""Protection against mass removal, against a real ZooKeeper: many interfaces losing every
provider in one transaction is held, then applied after the hold time or on an operator's
confirmation; a normal removal flows at once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kazoo.client import KazooClient

from mcpserver.app import App
from mcpserver.xds.client import IstiodLikeClient, decode_resource
from testbed.zookeeper import ZooKeeper
from tests.conftest import AppFactory, ClientFactory, eventually, past_next_rebuild, settings_for
from tests.integration.test_zookeeper import provider_url
from tests.resilience.faults_proxy import StallProxy

INTERFACES = [f"org.example.Service{i}" for i in range(10)]


def host(interface: str) -> str:
    return interface.lower()


def register_provider(zk: KazooClient, interface: str, address: str) -> str:
    url = provider_url(address, interface=interface).replace(
        "org.apache.dubbo.demo.DemoService", interface
    )
    path = f"/dubbo/{interface}/providers/{url}"
    zk.create(path, b"", makepath=True, ephemeral=True)
    return path


def populate(zk: KazooClient) -> None:
    for i, interface in enumerate(INTERFACES):
        register_provider(zk, interface, f"10.20.0.{i + 1}")


def remove_in_one_transaction(zk: KazooClient, interfaces: list[str]) -> None:
    transaction = zk.transaction()
    for interface in interfaces:
        for child in zk.get_children(f"/dubbo/{interface}/providers"):
            transaction.delete(f"/dubbo/{interface}/providers/{child}")
    assert all(r is True for r in transaction.commit())


def served(client: IstiodLikeClient) -> set[str]:
    return {r.name for r in client.latest("ServiceEntry")}


async def started(
    tmp_path: Path, zookeeper: ZooKeeper, start_app: AppFactory, connect: ClientFactory, **top: Any
) -> tuple[App, IstiodLikeClient]:
    entry = {"kind": "zookeeper", "name": "zk", "hosts": zookeeper.address, "namespace": "dubbo"}
    app = await start_app(settings_for(tmp_path, entry, **top))
    client = await connect(app.port)
    await client.wait_for(lambda c: len(served(c)) == len(INTERFACES), 30)
    return app, client


def held(app: App) -> bool:
    return any(state.hold is not None for state in app.pipeline.registry_states())


async def test_mass_removal_is_held_until_confirmed_and_a_normal_removal_flows(
    tmp_path: Path,
    zookeeper: ZooKeeper,
    zk_writer: KazooClient,
    start_app: AppFactory,
    connect: ClientFactory,
) -> None:
    populate(zk_writer)
    app, client = await started(tmp_path, zookeeper, start_app, connect)
    # one interface of ten: a normal removal, served at once
    remove_in_one_transaction(zk_writer, INTERFACES[:1])
    await client.wait_for(lambda c: host(INTERFACES[0]) not in served(c), 20)
    # eight of the nine left, in one transaction: held. Within protection.window (1m) of
    # the first removal, the two add up: the hold keeps what the window started with, the
    # interface removed a moment ago included (one mass removal, held whole)
    remove_in_one_transaction(zk_writer, INTERFACES[1:9])
    await eventually(lambda: held(app), within=20)
    await past_next_rebuild(app)
    assert served(client) == {host(i) for i in INTERFACES}
    base = f"http://127.0.0.1:{app.admin.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/debug/registries") as response:
            (entry,) = json.loads(await response.text())
        assert entry["status"] == "degraded"
        assert "9 of 10 instances" in entry["detail"]
        assert "protection.window" in entry["detail"]
        assert entry["held"]["removed_services"] == 9
        async with http.post(f"{base}/debug/registries/zk/confirm") as response:
            assert response.status == 200
    await client.wait_for(lambda c: served(c) == {host(INTERFACES[9])}, 20)
    assert (
        app.metrics.registry.get_sample_value("mcpserver_registry_removal_held", {"registry": "zk"})
        == 0
    )


async def test_mass_removal_is_applied_after_the_hold_time(
    tmp_path: Path,
    zookeeper: ZooKeeper,
    zk_writer: KazooClient,
    start_app: AppFactory,
    connect: ClientFactory,
) -> None:
    populate(zk_writer)
    # one transaction's eight deletions come as eight watch events, each re-read: a quiet
    # of 500 ms (not the tests' 50 ms) keeps them one rebuild on a loaded machine, so that
    # the count below is of the hold alone
    app, client = await started(
        tmp_path,
        zookeeper,
        start_app,
        connect,
        protection={"hold_for": "2s"},
        debounce={"after": "500ms", "max": "2s"},
    )
    responses = len(client.responses[next(u for u in client.type_urls if "ServiceEntry" in u)])
    remove_in_one_transaction(zk_writer, INTERFACES[:8])
    await eventually(lambda: held(app), within=20)
    loop_time = asyncio.get_running_loop().time
    held_at = loop_time()
    await client.wait_for(lambda c: served(c) == {host(i) for i in INTERFACES[8:]}, 20)
    assert loop_time() - held_at >= 1.5  # not before the hold time
    # exactly one response: the held state produced no intermediate push
    se = next(u for u in client.type_urls if "ServiceEntry" in u)
    assert len(client.responses[se]) == responses + 1


@pytest.fixture(autouse=True)
def _interfaces_are_distinct() -> None:
    assert len({host(i) for i in INTERFACES}) == len(INTERFACES)


async def test_a_session_expiry_withdraws_nothing_a_provider_has_not_created_again(
    tmp_path: Path,
    zookeeper: ZooKeeper,
    zk_writer: KazooClient,
    start_app: AppFactory,
    connect: ClientFactory,
) -> None:
    """Issue 27: a partition cuts mcpserver and one provider off ZooKeeper for longer than
    their sessions; ZooKeeper expires both and deletes the provider's ephemeral node. When
    the partition heals, mcpserver's new session re-reads the tree before the provider has
    created its node again (1 of 8 instances: under max_removed_share). The new session is a
    recovery: for the recovery grace what the re-read lacks is held, and the provider's node
    coming back ends the hold. istiod is never sent a set without it."""
    for i, interface in enumerate(INTERFACES[:7]):  # steady providers, never cut off
        register_provider(zk_writer, interface, f"10.21.0.{i + 1}")
    late_interface = INTERFACES[7]
    ours, theirs = StallProxy(zookeeper.port), StallProxy(zookeeper.port)
    ours.start()
    theirs.start()
    late = KazooClient(hosts=f"127.0.0.1:{theirs.port}", timeout=2)
    try:
        late.start(15)
        node = register_provider(late, late_interface, "10.21.0.8")
        entry = {
            "kind": "zookeeper",
            "name": "zk",
            "hosts": f"127.0.0.1:{ours.port}",
            "namespace": "dubbo",
            "session_timeout": "2s",
        }
        app = await start_app(settings_for(tmp_path, entry))  # protection as deployed
        client = await connect(app.port)
        everyone = {host(i) for i in INTERFACES[:8]}
        await client.wait_for(lambda c: served(c) == everyone, 30)
        registry = app.registries[0]
        ours.freeze()
        theirs.freeze()
        # ZooKeeper expires the provider's session and deletes its node (seen directly)
        await eventually(lambda: zk_writer.exists(node) is None, within=30)
        ours.thaw()  # mcpserver first: a new session, the tree read again
        await eventually(
            lambda: (
                registry.view().recovered is not None
                and len(registry.view().services) == 7
                and held(app)
            ),
            within=30,
        )
        await past_next_rebuild(app)
        (state,) = app.pipeline.registry_states()
        assert state.hold is not None and state.hold.cause == "recovery"
        # the provider's session expires first (it is the older one); ours may have expired
        # too by the time the path thaws (a new session) or not yet (the old one resumed):
        # either way the re-read is a recovery and the reason says which
        assert (
            "a new ZooKeeper session" in state.hold.reason
            or "reconnected to ZooKeeper" in state.hold.reason
        ), state.hold.reason
        assert served(client) == everyone
        theirs.thaw()  # the provider's client reconnects with a new session: its node again
        await eventually(lambda: late.connected and late.exists(node) is None, within=30)
        register_provider(late, late_interface, "10.21.0.8")
        await eventually(lambda: not held(app), within=30)
        await past_next_rebuild(app)
        se = next(u for u in client.type_urls if "ServiceEntry" in u)
        sets = [
            {r.name for r in map(decode_resource, response.resources)}
            for response in client.responses[se]
        ]
        assert all(found >= everyone for found in sets), sets
    finally:
        late.stop()
        late.close()
        ours.stop()
        theirs.stop()
