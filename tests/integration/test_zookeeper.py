"""The ZooKeeper registry against a real ZooKeeper: Dubbo providers, Curator instances."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from kazoo.client import KazooClient
from kazoo.security import OPEN_ACL_UNSAFE, make_digest_acl

from mcpserver.app import App
from mcpserver.registry.view import Status
from mcpserver.registry.zookeeper import assembly, watcher
from mcpserver.xds.client import DecodedResource, IstiodLikeClient
from testbed.zookeeper import ZooKeeper
from tests.conftest import (
    AppFactory,
    ClientFactory,
    admin_get,
    eventually,
    registry_errors,
    settings_for,
)
from tests.integration.conftest import ServeFactory

IFACE = "org.apache.dubbo.demo.DemoService"
HOST = "org.apache.dubbo.demo.demoservice"


def provider_url(
    address: str = "10.0.0.5", port: int = 20880, protocol: str = "dubbo", **params: str
) -> str:
    query = {"application": "demo", "interface": IFACE, "side": "provider", "version": "1.0.0"}
    query.update(params)
    text = f"{protocol}://{address}:{port}/{IFACE}?" + "&".join(
        f"{k}={v}" for k, v in query.items()
    )
    return quote(text, safe="")


def add_provider(zk: KazooClient, url: str, root: str = "/dubbo", iface: str = IFACE) -> str:
    path = f"{root}/{iface}/providers/{url}"
    zk.create(path, b"", makepath=True, ephemeral=True)
    return path


def zk_settings(
    tmp_path: Path,
    zookeeper: ZooKeeper,
    protection: dict[str, Any] | None = None,
    **registry: Any,
) -> Any:
    entry: dict[str, Any] = {
        "kind": "zookeeper",
        "name": "zk",
        "hosts": zookeeper.address,
        "namespace": "dubbo",
        "session_timeout": "4s",
    }
    entry.update(registry)
    top = {"protection": protection} if protection is not None else {}
    return settings_for(tmp_path, entry, **top)


# for tests that remove every service of the registry and expect them gone at once (by
# default such a removal is held for a while: protection.hold_empty)
REMOVE_ALL = {"hold_empty": False}


def entries(client: IstiodLikeClient) -> dict[str, DecodedResource]:
    return {r.name: r for r in client.latest("ServiceEntry")}


async def test_provider_appears_changes_and_disappears(
    tmp_path: Path, zookeeper: ZooKeeper, zk_writer: KazooClient, serve: ServeFactory
) -> None:
    first = add_provider(zk_writer, provider_url("10.0.0.5"))
    _, client = await serve(zk_settings(tmp_path, zookeeper, protection=REMOVE_ALL))
    se = entries(client)[HOST]
    spec: Any = se.spec
    assert list(spec.hosts) == [HOST]
    assert [(p.name, p.number, p.protocol) for p in spec.ports] == [("tcp-dubbo", 20880, "TCP")]
    assert [e.address for e in spec.endpoints] == ["10.0.0.5"]
    assert dict(spec.endpoints[0].labels) == {
        "application": "demo",
        "version": "1.0.0",
        "registry": "zk",
    }
    # a TCP service sharing port 20880 gets a stable VIP from vip.cidr (by default
    # 240.0.0.0/8, never from istiod's own 240.240.0.0/16)
    (vip,) = spec.addresses
    assert ipaddress.ip_address(vip) in ipaddress.ip_network("240.0.0.0/8")
    assert ipaddress.ip_address(vip) not in ipaddress.ip_network("240.240.0.0/16")
    # create_time is the providers node's ctime, so it survives restarts
    ctime = zk_writer.exists(f"/dubbo/{IFACE}/providers").ctime
    assert int(se.create_time.timestamp() * 1000) == ctime

    # weight and version change: Dubbo re-registers with a new URL
    zk_writer.delete(first)
    add_provider(zk_writer, provider_url("10.0.0.5", weight="7", version="2.0.0"))
    add_provider(zk_writer, provider_url("10.0.0.6"))
    await client.wait_for(lambda c: len(entries(c)[HOST].service_entry.endpoints) == 2, 20)
    endpoints = {e.address: e for e in entries(client)[HOST].service_entry.endpoints}
    assert endpoints["10.0.0.5"].weight == 7
    assert endpoints["10.0.0.5"].labels["version"] == "2.0.0"
    assert list(entries(client)[HOST].service_entry.addresses) == [vip]

    # disabled providers and consumers are not endpoints; all gone -> the service goes
    for child in zk_writer.get_children(f"/dubbo/{IFACE}/providers"):
        zk_writer.delete(f"/dubbo/{IFACE}/providers/{child}")
    add_provider(zk_writer, provider_url("10.0.0.7", enabled="false"))
    add_provider(zk_writer, provider_url("10.0.0.8", side="consumer"))
    await client.wait_for(lambda c: HOST not in entries(c), 20)


async def test_a_burst_of_200_providers_is_a_handful_of_rebuilds(
    tmp_path: Path, zookeeper: ZooKeeper, zk_writer: KazooClient, serve: ServeFactory
) -> None:
    add_provider(zk_writer, provider_url("10.1.0.1"))
    app, client = await serve(zk_settings(tmp_path, zookeeper))
    runs_before = app.debouncer.runs
    transaction = zk_writer.transaction()
    for i in range(200):
        transaction.create(
            f"/dubbo/{IFACE}/providers/{provider_url(f'10.2.{i // 250}.{i % 250 + 1}')}",
            b"",
            ephemeral=True,
        )
    assert all(r is True or isinstance(r, str) for r in transaction.commit())
    await client.wait_for(lambda c: len(entries(c)[HOST].service_entry.endpoints) == 201, 30)
    assert app.debouncer.runs - runs_before <= 5
    assert (
        len(client.responses[next(u for u in client.type_urls if u.endswith("/ServiceEntry"))]) <= 6
    )


async def test_zookeeper_outage_keeps_services_and_reconciles(
    tmp_path: Path, zookeeper: ZooKeeper, serve: ServeFactory
) -> None:
    writer = KazooClient(hosts=zookeeper.address, timeout=10)
    writer.start(15)
    writer.create(f"/dubbo/{IFACE}/providers/{provider_url('10.3.0.1')}", b"", makepath=True)
    writer.create(f"/dubbo/{IFACE}/providers/{provider_url('10.3.0.2')}", b"", makepath=True)
    writer.stop()
    app, client = await serve(zk_settings(tmp_path, zookeeper))
    registry = app.registries[0]
    assert len(entries(client)[HOST].service_entry.endpoints) == 2
    responses = len(
        client.responses[next(u for u in client.type_urls if u.endswith("/ServiceEntry"))]
    )
    await asyncio.to_thread(zookeeper.stop)
    await eventually(lambda: registry.view().status is Status.DEGRADED, within=20)
    loop = asyncio.get_running_loop()
    down_until = loop.time() + 10
    while loop.time() < down_until:  # 10 s of outage: nothing is withdrawn
        assert len(entries(client)[HOST].service_entry.endpoints) == 2
        await asyncio.sleep(0.5)
    assert (
        len(client.responses[next(u for u in client.type_urls if u.endswith("/ServiceEntry"))])
        == responses
    )
    await asyncio.to_thread(zookeeper.start)
    await eventually(lambda: registry.view().status is Status.READY, within=60)
    # while it was down, one provider went away and one came: after the restart we follow
    writer = KazooClient(hosts=zookeeper.address, timeout=10)
    writer.start(15)
    writer.delete(f"/dubbo/{IFACE}/providers/{provider_url('10.3.0.1')}")
    writer.create(f"/dubbo/{IFACE}/providers/{provider_url('10.3.0.3')}", b"")
    writer.stop()
    await client.wait_for(
        lambda c: (
            sorted(e.address for e in entries(c)[HOST].service_entry.endpoints)
            == ["10.3.0.2", "10.3.0.3"]
        ),
        30,
    )


async def test_garbage_is_skipped_and_counted_while_the_rest_flows(
    tmp_path: Path, zookeeper: ZooKeeper, zk_writer: KazooClient, serve: ServeFactory
) -> None:
    add_provider(zk_writer, provider_url("10.4.0.1"))
    for bad in [
        "just-a-name",
        quote("dubbo://not-an-ip:20880/x?side=provider", safe=""),
        quote("dubbo://10.4.0.2:99999/x", safe=""),
        "x" * 9000,
    ]:
        zk_writer.create(f"/dubbo/{IFACE}/providers/{bad}", b"", makepath=True)
    zk_writer.create(
        "/services/shop/good",
        json.dumps(
            {
                "name": "shop",
                "id": "good",
                "address": "10.4.1.1",
                "port": 8080,
                "payload": {"metadata": {"zone": "a"}},
            }
        ).encode(),
        makepath=True,
    )
    zk_writer.create("/services/shop/notjson", b"{nope", makepath=True)
    zk_writer.create("/services/shop/binary", b"\xff\xfe\x00", makepath=True)
    zk_writer.create("/services/shop/noaddress", b'{"name": "shop", "port": 1}', makepath=True)
    app, client = await serve(zk_settings(tmp_path, zookeeper))
    current = entries(client)
    assert [e.address for e in current[HOST].service_entry.endpoints] == ["10.4.0.1"]
    shop: Any = current["shop.dubbo"].spec
    assert [e.address for e in shop.endpoints] == ["10.4.1.1"]
    assert [(p.name, p.number, p.protocol) for p in shop.ports] == [("http", 8080, "HTTP")]
    assert shop.endpoints[0].labels["zone"] == "a"
    skipped = {
        s.labels["reason"]: s.value
        for m in app.metrics.registry.collect()
        for s in m.samples
        if s.name == "mcpserver_registry_skipped_records_total"
    }
    assert skipped == {
        "not-a-url": 1,
        "bad-address": 1,
        "bad-port": 1,
        "too-long": 1,
        "bad-json": 2,
        "not-utf8": 1,
    }
    assert len([p for p in app.pipeline.problems if p.registry == "zk"]) == 7


async def test_curator_applications_and_dubbo3_mapping(
    tmp_path: Path, zookeeper: ZooKeeper, zk_writer: KazooClient, serve: ServeFactory
) -> None:
    endpoints = json.dumps(
        [{"port": 50051, "protocol": "tri"}, {"port": 20880, "protocol": "dubbo"}]
    )
    for ident, address in (("a", "10.5.0.1"), ("b", "10.5.0.2")):
        zk_writer.create(
            f"/services/greeter/{ident}",
            json.dumps(
                {
                    "name": "greeter",
                    "id": ident,
                    "address": address,
                    "port": 20880,
                    "payload": {"metadata": {"dubbo.endpoints": endpoints}},
                }
            ).encode(),
            makepath=True,
        )
    zk_writer.create("/dubbo/mapping/com.example.Greeter", b"greeter", makepath=True)
    _, client = await serve(zk_settings(tmp_path, zookeeper))
    current = entries(client)
    app_se: Any = current["greeter.dubbo"].spec
    assert [(p.name, p.number, p.protocol) for p in app_se.ports] == [
        ("tcp-dubbo", 20880, "TCP"),
        ("grpc-tri", 50051, "GRPC"),
    ]
    assert [e.address for e in app_se.endpoints] == ["10.5.0.1", "10.5.0.2"]
    mapped: Any = current["com.example.greeter"].spec
    assert list(mapped.hosts) == ["com.example.greeter"]
    assert [e.address for e in mapped.endpoints] == ["10.5.0.1", "10.5.0.2"]
    # an instance leaving the application leaves the interface host too
    zk_writer.delete("/services/greeter/a")
    await client.wait_for(
        lambda c: (
            [e.address for e in entries(c)["com.example.greeter"].service_entry.endpoints]
            == ["10.5.0.2"]
        ),
        20,
    )


async def test_digest_auth(tmp_path: Path, zookeeper: ZooKeeper, serve: ServeFactory) -> None:
    writer = KazooClient(hosts=zookeeper.address, auth_data=[("digest", "mesh:s3cret")])
    writer.start(15)
    acl = [make_digest_acl("mesh", "s3cret", all=True)]
    writer.create("/secure", b"", acl=acl)
    writer.create(f"/secure/{IFACE}", b"", acl=acl)
    writer.create(f"/secure/{IFACE}/providers", b"", acl=acl)
    writer.create(f"/secure/{IFACE}/providers/{provider_url('10.6.0.1')}", b"", acl=acl)
    writer.stop()
    (tmp_path / "cred").write_text("mesh:s3cret\n")
    settings = zk_settings(
        tmp_path,
        zookeeper,
        roots=["/secure"],
        services_roots=[],
        auth={"credential": {"file": str(tmp_path / "cred")}},
    )
    _, client = await serve(settings)
    assert [e.address for e in entries(client)[HOST].service_entry.endpoints] == ["10.6.0.1"]
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize("root", ["/dubbo-gray"])
async def test_registry_group_root(
    root: str, tmp_path: Path, zookeeper: ZooKeeper, zk_writer: KazooClient, serve: ServeFactory
) -> None:
    add_provider(zk_writer, provider_url("10.7.0.1"), root=root)
    add_provider(zk_writer, provider_url("10.7.0.2"), root="/dubbo")
    _, client = await serve(zk_settings(tmp_path, zookeeper, roots=[root]))
    assert [e.address for e in entries(client)[HOST].service_entry.endpoints] == ["10.7.0.1"]


async def test_session_expiry_removes_what_truly_vanished(
    tmp_path: Path, zookeeper: ZooKeeper, serve: ServeFactory
) -> None:
    """A provider whose ZooKeeper session dies during an outage is gone after it; one whose
    node is persistent stays. Our own session survives (or is replaced) and reconciles,
    withdrawing what is gone once the recovery grace (1 s here, 60 s by default) is over."""
    keeper = KazooClient(hosts=zookeeper.address, timeout=10)
    keeper.start(15)
    keeper.create(f"/dubbo/{IFACE}/providers/{provider_url('10.8.0.1')}", b"", makepath=True)
    keeper.stop()
    doomed = KazooClient(hosts=zookeeper.address, timeout=4)
    doomed.start(15)
    doomed.create(f"/dubbo/{IFACE}/providers/{provider_url('10.8.0.2')}", b"", ephemeral=True)
    app, client = await serve(zk_settings(tmp_path, zookeeper, {"recovery_grace": "1s"}))
    assert sorted(e.address for e in entries(client)[HOST].service_entry.endpoints) == [
        "10.8.0.1",
        "10.8.0.2",
    ]
    await asyncio.to_thread(zookeeper.stop)
    await asyncio.to_thread(doomed.stop)  # the provider dies with the outage
    await asyncio.to_thread(zookeeper.start)
    await client.wait_for(
        lambda c: [e.address for e in entries(c)[HOST].service_entry.endpoints] == ["10.8.0.1"],
        60,
    )
    await eventually(lambda: app.registries[0].view().status is Status.READY, within=30)


async def test_workloadentry_output(
    tmp_path: Path, zookeeper: ZooKeeper, zk_writer: KazooClient, serve: ServeFactory
) -> None:
    add_provider(zk_writer, provider_url("10.9.0.1"))
    add_provider(zk_writer, provider_url("10.9.0.2", version="2.0.0"))
    _, client = await serve(zk_settings(tmp_path, zookeeper, endpoints="workloadentry"))
    spec: Any = entries(client)[HOST].spec
    assert len(spec.endpoints) == 0
    selector = dict(spec.workload_selector.labels)
    workloads = client.latest("WorkloadEntry")
    assert sorted(w.workload_entry.address for w in workloads) == ["10.9.0.1", "10.9.0.2"]
    for workload in workloads:
        assert workload.namespace == "dubbo"
        assert selector.items() <= dict(workload.workload_entry.labels).items()
    versions = {w.workload_entry.address: w.workload_entry.labels["version"] for w in workloads}
    assert versions == {"10.9.0.1": "1.0.0", "10.9.0.2": "2.0.0"}


async def test_providers_node_removed_and_recreated(
    tmp_path: Path, zookeeper: ZooKeeper, zk_writer: KazooClient, serve: ServeFactory
) -> None:
    add_provider(zk_writer, provider_url("10.10.0.1"))
    _, client = await serve(zk_settings(tmp_path, zookeeper, protection=REMOVE_ALL))
    zk_writer.delete(f"/dubbo/{IFACE}/providers", recursive=True)
    await client.wait_for(lambda c: HOST not in entries(c), 20)
    add_provider(zk_writer, provider_url("10.10.0.2"))
    await client.wait_for(
        lambda c: (
            HOST in entries(c)
            and [e.address for e in entries(c)[HOST].service_entry.endpoints] == ["10.10.0.2"]
        ),
        20,
    )


async def debug_registries(app: App) -> dict[str, Any]:
    _, text = await admin_get(app.admin.port, "/debug/registries")
    body: list[dict[str, Any]] = json.loads(text)
    return next(e for e in body if e["name"] == "zk")


def acl_admin(zookeeper: ZooKeeper) -> KazooClient:
    """A client holding the digest credential the protected nodes' ACL names."""
    client = KazooClient(hosts=zookeeper.address, auth_data=[("digest", "mesh:s3cret")])
    client.start(15)
    return client


