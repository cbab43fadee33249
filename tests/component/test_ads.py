"""The ADS server against an istiod-faithful client on a real loopback gRPC connection."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2

from mcpserver.app import App
from mcpserver.metrics import Metrics
from mcpserver.model import Instance, Port, Service
from mcpserver.registry.base import Registry
from mcpserver.registry.static.config import StaticRegistrySettings
from mcpserver.registry.static.watcher import StaticRegistry
from mcpserver.registry.view import Status
from mcpserver.settings import Settings
from mcpserver.xds.callbacks import KNOWN_TYPE_URLS, OTHER_TYPE_URL
from mcpserver.xds.client import ADS_METHOD, IstiodLikeClient
from mcpserver.xds.sotw import MAX_PENDING_REQUESTS
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
    """The sum of the samples with these labels, whatever their others (the shard)."""
    return sum(
        s.value
        for metric in app.metrics.registry.collect()
        for s in metric.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


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
    assert [e.address for e in cart.service_entry.endpoints] == ["10.1.0.1", "10.1.0.2"]
    assert list(cart.service_entry.hosts) == ["cart.shop.svc.mesh"]
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


def static_registry(settings: Settings) -> StaticRegistry:
    entry = settings.registries[0]
    assert isinstance(entry, StaticRegistrySettings)
    return StaticRegistry(entry, Metrics())


class ControlledRegistry(Registry):
    """A registry whose sync the test decides (fakes are fine for the server's own tests)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, Metrics())

    async def open(self) -> None:
        pass

    def sync(self, *services: Service) -> None:
        self.publish(services, synced=True)


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
    settings = make_settings(static_file)
    app = await start_app(settings, [static_registry(settings), slow])
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
    settings = make_settings(static_file, startup={"serve_partial_after": "300ms"})
    never = ControlledRegistry("slow")
    app = await start_app(settings, [static_registry(settings), never])
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


async def delta_requests() -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
    """One request, then the stream held open as istiod's would be (an iterator that ended
    would half-close the stream, racing the server's refusal)."""
    yield discovery_pb2.DeltaDiscoveryRequest(type_url="networking.istio.io/v1/ServiceEntry")
    await asyncio.Event().wait()


async def test_delta_is_unimplemented_with_a_clear_message(
    static_file: Path, start_app: AppFactory
) -> None:
    app = await start_app(make_settings(static_file))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        call = channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
            request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
        )(delta_requests())
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


async def test_a_flooding_client_is_held_back_and_others_are_still_served(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    """5,000 re-subscriptions on one stream whose responses are never read: the server holds
    at most MAX_PENDING_REQUESTS of them (HTTP/2 flow control holds the rest in the client),
    and other streams are answered as usual."""
    # ~100 kB per response, so the flooder's unread responses soon fill the flow-control
    # windows and the server's loop for that stream blocks on its write
    many = [service(f"s{i}", *(f"10.2.{i}.{j}" for j in range(1, 21))) for i in range(200)]
    write_services(static_file, many)
    app = await start_app(make_settings(static_file))
    watcher = await connect(app.port)
    await watcher.wait_for(lambda c: c.synced(), 10)
    se = se_url(watcher)

    async def flood() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        for _ in range(5000):
            yield discovery_pb2.DiscoveryRequest(type_url=se)  # empty nonce: answer in full

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        call = channel.stream_stream(
            ADS_METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )(flood())
        flooder = await eventually(
            lambda: next((c for c in app.clients.open.values() if not c.node_id), None)
        )
        await eventually(lambda: flooder.responses >= 1)
        # while the flooder is held, a new client syncs and a change reaches the watcher
        started = time.monotonic()
        newcomer = await connect(app.port)
        await newcomer.wait_for(lambda c: c.synced(), 5)
        write_services(static_file, [*many, service("after-flood", "10.3.0.1")])
        await watcher.wait_for(lambda c: "shop/after-flood" in versions(c), 5)
        assert time.monotonic() - started < 5
        assert flooder.stream_id in app.clients.open  # still open, still held
        assert 1 <= flooder.pending_high_water <= MAX_PENDING_REQUESTS
        assert flooder.responses < 5000  # back-pressure reached the client
        call.cancel()
    await eventually(lambda: flooder.stream_id not in app.clients.open)


def type_url_labels(app: App) -> dict[str, set[str]]:
    """Every type_url label value, per xds metric family."""
    found: dict[str, set[str]] = {}
    for metric in app.metrics.registry.collect():
        for s in metric.samples:
            if s.name.startswith("mcpserver_xds_") and "type_url" in s.labels:
                found.setdefault(s.name, set()).add(s.labels["type_url"])
    return found


async def test_unknown_type_urls_cannot_inflate_metrics(
    static_file: Path, start_app: AppFactory
) -> None:
    app = await start_app(make_settings(static_file))
    await eventually(lambda: app.store.snapshot is not None)
    rng = random.Random(20260822)
    unknown = [
        f"x{rng.getrandbits(64):x}.example/v{i}/Kind{rng.getrandbits(32):x}" for i in range(50)
    ]
    se = "networking.istio.io/v1/ServiceEntry"
    requests = [discovery_pb2.DiscoveryRequest(type_url=url) for url in [*unknown, se]]
    responses = await raw_stream(app.port, *requests)
    # each one is still answered (with the empty set), echoing its type URL
    assert [r.type_url for r in responses] == [*unknown, se]
    labels = type_url_labels(app)
    for name in (
        "mcpserver_xds_requests_total",
        "mcpserver_xds_responses_total",
        "mcpserver_xds_response_bytes_total",
    ):
        assert labels[name] == {OTHER_TYPE_URL, se}, name
    assert sample(app, "mcpserver_xds_requests_total", type_url="other", outcome="respond") == 50
    assert sample(app, "mcpserver_xds_responses_total", type_url="other") == 50
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{app.admin.port}/metrics") as reply,
    ):
        text = await reply.text()
    assert not any(url in text for url in unknown)
    assert f'type_url="{OTHER_TYPE_URL}"' in text
    assert {se, *ISTIO_1_23, *ISTIO_1_30} <= KNOWN_TYPE_URLS
