"""Sharded serving (server.shards): each shard's port is a complete server for istiod that
serves its part of the set; the parts together are the whole set, byte for byte; a change
goes to the one shard it falls in; and a second layout (server.previous_shards) is served
beside the first for a migration, on ports of its own."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2

from mcpserver.app import App
from mcpserver.cli import main
from mcpserver.xds.client import DecodedResource, IstiodLikeClient
from mcpserver.xds.shards import shard_label, shard_of
from mcpserver.xds.typeurls import ISTIO_1_29
from tests.certs import make_certs
from tests.component.test_ads import ControlledRegistry, svc
from tests.component.test_tls_reload import handshake, install, synced_client
from tests.conftest import (
    AppFactory,
    ClientFactory,
    admin_get,
    eventually,
    health_status,
    make_settings,
    past_next_rebuild,
    service,
    write_services,
)

pytestmark = pytest.mark.component

SE_URL = "networking.istio.io/v1/ServiceEntry"
WE_URL = "networking.istio.io/v1/WorkloadEntry"


def estate(count: int, *, moved: int | None = None) -> list[dict[str, Any]]:
    """`count` services with two instances each; service `moved` has a third."""
    return [
        service(f"svc-{i}", f"10.2.{i}.1", f"10.2.{i}.2", *([f"10.2.{i}.3"] if i == moved else []))
        for i in range(count)
    ]


def fingerprint(resources: list[DecodedResource]) -> set[tuple[Any, ...]]:
    return {
        (r.kind, r.namespace, r.name, r.version, r.spec.SerializeToString(deterministic=True))
        for r in resources
    }


async def synced(connect: ClientFactory, port: int) -> IstiodLikeClient:
    client = await connect(port)
    await client.wait_for(lambda c: c.synced(), 10)
    return client


async def test_each_shard_serves_its_part_and_together_the_whole_set(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    write_services(static_file, estate(24))
    app = await start_app(make_settings(static_file, server=_server(shards=4)))
    whole = await synced(connect, app.port)
    assert len(whole.latest("ServiceEntry")) == 24
    ports = app.shard_ports(4)
    assert len(ports) == 4 and app.port not in ports
    union: set[tuple[Any, ...]] = set()
    sizes = []
    for shard, port in enumerate(ports):
        client = await synced(connect, port)
        # a complete server: every type istiod asks for is answered
        assert all(client.responses.get(url) for url in ISTIO_1_29[1:])
        assert client.metadata["mcpserver-shard"] == shard_label(4, shard)
        entries = client.latest("ServiceEntry")
        assert {f"{r.namespace}/{r.name}" for r in entries} == {
            f"shop/svc-{i}" for i in range(24) if shard_of(f"shop/svc-{i}", 4) == shard
        }
        sizes.append(len(entries))
        part = fingerprint(entries)
        assert not part & union, "a resource on two shards"
        union |= part
    assert union == fingerprint(whole.latest("ServiceEntry"))
    assert min(sizes) > 0, sizes  # 24 names over 4 shards: none empty (blake2b)
    assert whole.metadata["mcpserver-shard-ports"] == ",".join(map(str, ports))


async def test_workload_entries_go_with_their_service(
    static_file: Path, tmp_path: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    write_services(static_file, estate(12))
    settings = make_settings(
        static_file,
        server=_server(shards=4),
        registries=[
            {
                "kind": "static",
                "name": "files",
                "path": str(static_file),
                "poll_interval": "50ms",
                "endpoints": "workloadentry",
            }
        ],
    )
    app = await start_app(settings)
    total = 0
    for shard, port in enumerate(app.shard_ports(4)):
        client = await synced(connect, port)
        selectors = {
            f"{r.namespace}/{r.name}": dict(r.service_entry.workload_selector.labels)
            for r in client.latest("ServiceEntry")
        }
        entries = client.latest("WorkloadEntry")
        assert len(entries) == 2 * len(selectors)
        total += len(entries)
        for entry in entries:
            labels = dict(entry.workload_entry.labels)
            owners = [k for k, sel in selectors.items() if sel.items() <= labels.items()]
            assert len(owners) == 1, (entry.name, owners)
            assert shard_of(owners[0], 4) == shard, (entry.name, owners[0], shard)
    assert total == 24


def _server(**extra: Any) -> dict[str, Any]:
    return {"listen": "127.0.0.1:0", "admin": "127.0.0.1:0", **extra}


def se_responses(client: IstiodLikeClient) -> int:
    return len(client.responses.get(SE_URL, []))


async def test_a_change_is_sent_on_its_shard_only(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    write_services(static_file, estate(16))
    app = await start_app(make_settings(static_file, server=_server(shards=4)))
    clients = [await synced(connect, port) for port in app.shard_ports(4)]
    whole = await synced(connect, app.port)
    before = [se_responses(c) for c in clients]
    changed = 5
    write_services(static_file, estate(16, moved=changed))
    home = shard_of(f"shop/svc-{changed}", 4)
    await clients[home].wait_for(lambda c: se_responses(c) > before[home], 10)
    await whole.wait_for(lambda c: se_responses(c) > 1, 10)
    await past_next_rebuild(app)
    assert [se_responses(c) - b for c, b in zip(clients, before, strict=True)] == [
        1 if shard == home else 0 for shard in range(4)
    ]
    moved = [r for r in clients[home].latest("ServiceEntry") if r.name == f"svc-{changed}"]
    assert len(moved[0].service_entry.endpoints) == 3
    # the bytes of one change: one shard's set, not the whole set
    body, sizes = await _response_bytes(app)
    assert sizes[shard_label(4, home)] < sizes["all"], body


async def _response_bytes(app: App) -> tuple[str, dict[str, float]]:
    status, body = await admin_get(app.admin.port, "/metrics")
    assert status == 200
    sizes: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith("mcpserver_xds_response_bytes_total{") and SE_URL in line:
            shard = line.split('shard="')[1].split('"')[0]
            sizes[shard] = sizes.get(shard, 0.0) + float(line.rsplit(" ", 1)[1])
    return body, sizes


async def test_shards_answer_nothing_before_the_first_snapshot(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    """A shard's stream waits for the first complete snapshot like the whole set's: its
    health says NOT_SERVING and a request gets no answer until then."""
    late = ControlledRegistry("late")
    app = await start_app(make_settings(static_file, server=_server(shards=2)), [late])
    port = app.shard_ports(2)[0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert await health_status(channel, "") == health_pb2.HealthCheckResponse.NOT_SERVING
    client = await connect(port)
    await past_next_rebuild(app)
    assert not client.responses
    late.sync(svc("late", "10.9.0.1"))
    await client.wait_for(lambda c: c.synced(), 10)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert await health_status(channel, "") == health_pb2.HealthCheckResponse.SERVING


async def test_a_previous_layout_is_served_beside_the_new_one(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    """server.previous_shards: istiods still reading the old layout get the same parts on
    the same ports as before, while the new layout is served on ports of its own."""
    write_services(static_file, estate(20))
    app = await start_app(make_settings(static_file, server=_server(shards=4, previous_shards=2)))
    assert app.layouts == (1, 2, 4)
    whole = fingerprint((await synced(connect, app.port)).latest("ServiceEntry"))
    for n in (2, 4):
        ports = app.shard_ports(n)
        assert len(ports) == n
        union: set[tuple[Any, ...]] = set()
        for shard, port in enumerate(ports):
            client = await synced(connect, port)
            assert client.metadata["mcpserver-shard"] == f"{shard}/{n}"
            # the shard ports every stream advertises are server.shards' (dump reads them)
            assert client.metadata["mcpserver-shard-ports"] == ",".join(
                map(str, app.shard_ports(4))
            )
            part = fingerprint(client.latest("ServiceEntry"))
            assert all(shard_of(f"{r[1]}/{r[2]}", n) == shard for r in part)
            union |= part
        assert union == whole


async def test_debug_pages_and_metrics_show_each_shard(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    write_services(static_file, estate(8))
    app = await start_app(make_settings(static_file, server=_server(shards=2)))
    ports = app.shard_ports(2)
    await synced(connect, ports[1])
    await synced(connect, app.port)
    status, body = await admin_get(app.admin.port, "/debug/snapshot")
    assert status == 200
    page = json.loads(body)
    assert page["kinds"]["ServiceEntry"]["count"] == 8
    shards = page["shards"]
    assert [(s["shard"], s["port"]) for s in shards] == [("0/2", ports[0]), ("1/2", ports[1])]
    assert sum(s["kinds"]["ServiceEntry"]["count"] for s in shards) == 8
    status, body = await admin_get(app.admin.port, "/debug/clients")
    assert sorted(c["shard"] for c in json.loads(body)) == ["1/2", "all"]
    _, metrics = await admin_get(app.admin.port, "/metrics")
    assert 'mcpserver_xds_streams{shard="1/2"} 1.0' in metrics
    assert 'mcpserver_xds_streams{shard="0/2"} 0.0' in metrics or (
        'mcpserver_xds_streams{shard="0/2"}' not in metrics
    )
    counts = {
        shard: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('mcpserver_shard_resources{kind="ServiceEntry"')
        for shard in [line.split('shard="')[1].split('"')[0]]
    }
    assert set(counts) == {"0/2", "1/2"} and sum(counts.values()) == 8
    status, html = await admin_get(app.admin.port, "/?refresh=0")
    assert status == 200 and 'id="shards"' in html and f">{ports[1]}<" in html


async def test_a_resource_moves_shards_only_with_its_name(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    """Renaming a service moves it to the new name's shard: removed from one, added to the
    other, in the same rebuild (istiod never holds both, nor neither, for longer than the
    two responses)."""
    write_services(static_file, estate(6))
    app = await start_app(make_settings(static_file, server=_server(shards=4)))
    clients = [await synced(connect, port) for port in app.shard_ports(4)]
    old, new = (
        "shop/svc-0",
        next(
            f"shop/renamed-{i}"
            for i in range(100)
            if shard_of(f"shop/renamed-{i}", 4) != shard_of("shop/svc-0", 4)
        ),
    )
    services = estate(6)
    services[0]["name"] = new.split("/")[1]
    write_services(static_file, services)

    def names(shard: int) -> set[str]:
        return {f"{r.namespace}/{r.name}" for r in clients[shard].latest("ServiceEntry")}

    await eventually(lambda: new in names(shard_of(new, 4)))
    await eventually(lambda: old not in names(shard_of(old, 4)))


async def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


async def test_dump_gathers_every_shard_or_one(
    static_file: Path,
    start_app: AppFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_services(static_file, estate(12))
    app = await start_app(make_settings(static_file, server=_server(shards=4)))
    await eventually(lambda: app.store.snapshot is not None)
    server = f"127.0.0.1:{app.port}"
    code, out, _ = await _main(capsys, "dump", "--server", server, "-o", "json", "--timeout", "5")
    assert code == 0
    names = [i["metadata"]["name"] for i in json.loads(out)["items"]]
    assert sorted(names) == sorted(f"svc-{i}" for i in range(12))
    # from a shard's port too: every stream says where the shards are
    shard_server = f"127.0.0.1:{app.shard_ports(4)[2]}"
    code, out, _ = await _main(capsys, "dump", "--server", shard_server, "-o", "json")
    assert code == 0 and len(json.loads(out)["items"]) == 12
    code, out, _ = await _main(capsys, "dump", "--server", server, "--shard", "2", "-o", "json")
    assert code == 0
    assert sorted(i["metadata"]["name"] for i in json.loads(out)["items"]) == sorted(
        f"svc-{i}" for i in range(12) if shard_of(f"shop/svc-{i}", 4) == 2
    )
    code, _, err = await _main(capsys, "dump", "--server", server, "--shard", "4")
    assert code == 2 and err.strip() == "dump: --shard 4: the server has shards 0 to 3"


async def test_dump_of_an_unsharded_server_refuses_a_shard_number(
    static_file: Path, start_app: AppFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    app = await start_app(make_settings(static_file))
    await eventually(lambda: app.store.snapshot is not None)
    server = f"127.0.0.1:{app.port}"
    code, out, _ = await _main(capsys, "dump", "--server", server, "-o", "json")
    assert code == 0 and len(json.loads(out)["items"]) == 2
    code, _, err = await _main(capsys, "dump", "--server", server, "--shard", "0")
    assert code == 2 and "serves no shards (server.shards is 1)" in err


def test_mesh_config_lists_one_source_per_shard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "mcpserver.yaml"
    config.write_text(
        yaml.safe_dump({"server": {"listen": "0.0.0.0:15051", "shards": 4}, "registries": []})
    )
    assert main(["mesh-config", "--config", str(config), "--address", "mcp.ns.svc"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == {
        "configSources": [
            *({"address": f"xds://mcp.ns.svc:{15451 + k}"} for k in range(4)),
            {"address": "k8s://"},
        ]
    }
    assert main(["mesh-config", "--config", str(config)]) == 2
    assert "give --address" in capsys.readouterr().err
    assert main(["mesh-config", "--config", str(config), "--address", "m", "--shards", "2"]) == 2
    assert "--shards 2: the config serves layouts 1, 4" in capsys.readouterr().err


def test_mesh_config_with_tls_inlines_the_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = make_certs(tmp_path)
    config = tmp_path / "mcpserver.yaml"
    server = {
        "listen": "127.0.0.1:15051",
        "shards": 2,
        "tls": {"cert_file": str(certs["server"]), "key_file": str(certs["server-key"])},
    }
    config.write_text(yaml.safe_dump({"server": server, "registries": []}))
    args = ["mesh-config", "--config", str(config), "--ca", str(certs["ca"]), "--without-k8s"]
    assert main(args) == 0
    sources = yaml.safe_load(capsys.readouterr().out)["configSources"]
    assert [s["address"] for s in sources] == ["xds://127.0.0.1:15251", "xds://127.0.0.1:15252"]
    for source in sources:
        assert source["tlsSettings"] == {
            "mode": "SIMPLE",
            "caCertificates": certs["ca"].read_text(),
        }


async def test_every_shard_port_speaks_tls_and_takes_a_renewed_certificate(
    static_file: Path, start_app: AppFactory
) -> None:
    old = make_certs(static_file.parent / "old")
    new = make_certs(static_file.parent / "new")
    live = static_file.parent / "live"
    live.mkdir()
    install(old["server"], old["server-key"], live)
    tls = {"cert_file": str(live / "server.pem"), "key_file": str(live / "server-key.pem")}
    app = await start_app(make_settings(static_file, server=_server(shards=2, tls=tls)))
    ports = [app.port, *app.shard_ports(2)]
    opened = [await synced_client(port, old["ca"]) for port in ports]
    certificates = app.xds.certificates
    assert certificates is not None
    install(new["server"], new["server-key"], live)
    await eventually(lambda: certificates.generation == 2, 15)
    for port in ports:  # one watcher feeds every port's credentials
        assert await handshake(port, new["ca"])
        assert not await handshake(port, old["ca"])
    for client, task, channel in opened:
        client.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await channel.close()