MESH_ONLY = [make_digest_acl("mesh", "s3cret", all=True)]


async def test_unreadable_root_is_degraded_retried_and_recovers(
    tmp_path: Path,
    zookeeper: ZooKeeper,
    start_app: AppFactory,
    connect: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A root whose ACL we do not pass (no credentials): DEGRADED naming the path and
    NoAuth, logged, counted, retried; serving it once the ACL is opened."""
    admin = acl_admin(zookeeper)
    admin.create("/dubbo", b"", acl=MESH_ONLY)
    admin.create(f"/dubbo/{IFACE}/providers/{provider_url('10.11.0.1')}", b"", makepath=True)
    app = await start_app(zk_settings(tmp_path, zookeeper))
    registry = app.registries[0]
    await eventually(lambda: registry.view().status is Status.DEGRADED, within=20)
    view = registry.view()
    assert "no permission to read /dubbo (NoAuthError)" in view.detail
    assert not view.synced  # nothing was listed: no empty registry is served as complete
    entry = await debug_registries(app)
    assert entry["status"] == "degraded"
    assert "no permission to read /dubbo (NoAuthError)" in entry["detail"]
    assert any(
        "cannot read" in r.getMessage() and "/dubbo" in r.getMessage() for r in caplog.records
    )
    # retried (with backoff), each attempt counted
    await eventually(lambda: registry_errors(app, "noauth") >= 2, within=10)

    admin.set_acls("/dubbo", OPEN_ACL_UNSAFE)
    admin.stop()
    client = await connect(app.port)
    await client.wait_for(lambda c: c.synced() and HOST in entries(c), 40)
    await eventually(lambda: registry.view().status is Status.READY, within=10)
    assert registry.view().detail == ""
    assert (await debug_registries(app))["status"] == "ready"
    assert [e.address for e in entries(client)[HOST].service_entry.endpoints] == ["10.11.0.1"]


async def test_unreadable_interface_is_degraded_while_the_rest_flows(
    tmp_path: Path, zookeeper: ZooKeeper, zk_writer: KazooClient, serve: ServeFactory
) -> None:
    """One interface's providers node we may not read: the others are served (the listing
    is complete as far as it can be), the registry says which path it cannot read."""
    add_provider(zk_writer, provider_url("10.12.0.1"))
    secret = "com.example.Secret"
    admin = acl_admin(zookeeper)
    admin.create(f"/dubbo/{secret}", b"")
    admin.create(f"/dubbo/{secret}/providers", b"", acl=MESH_ONLY)
    url = quote(f"dubbo://10.12.0.2:20880/{secret}?side=provider", safe="")
    admin.create(f"/dubbo/{secret}/providers/{url}", b"")
    app, client = await serve(zk_settings(tmp_path, zookeeper))
    registry = app.registries[0]
    assert [e.address for e in entries(client)[HOST].service_entry.endpoints] == ["10.12.0.1"]
    assert "com.example.secret" not in entries(client)
    await eventually(lambda: registry.view().status is Status.DEGRADED, within=10)
    assert (
        f"no permission to read /dubbo/{secret}/providers (NoAuthError)" in registry.view().detail
    )

    admin.set_acls(f"/dubbo/{secret}/providers", OPEN_ACL_UNSAFE)
    admin.stop()
    await client.wait_for(lambda c: "com.example.secret" in entries(c), 40)
    await eventually(lambda: registry.view().status is Status.READY, within=10)


async def test_acl_closed_under_a_watch_is_caught_at_the_next_re_read(
    tmp_path: Path, zookeeper: ZooKeeper, serve: ServeFactory
) -> None:
    """The ACL of a watched node is closed under us. ZooKeeper fires no watch for an ACL
    change and delivers none to a watcher without READ, so the change shows at the next
    re-read: kazoo's, on its own thread, after a reconnect. That failure must not stop the
    watch silently: DEGRADED, the last view kept, and once the node reads again the change
    missed meanwhile is served."""
    writer = KazooClient(hosts=zookeeper.address, timeout=10)
    writer.start(15)
    writer.create(f"/dubbo/{IFACE}/providers/{provider_url('10.13.0.1')}", b"", makepath=True)
    writer.stop()
    app, client = await serve(zk_settings(tmp_path, zookeeper))
    registry = app.registries[0]
    providers = f"/dubbo/{IFACE}/providers"
    admin = acl_admin(zookeeper)
    admin.set_acls(providers, MESH_ONLY)
    admin.create(f"{providers}/{provider_url('10.13.0.2')}", b"")  # we are not told
    admin.stop()
    await asyncio.to_thread(zookeeper.stop)
    await asyncio.to_thread(zookeeper.start)
    await eventually(
        lambda: f"no permission to read {providers} (NoAuthError)" in registry.view().detail,
        within=30,
    )
    assert registry.view().status is Status.DEGRADED
    assert [e.address for e in entries(client)[HOST].service_entry.endpoints] == ["10.13.0.1"]

    admin = acl_admin(zookeeper)
    admin.set_acls(providers, OPEN_ACL_UNSAFE)
    admin.stop()
    await client.wait_for(
        lambda c: (
            sorted(e.address for e in entries(c)[HOST].service_entry.endpoints)
            == ["10.13.0.1", "10.13.0.2"]
        ),
        40,
    )
    await eventually(lambda: registry.view().status is Status.READY, within=10)


async def test_a_crash_on_the_loop_side_is_supervised_and_loses_nothing(
    tmp_path: Path,
    zookeeper: ZooKeeper,
    zk_writer: KazooClient,
    monkeypatch: pytest.MonkeyPatch,
    serve: ServeFactory,
) -> None:
    """An unexpected exception while assembling: logged, counted, DEGRADED, the task
    restarted; the change it was assembling is not lost."""
    add_provider(zk_writer, provider_url("10.14.0.1"))
    app, client = await serve(zk_settings(tmp_path, zookeeper))
    registry = app.registries[0]
    real = assembly.assemble
    crashes: list[str] = []

    def crash_once(*args: Any) -> Any:
        if not crashes:
            crashes.append("boom")
            raise RuntimeError("boom")
        return real(*args)

    monkeypatch.setattr(watcher, "assemble", crash_once)
    add_provider(zk_writer, provider_url("10.14.0.2"))
    await eventually(lambda: registry.restarts == 1, within=20)
    assert registry_errors(app, "crash") == 1
    await client.wait_for(
        lambda c: (
            sorted(e.address for e in entries(c)[HOST].service_entry.endpoints)
            == ["10.14.0.1", "10.14.0.2"]
        ),
        20,
    )
    await eventually(lambda: registry.view().status is Status.READY, within=10)
