"""The AWS Cloud Map registry against a local Cloud Map API (moto's server), and on to a real
istiod."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcpserver.app import App
from mcpserver.registry.cloudmap.watcher import CloudMapRegistry
from mcpserver.registry.view import Status
from mcpserver.xds.client import DecodedResource, IstiodLikeClient
from testbed.cloudmap import REGION, SECRET_KEY, SESSION_TOKEN, CloudMap, Moto, aws_env
from testbed.xdsprobe import endpoints
from tests.conftest import AppFactory, admin_get, eventually, past_next_rebuild, settings_for
from tests.integration.conftest import IstiodFactory, ServeFactory, assert_kept_without_endpoints

HOST = "orders.shop"


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    server = Moto(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def moto(moto_server: Moto) -> Moto:
    moto_server.reset()
    return moto_server


@pytest.fixture
def aws(moto: Moto, monkeypatch: pytest.MonkeyPatch) -> CloudMap:
    """The standard AWS chain sees the test keys (and no files, no instance metadata)."""
    for name, value in aws_env(moto.port).items():
        monkeypatch.setenv(name, value)
    return CloudMap(moto)


def cloudmap_settings(tmp_path: Path, server: Moto, **registry: Any) -> Any:
    entry: dict[str, Any] = {
        "kind": "cloudmap",
        "name": "cloudmap",
        "namespace": "cloudmap",
        "region": REGION,
        "endpoint_url": server.url,
        "list_interval": "300ms",
        "poll_interval": "200ms",
        # long: these tests see changes through revisions, not through the reconcile
        "reconcile_interval": "1h",
    }
    entry.update(registry)
    # the tests remove a registry's only service: protection would hold that
    top = {"protection": {"hold_empty": False, "min_instances": 1000}}
    return settings_for(tmp_path, entry, **top)


def entry_for(client: IstiodLikeClient, host: str = HOST) -> DecodedResource | None:
    return next((r for r in client.latest("ServiceEntry") if r.name == host), None)


def addresses(client: IstiodLikeClient, host: str = HOST) -> list[str]:
    entry = entry_for(client, host)
    return [] if entry is None else sorted(e.address for e in entry.service_entry.endpoints)


def registry_of(app: App) -> CloudMapRegistry:
    registry = app.registries[0]
    assert isinstance(registry, CloudMapRegistry)
    return registry


async def test_namespaces_services_and_instances_come_and_go(
    tmp_path: Path, aws: CloudMap, serve: ServeFactory
) -> None:
    aws.namespace("shop")
    aws.service("shop", "orders")
    aws.register(
        "shop",
        "orders",
        "i-1",
        AWS_INSTANCE_IPV4="10.40.0.1",
        AWS_INSTANCE_PORT="8080",
        protocol="http",
        version="v1",
        **{"team/owner": "Payments Team!", "AVAILABILITY_ZONE": "us-east-1a"},
    )
    aws.register(
        "shop",
        "orders",
        "i-2",
        AWS_INSTANCE_IPV4="10.40.0.2",
        AWS_INSTANCE_PORT="8081",
        protocol="http",
    )
    aws.register(
        "shop",
        "orders",
        "i-3",
        AWS_INSTANCE_IPV4="10.40.0.3",
        AWS_INSTANCE_PORT="8080",
        protocol="http",
    )
    app, client = await serve(cloudmap_settings(tmp_path, aws.server))
    await client.wait_for(lambda c: addresses(c) == ["10.40.0.1", "10.40.0.2", "10.40.0.3"], 30)
    entry = entry_for(client)
    assert entry is not None and entry.namespace == "cloudmap"
    assert entry.labels["cloudmap-namespace"] == "shop"
    assert entry.labels["cloudmap-service"] == "orders"
    spec = entry.service_entry
    assert list(spec.hosts) == [HOST]
    assert [(p.name, p.number, p.protocol) for p in spec.ports] == [("http", 8080, "HTTP")]
    first, second, _ = sorted(spec.endpoints, key=lambda e: e.address)
    # custom attributes are labels, sanitised; AWS_* attributes and the protocol are not
    assert dict(first.labels) == {
        "version": "v1",
        "team/owner": "Payments-Team",
        "registry": "cloudmap",
    }
    assert first.locality == "us-east-1/us-east-1a"
    assert dict(second.ports) == {"http": 8081}

    # an instance registered and one deregistered: seen through the revision alone (the
    # reconcile is an hour away)
    aws.register(
        "shop",
        "orders",
        "i-4",
        AWS_INSTANCE_IPV4="10.40.0.4",
        AWS_INSTANCE_PORT="8080",
        protocol="http",
    )
    wanted = ["10.40.0.1", "10.40.0.2", "10.40.0.3", "10.40.0.4"]
    await client.wait_for(lambda c: addresses(c) == wanted, 30)
    # one at a time: moto's revision (a sum of per-instance counters) would not move for a
    # registration and a deregistration together
    aws.deregister("shop", "orders", "i-3")
    await client.wait_for(lambda c: addresses(c) == ["10.40.0.1", "10.40.0.2", "10.40.0.4"], 30)

    # nothing changes: rounds of revision checks, not one DiscoverInstances more
    registry = registry_of(app)
    calls = dict(registry.client.calls)
    rounds = registry.rounds
    await eventually(lambda: registry.rounds >= rounds + 3, 10)
    assert registry.client.calls["DiscoverInstances"] == calls["DiscoverInstances"]
    assert registry.client.calls["DiscoverInstancesRevision"] > calls["DiscoverInstancesRevision"]

    # a namespace appears (a DNS one), with an IP service and a CNAME service
    aws.namespace("billing.internal", dns=True)
    aws.service("billing.internal", "invoices")
    aws.register("billing.internal", "invoices", "i-9", AWS_INSTANCE_IPV4="10.41.0.9")
    aws.service("billing.internal", "legacy")
    aws.register(
        "billing.internal",
        "legacy",
        "db",
        AWS_INSTANCE_CNAME="db.legacy.example.com",
        AWS_INSTANCE_PORT="5432",
    )
    await client.wait_for(lambda c: addresses(c, "invoices.billing.internal") == ["10.41.0.9"], 30)
    await client.wait_for(lambda c: entry_for(c, "legacy.billing.internal") is not None, 30)
    invoices = entry_for(client, "invoices.billing.internal")
    assert invoices is not None
    # no port attribute: default_port; no protocol: default_protocol
    assert [(p.name, p.number, p.protocol) for p in invoices.service_entry.ports] == [
        ("tcp", 80, "TCP")
    ]
    legacy = entry_for(client, "legacy.billing.internal")
    assert legacy is not None
    assert legacy.service_entry.resolution == legacy.service_entry.Resolution.DNS
    assert [e.address for e in legacy.service_entry.endpoints] == ["db.legacy.example.com"]
    # services in one namespace are not served under the other (moto lists them everywhere)
    assert entry_for(client, "invoices.shop") is None
    assert entry_for(client, "orders.billing.internal") is None

    # a service deleted, then a namespace deleted: their entries go
    for instance in ("i-1", "i-2", "i-4"):
        aws.deregister("shop", "orders", instance)
    aws.delete_service("shop", "orders")
    await client.wait_for(lambda c: entry_for(c) is None, 30)
    aws.deregister("billing.internal", "invoices", "i-9")
    aws.deregister("billing.internal", "legacy", "db")
    aws.delete_service("billing.internal", "invoices")
    aws.delete_service("billing.internal", "legacy")
    aws.delete_namespace("billing.internal")
    await client.wait_for(lambda c: not c.latest("ServiceEntry"), 30)
    assert registry.view().status is Status.READY


async def test_only_the_named_namespaces_and_services(
    tmp_path: Path, aws: CloudMap, serve: ServeFactory
) -> None:
    for namespace in ("shop", "lab"):
        aws.namespace(namespace)
    for namespace, service, address in (
        ("shop", "orders", "10.42.0.1"),
        ("shop", "orders-canary", "10.42.0.2"),
        ("shop", "audit", "10.42.0.3"),
        ("lab", "orders-experiment", "10.42.0.4"),
    ):
        aws.service(namespace, service)
        aws.register(namespace, service, "i-1", AWS_INSTANCE_IPV4=address)
    settings = cloudmap_settings(tmp_path, aws.server, namespaces=["shop"], services=["orders*"])
    app, client = await serve(settings)
    await client.wait_for(lambda c: hosts(c) == ["orders-canary.shop", "orders.shop"], 30)
    # what is left out stays out: wait past a few more rounds (and their rebuilds)
    await _past_rounds(registry_of(app), 3)
    await past_next_rebuild(app)
    assert hosts(client) == ["orders-canary.shop", "orders.shop"]


def hosts(client: IstiodLikeClient) -> list[str]:
    return sorted(r.name for r in client.latest("ServiceEntry"))


async def _past_rounds(registry: CloudMapRegistry, count: int) -> None:
    target = registry.rounds + count
    await eventually(lambda: registry.rounds >= target, 30)


async def test_custom_health_takes_an_instance_out_and_back(
    tmp_path: Path, aws: CloudMap, serve: ServeFactory
) -> None:
    aws.namespace("shop")
    aws.service("shop", "orders", custom_health=True)
    aws.register("shop", "orders", "i-1", AWS_INSTANCE_IPV4="10.43.0.1")
    aws.register("shop", "orders", "i-2", AWS_INSTANCE_IPV4="10.43.0.2")
    # moto's revision ignores health, as a revision may: the full reconcile must catch it
    settings = cloudmap_settings(tmp_path, aws.server, reconcile_interval="1s")
    _, client = await serve(settings)
    await client.wait_for(lambda c: addresses(c) == ["10.43.0.1", "10.43.0.2"], 30)
    aws.health("shop", "orders", "i-2", "UNHEALTHY")
    await client.wait_for(lambda c: addresses(c) == ["10.43.0.1"], 30)
    aws.health("shop", "orders", "i-2", "HEALTHY")
    await client.wait_for(lambda c: addresses(c) == ["10.43.0.1", "10.43.0.2"], 30)


async def test_more_than_a_hundred_instances_in_one_service(
    tmp_path: Path, aws: CloudMap, serve: ServeFactory
) -> None:
    aws.namespace("shop")
    aws.service("shop", "orders")
    wanted = [f"10.44.{i // 200}.{i % 200 + 1}" for i in range(150)]

    def register_all() -> None:
        for i, address in enumerate(wanted):
            aws.register("shop", "orders", f"i-{i}", AWS_INSTANCE_IPV4=address)

    await asyncio.to_thread(register_all)
    _, client = await serve(cloudmap_settings(tmp_path, aws.server))
    # DiscoverInstances answers 100 unless asked for more (MaxResults up to 1000)
    await client.wait_for(lambda c: addresses(c) == sorted(wanted), 30)


async def test_refused_credentials_show_as_degraded_without_the_secret(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    start_app: AppFactory,
) -> None:
    caplog.set_level(logging.DEBUG)  # as `log_level: debug` would
    # moto checking every request against its IAM, where the test keys do not exist
    server = Moto(tmp_path / "moto", check_auth=True)
    server.start()
    try:
        for name, value in aws_env(server.port).items():
            monkeypatch.setenv(name, value)
        # a session token travels in a request header, which botocore logs at DEBUG
        monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
        app = await start_app(cloudmap_settings(tmp_path, server))
        registry = registry_of(app)
        await eventually(lambda: registry.view().status is Status.DEGRADED, 30)
        detail = registry.view().detail
        assert "credentials refused or missing" in detail
        assert "InvalidClientTokenId" in detail
        assert SECRET_KEY not in detail and SESSION_TOKEN not in detail
        # the status page and /debug/registries show the reason, and no secret either
        for path in ("/", "/debug/registries"):
            _, page = await admin_get(app.admin.port, path)
            assert "InvalidClientTokenId" in page, path
            assert SECRET_KEY not in page and SESSION_TOKEN not in page, path
        # asked again (with backoff), and the secret is never logged, not at DEBUG either
        calls = registry.client.calls["ListNamespaces"]
        await eventually(lambda: registry.client.calls["ListNamespaces"] > calls, 30)
        assert "InvalidClientTokenId" in caplog.text
        assert SECRET_KEY not in caplog.text and SESSION_TOKEN not in caplog.text
        errors = app.metrics.registry.get_sample_value(
            "mcpserver_registry_errors_total", {"registry": "cloudmap", "kind": "credentials"}
        )
        assert (errors or 0) >= 1
    finally:
        server.stop()


async def test_missing_credentials_show_as_degraded(
    tmp_path: Path, moto: Moto, monkeypatch: pytest.MonkeyPatch, start_app: AppFactory
) -> None:
    for name, value in aws_env(moto.port).items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    app = await start_app(cloudmap_settings(tmp_path, moto))
    registry = registry_of(app)
    await eventually(lambda: registry.view().status is Status.DEGRADED, 30)
    assert "NoCredentialsError" in registry.view().detail


async def test_cloudmap_services_reach_istiod(
    tmp_path: Path, aws: CloudMap, start_app: AppFactory, start_istiod: IstiodFactory
) -> None:
    aws.namespace("shop")
    aws.service("shop", "orders")
    for i in (1, 2):
        aws.register(
            "shop", "orders", f"i-{i}", AWS_INSTANCE_IPV4=f"10.45.0.{i}", AWS_INSTANCE_PORT="8080"
        )
    app = await start_app(cloudmap_settings(tmp_path, aws.server))
    istiod = await start_istiod(app.port)
    cluster = f"outbound|8080||{HOST}"

    async def wait_for(expected: list[str]) -> None:
        async def served() -> bool:
            found = (await endpoints(istiod.grpc_port, cluster))[1]
            assert found == expected, found
            return True

        await eventually(served, within=60, every=0.2)

    await wait_for(["10.45.0.1:8080", "10.45.0.2:8080"])
    assert f"cloudmap/{HOST}" in istiod.configs()
    assert HOST in istiod.hosts()
    aws.deregister("shop", "orders", "i-2")
    await wait_for(["10.45.0.1:8080"])


async def test_keep_when_empty_keeps_a_listed_service_without_instances(
    tmp_path: Path, aws: CloudMap, serve: ServeFactory
) -> None:
    """`keep_when_empty`: a Cloud Map service still listed but without an instance stays
    served (same host, ports and address) without endpoints; deleted, it goes."""
    aws.namespace("shop")
    aws.service("shop", "orders")
    aws.register("shop", "orders", "i-1", AWS_INSTANCE_IPV4="10.46.0.1", AWS_INSTANCE_PORT="8080")
    app, client = await serve(cloudmap_settings(tmp_path, aws.server, keep_when_empty=True))
    await client.wait_for(lambda c: addresses(c) == ["10.46.0.1"], 30)
    before = entry_for(client)
    assert before is not None

    aws.deregister("shop", "orders", "i-1")
    await client.wait_for(lambda c: entry_for(c) is not None and addresses(c) == [], 30)
    assert_kept_without_endpoints(before, entry_for(client))
    await _past_rounds(registry_of(app), 3)
    await past_next_rebuild(app)
    assert entry_for(client) is not None  # kept, round after round

    aws.register("shop", "orders", "i-2", AWS_INSTANCE_IPV4="10.46.0.2", AWS_INSTANCE_PORT="8080")
    await client.wait_for(lambda c: addresses(c) == ["10.46.0.2"], 30)
    aws.deregister("shop", "orders", "i-2")
    aws.delete_service("shop", "orders")
    await client.wait_for(lambda c: entry_for(c) is None, 30)
