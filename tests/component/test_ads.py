"""The ADS server against an istiod-faithful client on a real loopback gRPC connection."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2

from mcpserver.app import App
from mcpserver.metrics import Metrics
from mcpserver.model import Instance, Port, Service
from mcpserver.registry.base import OnChange, Registry, Status, View
from mcpserver.registry.static.watcher import StaticRegistry
from mcpserver.xds.client import ADS_METHOD, IstiodLikeClient
from mcpserver.xds.typeurls import ISTIO_1_23, ISTIO_1_29, ISTIO_1_30, MESH_CONFIG
from tests.conftest import (
    AppFactory,
    ClientFactory,
    eventually,
    make_settings,
    service,
    write_services,
)

pytestmark = pytest.mark.component


def sample(app: App, name: str, **labels: str) -> float:
    value = app.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def outcomes(app: App, outcome: str) -> float:
    total = 0.0
    for metric in app.metrics.registry.collect():
        for s in metric.samples:
            if s.name == "mcpserver_xds_requests_total" and s.labels.get("outcome") == outcome:
                total += s.value
    return total


def se_url(client: IstiodLikeClient) -> str:
    return next(u for u in client.type_urls if u.endswith("/ServiceEntry"))


def versions(client: IstiodLikeClient) -> dict[str, tuple[str, Any]]:
    return {
        f"{r.namespace}/{r.name}": (r.version, r.create_time) for r in client.latest("ServiceEntry")
    }


@pytest.mark.parametrize(
    "type_urls", [ISTIO_1_23, ISTIO_1_29, ISTIO_1_30], ids=["1.23", "1.29", "1.30"]
)
async def test_one_response_per_type_and_acks_get_no_reply(
    static_file: Path, start_app: AppFactory, connect: ClientFactory, type_urls: tuple[str, ...]
) -> None:
    app = await start_app(make_settings(static_file))
    client = await connect(app.port, type_urls)
    await client.wait_for(lambda c: c.synced(), 10)
    # every requested type answered, echoing the requested (version-specific) type URL
    await client.wait_for(lambda c: set(c.responses) == set(type_urls), 10)
    entries = client.latest("ServiceEntry")
    assert sorted(f"{r.namespace}/{r.name}" for r in entries) == ["shop/cart", "shop/pay"]
    cart = next(r for r in entries if r.name == "cart")
    assert [e.address for e in cart.spec.endpoints] == ["10.1.0.1", "10.1.0.2"]  # type: ignore[union-attr]
    assert list(cart.spec.hosts) == ["cart.shop.svc.mesh"]  # type: ignore[union-attr]
    assert client.latest("WorkloadEntry") == []
    # the server has processed every ACK (MeshConfig is never ACKed, as in adsc) ...
    assert client.acks_sent == len(type_urls) - 1
    await eventually(lambda: outcomes(app, "ack") == client.acks_sent)
    # ... and answered none of them
    assert all(len(r) == 1 for r in client.responses.values()), {
        k: len(v) for k, v in client.responses.items()
    }
    # a change produces exactly one new response, for the changed type only
    write_services(static_file, [service("cart", "10.1.0.1")])
    await client.wait_for(lambda c: len(c.responses[se_url(c)]) == 2, 10)
    await eventually(lambda: outcomes(app, "ack") == client.acks_sent)
    assert sum(len(r) for r in client.responses.values()) == len(type_urls) + 1
    assert MESH_CONFIG in client.responses


async def test_edits_change_only_changed_versions_even_across_restart(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    settings = make_settings(static_file)
    app = await start_app(settings)
    client = await connect(app.port)
    await client.wait_for(lambda c: c.synced(), 10)
    before = versions(client)
    write_services(
        static_file, [service("cart", "10.1.0.1", "10.1.0.2"), service("pay", "10.1.0.10")]
    )
    await client.wait_for(lambda c: len(c.responses[se_url(c)]) == 2, 10)
    after = versions(client)
    assert after["shop/cart"] == before["shop/cart"]
    assert after["shop/pay"][0] != before["shop/pay"][0]
    assert after["shop/pay"][1] == before["shop/pay"][1]  # create_time stable
    # a brand-new server process state gives the same versions and times
    await app.stop()
    fresh = await start_app(settings)
    again = await connect(fresh.port)
    await again.wait_for(lambda c: c.synced(), 10)
    assert versions(again) == after


async def test_removed_service_disappears_and_reconnect_gets_full_state(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    app = await start_app(make_settings(static_file))
    client = await connect(app.port)
    await client.wait_for(lambda c: c.synced(), 10)
    write_services(static_file, [service("cart", "10.1.0.1")])
    await client.wait_for(lambda c: len(c.responses[se_url(c)]) == 2, 10)
    assert list(versions(client)) == ["shop/cart"]
    client.close()
    second = await connect(app.port)
    await second.wait_for(lambda c: c.synced(), 10)
    assert list(versions(second)) == ["shop/cart"]
    assert all(len(r) == 1 for r in second.responses.values())


class ControlledRegistry(Registry):
    """A registry whose sync the test decides (fakes are fine for the server's own tests)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._view = View(name)
        self._on_change: OnChange = lambda: None

    async def start(self, on_change: OnChange) -> None:
        self._on_change = on_change

    async def stop(self) -> None:
        pass

    def view(self) -> View:
        return self._view

    def sync(self, *services: Service) -> None:
        self._view = View(self.name, services, synced=True, status=Status.READY)
        self._on_change()


def svc(name: str, address: str) -> Service:
    return Service(
        registry="slow",
        namespace="late",
        name=name,
        hosts=(f"{name}.late.mesh",),
        ports=(Port("http", 80, "HTTP"),),
        instances=(Instance(address),),
    )


async def test_nothing_is_sent_before_the_first_complete_snapshot(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    slow = ControlledRegistry("slow")
    settings = make_settings(static_file, startup={"wait_for_registries": "60s"})
    app = await start_app(settings, [StaticRegistry(settings.registries[0], Metrics()), slow])
    client = await connect(app.port)
    # the server has seen all 15 requests and decided to wait on each, and a rebuild has run
    await eventually(lambda: outcomes(app, "wait") == len(ISTIO_1_29))
    await eventually(lambda: app.debouncer.runs >= 1)
    assert client.responses == {}
    assert app.store.snapshot is None
    slow.sync(svc("late", "10.9.0.1"))
    await client.wait_for(lambda c: c.synced(), 10)
    assert sorted(versions(client)) == ["late/late", "shop/cart", "shop/pay"]
    assert all(len(r) == 1 for r in client.responses.values())


async def test_startup_wait_bounds_a_registry_that_never_syncs(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    settings = make_settings(static_file, startup={"wait_for_registries": "300ms"})
    never = ControlledRegistry("slow")
    app = await start_app(settings, [StaticRegistry(settings.registries[0], Metrics()), never])
    client = await connect(app.port)
    await client.wait_for(lambda c: c.synced(), 10)
    assert sorted(versions(client)) == ["shop/cart", "shop/pay"]


async def raw_stream(port: int, *requests: discovery_pb2.DiscoveryRequest) -> list[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            ADS_METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )(iter(requests))
        return [r async for r in call]


async def test_malformed_request_ends_only_that_stream(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    app = await start_app(make_settings(static_file))
    healthy = await connect(app.port)
    await healthy.wait_for(lambda c: c.synced(), 10)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw_stream(app.port, discovery_pb2.DiscoveryRequest(response_nonce="x"))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "type_url" in (err.value.details() or "")
    write_services(static_file, [service("cart", "10.1.0.1")])
    await healthy.wait_for(lambda c: len(c.responses[se_url(c)]) == 2, 10)


async def test_delta_is_unimplemented_with_a_clear_message(
    static_file: Path, start_app: AppFactory
) -> None:
    app = await start_app(make_settings(static_file))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        call = channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
            request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
        )(
            iter(
                [
                    discovery_pb2.DeltaDiscoveryRequest(
                        type_url="networking.istio.io/v1/ServiceEntry"
                    )
                ]
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "state-of-the-world" in (err.value.details() or "")


async def test_invalid_services_are_withheld_and_reported(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    write_services(
        static_file,
        [
            service("good", "10.1.0.1"),
            service("badhost", "10.1.0.2", host="bad_host.shop"),
            service(
                "dupports",
                "10.1.0.3",
                ports=[{"name": "http", "number": 80}, {"name": "http", "number": 81}],
            ),
            service("badportname", "10.1.0.4", ports=[{"name": "http_web", "number": 80}]),
            service("notip", "backend.example.com"),
        ],
    )
    app = await start_app(make_settings(static_file))
    client = await connect(app.port)
    await client.wait_for(lambda c: c.synced(), 10)
    assert list(versions(client)) == ["shop/good"]
    subjects = {p.subject: p.message for p in app.pipeline.problems}
    assert set(subjects) == {
        "ServiceEntry shop/badhost",
        "ServiceEntry shop/dupports",
        "ServiceEntry shop/badportname",
        "ServiceEntry shop/notip",
    }
    assert "bad_host" in subjects["ServiceEntry shop/badhost"]
    assert "already defined" in subjects["ServiceEntry shop/dupports"]
    assert "invalid port name: http_web" in subjects["ServiceEntry shop/badportname"]
    assert "not a valid IP address" in subjects["ServiceEntry shop/notip"]
    assert sample(app, "mcpserver_invalid_resources", registry="files") == 4
    assert sample(app, "mcpserver_rejected_resources_total", registry="files") == 4
    # fixing one keeps the others withheld and lets the fixed one flow
    write_services(
        static_file,
        [
            service("good", "10.1.0.1"),
            service("notip", "10.1.0.5"),
            service("badhost", "x", host="bad_host.shop"),
        ],
    )
    await client.wait_for(lambda c: "shop/notip" in versions(c), 10)
    assert sample(app, "mcpserver_invalid_resources", registry="files") == 1


async def test_a_broken_file_keeps_the_last_known_services(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    app = await start_app(make_settings(static_file))
    client = await connect(app.port)
    await client.wait_for(lambda c: c.synced(), 10)
    static_file.write_text("services: [\n")
    await eventually(lambda: app.registries[0].view().status is Status.DEGRADED)
    static_file.unlink()
    await eventually(lambda: "cannot read" in app.registries[0].view().detail)
    assert sorted(versions(client)) == ["shop/cart", "shop/pay"]
    assert len(client.responses[se_url(client)]) == 1
    write_services(static_file, [service("cart", "10.1.0.1")])
    await client.wait_for(lambda c: len(c.responses[se_url(c)]) == 2, 10)
    assert app.registries[0].view().status is Status.READY


async def test_many_concurrent_streams_all_follow_changes(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    app = await start_app(make_settings(static_file))
    clients = [await connect(app.port) for _ in range(20)]
    await asyncio.gather(*(c.wait_for(lambda c: c.synced(), 10) for c in clients))
    write_services(static_file, [service("solo", "10.2.0.1")])
    await asyncio.gather(
        *(c.wait_for(lambda c: list(versions(c)) == ["shop/solo"], 10) for c in clients)
    )
