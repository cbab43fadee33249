"""istiod never loses a live service because of us: protected views, fault-isolated rebuilds,
waiting for every registry, and VIPs every replica agrees on."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from grpc_health.v1 import health_pb2

import mcpserver.builder
from mcpserver.app import App
from mcpserver.model import Service
from mcpserver.registry.view import Status
from mcpserver.xds.client import IstiodLikeClient
from tests.component.test_ads import ControlledRegistry, se_url, static_registry, svc
from tests.conftest import (
    AppFactory,
    ClientFactory,
    eventually,
    health_status,
    make_settings,
    past_next_rebuild,
    service,
    write_services,
)

pytestmark = pytest.mark.component


def set_sizes(client: IstiodLikeClient) -> list[int]:
    """How many ServiceEntries each response the client received carried, in order."""
    return [len(r.resources) for r in client.responses.get(se_url(client), [])]


async def rebuilt_after(app: App, condition: Callable[[], bool]) -> None:
    """Wait for `condition`, then past the next rebuild (so a withdrawal would have been sent)."""
    await eventually(condition)
    await past_next_rebuild(app)


async def test_a_watching_client_never_sees_a_smaller_set_from_a_broken_static_file(
    static_file: Path,
    start_app: AppFactory,
    connect: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = await start_app(make_settings(static_file))
    client = await connect(app.port)
    await client.wait_for(lambda c: c.synced(), 10)
    registry = app.registries[0]
    # an editor truncating the file on save
    static_file.write_text("")
    await rebuilt_after(app, lambda: "empty" in registry.view().detail)
    # the top-level key mistyped
    static_file.write_text("service:\n  - name: cart\n")
    await rebuilt_after(app, lambda: "unknown top-level key" in registry.view().detail)
    assert registry.view().status is Status.DEGRADED
    assert set_sizes(client) == [2]
    # a poisoned record whose conversion raises, next to a new valid service: the valid
    # one arrives, the poisoned one is withheld alone and named, nothing else moves
    # (both conversion paths: whole spec, and inline endpoint by endpoint)
    for path in ("_convert_service", "_convert_inline"):
        real = getattr(mcpserver.builder, path)

        def poisoned(target: Service, *args: Any, real: Any = real) -> Any:
            if target.name == "poison":
                raise OverflowError("value out of range")
            return real(target, *args)

        monkeypatch.setattr(mcpserver.builder, path, poisoned)
    write_services(
        static_file,
        [
            service("cart", "10.1.0.1", "10.1.0.2"),
            service("pay", "10.1.0.9"),
            service("poison", "10.1.0.66"),
            service("fresh", "10.1.0.77"),
        ],
    )
    await client.wait_for(lambda c: "fresh" in {r.name for r in c.latest("ServiceEntry")}, 10)
    assert sorted(r.name for r in client.latest("ServiceEntry")) == ["cart", "fresh", "pay"]
    problem = next(p for p in app.pipeline.problems if p.subject == "ServiceEntry shop/poison")
    assert "conversion failed: OverflowError: value out of range" in problem.message
    assert registry.view().status is Status.READY
    # a record that a looser parser would let through to conversion (port 4294967296):
    # skipped with its field, the rest still flows
    write_services(
        static_file,
        [
            service("cart", "10.1.0.1", "10.1.0.2"),
            service("pay", "10.1.0.9"),
            service("fresh", "10.1.0.77"),
            service("wide", "10.1.0.5", ports=[{"name": "tcp", "number": 4294967296}]),
            service("later", "10.1.0.88"),
        ],
    )
    await client.wait_for(lambda c: "later" in {r.name for r in c.latest("ServiceEntry")}, 10)
    sizes = set_sizes(client)
    assert sizes == sorted(sizes), sizes  # never smaller


async def test_an_explicit_empty_list_is_a_removal_and_is_held(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    app = await start_app(make_settings(static_file))
    client = await connect(app.port)
    await client.wait_for(lambda c: c.synced(), 10)
    write_services(static_file, [])
    await rebuilt_after(app, lambda: "files" in {p.registry for p in app.pipeline.problems})
    assert set_sizes(client) == [2]
    base = f"http://127.0.0.1:{app.admin.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/debug/registries") as response:
            (entry,) = json.loads(await response.text())
        assert entry["status"] == "degraded"
        assert "all 2 served services" in entry["detail"]
        assert entry["source"]["status"] == "ready"
        async with http.get(f"{base}/debug/problems") as response:
            problems = json.loads(await response.text())
        assert any(p["subject"] == "removal held" for p in problems)
        held = app.metrics.registry.get_sample_value(
            "mcpserver_registry_removal_held", {"registry": "files"}
        )
        assert held == 1
        async with http.post(f"{base}/debug/registries/nope/confirm") as response:
            assert response.status == 404
        async with http.post(f"{base}/debug/registries/files/confirm") as response:
            assert response.status == 200
    await client.wait_for(lambda c: set_sizes(c)[-1] == 0, 10)


async def test_a_registry_that_never_syncs_gets_nothing_answered_by_default(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    settings = make_settings(static_file)
    never = ControlledRegistry("slow")
    app = await start_app(settings, [static_registry(settings), never])
    client = await connect(app.port)
    assert app.pipeline.partial_remaining() is None  # no deadline: wait however long
    for _ in range(3):
        await rebuilt_after(app, lambda: True)
    assert client.responses == {}
    assert app.pipeline.waiting_for() == ["slow"]
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{app.admin.port}/readyz") as response,
    ):
        assert response.status == 503
        body = json.loads(await response.text())
    assert body["waiting_for"] == ["slow"] and "slow" in body["reason"]
    never.sync(svc("late", "10.9.0.1"))
    await client.wait_for(lambda c: c.synced(), 10)


async def test_grpc_health_is_not_serving_before_the_first_snapshot(
    static_file: Path, start_app: AppFactory
) -> None:
    import grpc

    settings = make_settings(static_file)
    never = ControlledRegistry("slow")
    app = await start_app(settings, [static_registry(settings), never])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:

        async def status(name: str) -> int:
            return await health_status(channel, name)

        ads = "envoy.service.discovery.v3.AggregatedDiscoveryService"
        assert await status(ads) == health_pb2.HealthCheckResponse.NOT_SERVING
        never.sync(svc("late", "10.9.0.1"))
        await eventually(lambda: app.store.snapshot is not None)
        await eventually(lambda: app.pipeline.serving)
        assert await status(ads) == health_pb2.HealthCheckResponse.SERVING


def tcp_services(names: list[str]) -> list[dict[str, Any]]:
    """TCP services (they need VIPs), each with its own creation time."""
    born = datetime(2024, 1, 1, tzinfo=UTC)
    return [
        service(
            name,
            f"10.5.0.{int(name[1:]) + 1}",
            ports=[{"name": "tcp", "number": 7000, "protocol": "TCP"}],
            created=(born + timedelta(hours=int(name[1:]))).isoformat(),
        )
        for name in names
    ]


async def test_replicas_that_saw_different_histories_serve_byte_identical_resources(
    tmp_path: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    """Two servers started at different moments, over registries that grew in different
    orders, with a pool so small that addresses collide, serve the same bytes; a restarted
    server serves the same addresses as before."""
    names = [f"s{i}" for i in range(10)]
    top = {"vip": {"cidr": "240.10.0.0/28"}}  # 14 addresses for 10 services: collisions
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a_file, b_file = a_dir / "services.yaml", b_dir / "services.yaml"
    write_services(a_file, tcp_services(names[:5]))
    first = await start_app(make_settings(a_file, **top))
    a = await connect(first.port)
    await a.wait_for(lambda c: c.synced(), 10)
    write_services(a_file, tcp_services(names))
    await a.wait_for(lambda c: len(c.latest("ServiceEntry")) == 10, 10)
    shuffled = names[::-1]
    write_services(b_file, tcp_services(shuffled[:3]))
    second = await start_app(make_settings(b_file, **top))
    b = await connect(second.port)
    await b.wait_for(lambda c: c.synced(), 10)
    random.Random(7).shuffle(shuffled)
    write_services(b_file, tcp_services(shuffled))
    await b.wait_for(lambda c: len(c.latest("ServiceEntry")) == 10, 10)
    served_a = sorted(r.SerializeToString() for r in a.responses[se_url(a)][-1].resources)
    served_b = sorted(r.SerializeToString() for r in b.responses[se_url(b)][-1].resources)
    assert served_a == served_b
    vips = {r.name: tuple(r.service_entry.addresses) for r in a.latest("ServiceEntry")}
    assert len(set(vips.values())) == 10  # all distinct, all allocated
    # a restart (nothing remembered) serves the same addresses
    await first.stop()
    again = await start_app(make_settings(a_file, **top))
    c = await connect(again.port)
    await c.wait_for(lambda c: c.synced(), 10)
    assert {r.name: tuple(r.service_entry.addresses) for r in c.latest("ServiceEntry")} == vips


async def test_removing_withheld_entries_is_no_removal(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    """Issue 27: a file with 3 valid services (2 instances each) and 6 entries withheld as
    invalid (a bad port name); an edit removes the 6 invalid ones and one valid service.
    istiod had 6 instances and loses 2 (33%): a plain removal, served at once, and the
    withheld entries' problems go with them."""
    bad_port = [{"name": "Bad_Name", "number": 8080, "protocol": "HTTP"}]
    valid = [service(f"ok{i}", f"10.7.{i}.1", f"10.7.{i}.2") for i in range(3)]
    invalid = [service(f"bad{i}", f"10.8.0.{i + 1}", ports=bad_port) for i in range(6)]
    write_services(static_file, valid + invalid)
    app = await start_app(make_settings(static_file))
    client = await connect(app.port)
    await client.wait_for(lambda c: c.synced(), 10)
    assert sorted(r.name for r in client.latest("ServiceEntry")) == ["ok0", "ok1", "ok2"]
    assert len([p for p in app.pipeline.problems if "invalid port name" in p.message]) == 6
    write_services(static_file, valid[1:])
    await client.wait_for(lambda c: len(c.latest("ServiceEntry")) == 2, 10)
    assert sorted(r.name for r in client.latest("ServiceEntry")) == ["ok1", "ok2"]
    await past_next_rebuild(app)
    assert all(state.hold is None for state in app.pipeline.registry_states())
    assert app.pipeline.problems == ()
