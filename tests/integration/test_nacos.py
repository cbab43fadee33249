"""The Nacos registry against a real Nacos-protocol server (r-nacos), over gRPC (2.x/3.x) and
the HTTP v1 API (1.x), and on to a real istiod."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mcpserver.registry.base import Registry
from mcpserver.registry.view import Status
from mcpserver.xds.client import DecodedResource, IstiodLikeClient, decode_resource
from testbed.nacos import (
    ADMIN,
    Heartbeats,
    RNacos,
    ephemeral_instance,
    rnacos_binary,
)
from testbed.tlsproxy import TlsProxy
from testbed.xdsprobe import endpoints
from tests.certs import make_certs
from tests.conftest import (
    AppFactory,
    eventually,
    every_response_holds,
    past_next_rebuild,
    settings_for,
)
from tests.integration.conftest import IstiodFactory, ServeFactory, assert_kept_without_endpoints

HOST = "orders.default-group.public.nacos"


@pytest.fixture(scope="session")
def rnacos_bin() -> Path:
    return rnacos_binary()


@pytest.fixture
def nacos(rnacos_bin: Path, tmp_path: Path) -> Iterator[RNacos]:
    server = RNacos(rnacos_bin, tmp_path / "rnacos")
    server.start()
    yield server
    server.stop()


def nacos_settings(
    tmp_path: Path, server: RNacos, top: dict[str, Any] | None = None, **registry: Any
) -> Any:
    entry: dict[str, Any] = {
        "kind": "nacos",
        "name": "nacos",
        "address": server.address,
        "namespace": "nacos",
        "list_interval": "300ms",
        "poll_interval": "300ms",
    }
    entry.update(registry)
    # the tests end by removing a registry's only service, some right after a restart:
    # protection would hold that (the recovery grace is tested on its own)
    protection = {"hold_empty": False, "min_instances": 100, "recovery_grace": "0s"}
    top = {"protection": protection, **(top or {})}
    return settings_for(tmp_path, entry, **top)


def entry_for(client: IstiodLikeClient, host: str = HOST) -> DecodedResource | None:
    return next((r for r in client.latest("ServiceEntry") if r.name == host), None)


def addresses(client: IstiodLikeClient, host: str = HOST) -> list[str]:
    entry = entry_for(client, host)
    return [] if entry is None else sorted(e.address for e in entry.service_entry.endpoints)


def endpoint(client: IstiodLikeClient, address: str, host: str = HOST) -> Any:
    entry = entry_for(client, host)
    assert entry is not None, f"{host} is not served"
    return next(e for e in entry.service_entry.endpoints if e.address == address)


def degraded(registry: Registry) -> Callable[[], bool]:
    return lambda: registry.view().status is Status.DEGRADED


async def test_register_change_disable_deregister(
    tmp_path: Path, nacos: RNacos, serve: ServeFactory
) -> None:
    nacos.register("orders", "10.30.0.1", metadata={"version": "v1", "protocol": "http"})
    nacos.register("orders", "10.30.0.2", 8081, weight=2.5, cluster="east")
    app, client = await serve(nacos_settings(tmp_path, nacos))
    await client.wait_for(lambda c: addresses(c) == ["10.30.0.1", "10.30.0.2"], 30)
    entry = entry_for(client)
    assert entry is not None and entry.namespace == "nacos"
    spec = entry.service_entry
    assert list(spec.hosts) == [HOST]
    assert [(p.name, p.number, p.protocol) for p in spec.ports] == [("http", 8080, "HTTP")]
    first, second = sorted(spec.endpoints, key=lambda e: e.address)
    assert dict(first.labels) == {
        "version": "v1",
        "protocol": "http",
        "nacos-cluster": "DEFAULT",
        "registry": "nacos",
    }
    assert (first.weight, second.weight) == (100, 250)
    assert dict(second.ports) == {"http": 8081}
    assert second.labels["nacos-cluster"] == "east"

    # weight and metadata change: pushed
    nacos.register("orders", "10.30.0.1", weight=0.5, metadata={"version": "v2"})
    await client.wait_for(lambda c: endpoint(c, "10.30.0.1").labels.get("version") == "v2", 30)
    assert endpoint(client, "10.30.0.1").weight == 50

    # disabled: out
    nacos.register("orders", "10.30.0.2", 8081, weight=2.5, cluster="east", enabled=False)
    await client.wait_for(lambda c: addresses(c) == ["10.30.0.1"], 30)

    # deregistered: the service goes
    nacos.deregister("orders", "10.30.0.1")
    nacos.deregister("orders", "10.30.0.2", 8081, cluster="east")
    await client.wait_for(lambda c: entry_for(c) is None, 30)
    registry = app.registries[0]
    assert registry.view().status is Status.READY


async def test_an_unhealthy_instance_is_out_until_healthy_again(
    tmp_path: Path, nacos: RNacos, serve: ServeFactory
) -> None:
    beats = Heartbeats(nacos, "orders")
    try:
        await beats.add("10.30.1.1")
        await beats.add("10.30.1.2")
        # r-nacos pushes an instance's fall but not its recovery by heartbeat (Nacos pushes
        # both): the refresh, the safety net for a lost push, brings that
        settings = nacos_settings(tmp_path, nacos, refresh_interval="1s")
        _, client = await serve(settings)
        await client.wait_for(lambda c: addresses(c) == ["10.30.1.1", "10.30.1.2"], 30)
        # its heartbeats stop: Nacos marks it unhealthy, and it leaves the endpoints (one
        # stays healthy: see testbed/nacos.py)
        beats.beating.discard("10.30.1.2")
        await client.wait_for(lambda c: addresses(c) == ["10.30.1.1"], 30)
        beats.beating.add("10.30.1.2")
        await client.wait_for(lambda c: addresses(c) == ["10.30.1.1", "10.30.1.2"], 30)
    finally:
        await beats.close()


async def test_an_ephemeral_instance_goes_with_its_connection_and_new_services_are_polled(
    tmp_path: Path, nacos: RNacos, serve: ServeFactory
) -> None:
    nacos.register("orders", "10.31.0.1")
    _, client = await serve(nacos_settings(tmp_path, nacos))
    await client.wait_for(lambda c: addresses(c) == ["10.31.0.1"], 30)
    # a service that did not exist: found by the next service-list poll
    sdk = await ephemeral_instance(nacos, "payments", "10.31.0.9", 9090, protocol="grpc")
    try:
        host = "payments.default-group.public.nacos"
        await client.wait_for(lambda c: addresses(c, host) == ["10.31.0.9"], 30)
        entry = entry_for(client, host)
        assert entry is not None
        assert [(p.name, p.number) for p in entry.service_entry.ports] == [("grpc", 9090)]
    finally:
        await sdk.close()
    # Nacos removes an ephemeral instance when its client's connection closes
    await client.wait_for(lambda c: entry_for(c, host) is None, 30)
    assert addresses(client) == ["10.31.0.1"]


async def test_http_api_gives_the_same_resources_as_grpc(
    tmp_path: Path, nacos: RNacos, serve: ServeFactory
) -> None:
    nacos.register("orders", "10.32.0.1", metadata={"version": "v1"})
    nacos.register("orders", "10.32.0.2", 8081, weight=3, cluster="east")
    nacos.register("shipping", "10.32.0.7", 7000, metadata={"protocol": "tcp"}, group="LOGISTICS")
    groups = ["DEFAULT_GROUP", "LOGISTICS"]
    (tmp_path / "grpc").mkdir()
    (tmp_path / "http").mkdir()
    # every group (the catalog API finds them) over gRPC, the two named over HTTP
    _, over_grpc = await serve(nacos_settings(tmp_path / "grpc", nacos, groups=["*"]))
    _, over_http = await serve(nacos_settings(tmp_path / "http", nacos, groups=groups, api="http"))

    def specs(client: IstiodLikeClient) -> dict[str, bytes]:
        return {
            f"{r.namespace}/{r.name}": r.spec.SerializeToString(deterministic=True)
            for r in client.latest("ServiceEntry")
        }

    await over_grpc.wait_for(lambda c: len(specs(c)) == 2, 30)
    await over_http.wait_for(lambda c: len(specs(c)) == 2, 30)
    assert specs(over_grpc) == specs(over_http)
    assert addresses(over_http) == ["10.32.0.1", "10.32.0.2"]
    shipping = entry_for(over_http, "shipping.logistics.public.nacos")
    assert shipping is not None
    assert [(p.name, p.number, p.protocol) for p in shipping.service_entry.ports] == [
        ("tcp", 7000, "TCP")
    ]
    assert shipping.service_entry.addresses  # a TCP service gets a VIP
    # a change reaches both
    nacos.deregister("orders", "10.32.0.1")
    for client in (over_grpc, over_http):
        await client.wait_for(lambda c: addresses(c) == ["10.32.0.2"], 30)


async def test_auth_on_with_login_and_refused_without(
    tmp_path: Path,
    rnacos_bin: Path,
    start_app: AppFactory,
    monkeypatch: pytest.MonkeyPatch,
    serve: ServeFactory,
) -> None:
    server = RNacos(rnacos_bin, tmp_path / "rnacos-auth", auth=True)
    server.start()
    try:
        server.register("orders", "10.33.0.1")
        monkeypatch.setenv("TEST_NACOS_PASSWORD", ADMIN[1])
        auth = {"username": ADMIN[0], "password": {"env": "TEST_NACOS_PASSWORD"}}
        (tmp_path / "a").mkdir()
        app, client = await serve(nacos_settings(tmp_path / "a", server, auth=auth))
        await client.wait_for(lambda c: addresses(c) == ["10.33.0.1"], 30)
        server.register("orders", "10.33.0.2")
        await client.wait_for(lambda c: addresses(c) == ["10.33.0.1", "10.33.0.2"], 30)
        # the HTTP API with the same login
        (tmp_path / "h").mkdir()
        _, over_http = await serve(nacos_settings(tmp_path / "h", server, auth=auth, api="http"))
        await over_http.wait_for(lambda c: addresses(c) == ["10.33.0.1", "10.33.0.2"], 30)

        # without credentials, or with a wrong password: degraded, saying why, nothing served
        (tmp_path / "b").mkdir()
        blind = await start_app(nacos_settings(tmp_path / "b", server))
        monkeypatch.setenv("TEST_NACOS_WRONG", "not-the-password")
        (tmp_path / "c").mkdir()
        wrong = await start_app(
            nacos_settings(
                tmp_path / "c",
                server,
                auth={"username": ADMIN[0], "password": {"env": "TEST_NACOS_WRONG"}},
            )
        )
        for refused in (blind.registries[0], wrong.registries[0]):
            await eventually(degraded(refused), within=30)
            assert refused.view().services == ()
            assert not refused.view().synced
        assert "login" in wrong.registries[0].view().detail
        assert "not-the-password" not in wrong.registries[0].view().detail
        errors = wrong.metrics.registry.get_sample_value(
            "mcpserver_registry_errors_total", {"registry": "nacos", "kind": "unauthorized"}
        )
        assert (errors or 0) >= 1
        assert app.registries[0].view().status is Status.READY
    finally:
        server.stop()


async def test_server_restart_keeps_the_view_then_reconciles(
    tmp_path: Path, nacos: RNacos, serve: ServeFactory
) -> None:
    nacos.register("orders", "10.34.0.1")
    nacos.register("orders", "10.34.0.2")
    app, client = await serve(nacos_settings(tmp_path, nacos))
    await client.wait_for(lambda c: addresses(c) == ["10.34.0.1", "10.34.0.2"], 30)
    registry = app.registries[0]
    se_url = next(u for u in client.type_urls if u.endswith("/ServiceEntry"))
    responses = len(client.responses[se_url])
    await asyncio.to_thread(nacos.stop)
    await eventually(lambda: registry.view().status is Status.DEGRADED, within=30)
    assert str(nacos.grpc_port) in registry.view().detail  # it names the gRPC port
    assert addresses(client) == ["10.34.0.1", "10.34.0.2"]
    assert len(client.responses[se_url]) == responses  # nothing was sent while it was down
    await asyncio.to_thread(nacos.start)
    # the registry changed while we were away: r-nacos does not always keep instances
    # registered just before a stop, so the test states what exists now rather than rely
    # on its persistence (clients re-register after a restart too)
    nacos.deregister("orders", "10.34.0.1")
    nacos.register("orders", "10.34.0.2")
    nacos.register("orders", "10.34.0.3")
    await client.wait_for(lambda c: addresses(c) == ["10.34.0.2", "10.34.0.3"], 60)
    await eventually(lambda: registry.view().status is Status.READY, within=30)


async def test_a_malformed_instance_is_skipped_and_counted(
    tmp_path: Path, nacos: RNacos, serve: ServeFactory
) -> None:
    nacos.register("orders", "10.35.0.1")
    nacos.register("orders", "10.35.0.2", metadata={"dubbo.endpoints": "[{"})
    app, client = await serve(nacos_settings(tmp_path, nacos))
    await client.wait_for(lambda c: addresses(c) == ["10.35.0.1"], 30)
    problems = app.registries[0].view().problems
    assert [p.reason for p in problems] == ["bad-json"]
    assert "10.35.0.2" in problems[0].subject
    skipped = app.metrics.registry.get_sample_value(
        "mcpserver_registry_skipped_records_total", {"registry": "nacos", "reason": "bad-json"}
    )
    assert skipped == 1


async def test_nacos_services_reach_istiod(
    tmp_path: Path, nacos: RNacos, start_app: AppFactory, start_istiod: IstiodFactory
) -> None:
    nacos.register("orders", "10.36.0.1")
    nacos.register("orders", "10.36.0.2")
    app = await start_app(nacos_settings(tmp_path, nacos))
    istiod = await start_istiod(app.port)
    cluster = f"outbound|8080||{HOST}"

    async def wait_for(expected: list[str]) -> None:
        async def served() -> bool:
            found = (await endpoints(istiod.grpc_port, cluster))[1]
            assert found == expected, found
            return True

        await eventually(served, within=60, every=0.2)

    await wait_for(["10.36.0.1:8080", "10.36.0.2:8080"])
    assert f"nacos/{HOST}" in istiod.configs()
    assert HOST in istiod.hosts()
    nacos.register("orders", "10.36.0.2", enabled=False)
    await wait_for(["10.36.0.1:8080"])


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                raw, port = local.split(":")
                packed = bytes.fromhex(raw)
                if table == "tcp":
                    address = socket.inet_ntop(socket.AF_INET, packed[::-1])
                else:  # four little-endian 32-bit words
                    words = b"".join(packed[i : i + 4][::-1] for i in range(0, 16, 4))
                    address = socket.inet_ntop(socket.AF_INET6, words)
                found.add((address, int(port, 16)))
    return found


def test_the_fixture_server_binds_loopback_only(nacos: RNacos) -> None:
    """r-nacos listens on 127.0.0.1 only (RNACOS_SDK_HOST; its console is off)."""
    assert nacos.process is not None
    sockets = listening(nacos.process.pid)
    assert {port for _, port in sockets} >= {nacos.http_port, nacos.grpc_port}
    assert {address for address, _ in sockets} == {"127.0.0.1"}, sockets


@pytest.mark.parametrize("api", ["grpc", "http"])
async def test_tls_to_the_server(
    tmp_path: Path, nacos: RNacos, start_app: AppFactory, api: str, serve: ServeFactory
) -> None:
    """Over TLS (a terminating proxy in front of r-nacos, which serves none), verified
    against the configured CA, for both APIs; a CA that did not sign the server's certificate
    is refused and the registry says so."""
    certs = make_certs(tmp_path / "certs")
    http = TlsProxy(nacos.http_port, certs["server"], certs["server-key"])
    grpc_proxy = TlsProxy(nacos.grpc_port, certs["server"], certs["server-key"])
    await http.start()
    await grpc_proxy.start()
    try:
        nacos.register("orders", "10.36.0.1", metadata={"version": "v1"})
        tls: dict[str, Any] = {
            "address": f"https://127.0.0.1:{http.port}",
            "grpc_port": grpc_proxy.port,
            "tls": {"ca_file": str(certs["ca"])},
            "api": api,
        }
        (tmp_path / "good").mkdir()
        _, client = await serve(nacos_settings(tmp_path / "good", nacos, **tls))
        await client.wait_for(lambda c: addresses(c) == ["10.36.0.1"], 30)
        assert (grpc_proxy if api == "grpc" else http).connections > 0  # it went through TLS
        nacos.register("orders", "10.36.0.2")
        await client.wait_for(lambda c: addresses(c) == ["10.36.0.1", "10.36.0.2"], 30)

        # a CA that did not sign the server's certificate: nothing served, the reason shown
        other = make_certs(tmp_path / "other")
        (tmp_path / "bad").mkdir()
        wrong: dict[str, Any] = {**tls, "tls": {"ca_file": str(other["ca"])}}
        bad = await start_app(nacos_settings(tmp_path / "bad", nacos, **wrong))
        (registry,) = bad.registries
        await eventually(degraded(registry), within=30)
        assert not registry.view().synced
        detail = registry.view().detail.lower()
        assert "certificate" in detail or "ssl" in detail, detail
    finally:
        await http.stop()
        await grpc_proxy.stop()


async def test_every_namespace_followed_as_they_come_and_go(
    tmp_path: Path, nacos: RNacos, caplog: pytest.LogCaptureFixture, serve: ServeFactory
) -> None:
    """namespaces: ["*"] follows every namespace the server lists: one created later is
    followed with its services, one deleted is no longer followed."""
    caplog.set_level(logging.INFO, logger="mcpserver.registry.nacos")
    nacos.register("orders", "10.37.0.1")
    settings = nacos_settings(tmp_path, nacos, namespaces=["*"])
    app, client = await serve(settings)
    await client.wait_for(lambda c: addresses(c) == ["10.37.0.1"], 30)
    assert app.registries[0].view().synced

    await namespaces(nacos, "POST", customNamespaceId="dev", namespaceName="dev")
    nacos.register("billing", "10.37.0.9", namespace="dev")
    billing = "billing.default-group.dev.nacos"
    await client.wait_for(lambda c: addresses(c, billing) == ["10.37.0.9"], 30)

    # a deleted namespace is no longer followed (r-nacos deletes only empty namespaces)
    await namespaces(nacos, "POST", customNamespaceId="staging", namespaceName="staging")
    await eventually(lambda: "staging" in following(caplog, "following namespace"), 30)
    await namespaces(nacos, "DELETE", namespaceId="staging")
    await eventually(lambda: "staging" in following(caplog, "namespace gone"), 30)
    assert addresses(client) == ["10.37.0.1"]  # the others stay
    assert addresses(client, billing) == ["10.37.0.9"]


def following(caplog: pytest.LogCaptureFixture, what: str) -> set[str]:
    """Namespaces named in the registry's log lines that start with `what`."""
    return {
        r.getMessage().rpartition("namespace=")[2]
        for r in caplog.records
        if r.getMessage().startswith(what)
    }


async def namespaces(server: RNacos, method: str, **form: str) -> None:
    """Nacos' console API for namespaces, which takes a form body. r-nacos writes namespaces
    through its raft log and answers 500 now and then while that settles (seen in CI):
    asked again until it takes the change, for up to 20 s."""

    def change() -> bool:
        request = urllib.request.Request(
            f"{server.address}/nacos/v1/console/namespaces",
            data=urllib.parse.urlencode(form).encode(),
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                answer = reply.read().strip()
        except urllib.error.HTTPError as err:
            body = err.read().decode(errors="replace")[:500]
            failed = AssertionError(f"{method} {form}: HTTP {err.code}: {body}")
            if err.code != 500:
                raise RuntimeError(failed) from err  # not retried
            raise failed from err  # retried until the deadline
        if answer not in (b"true", b"ok"):
            raise RuntimeError("namespace not changed")
        return True

    await eventually(lambda: asyncio.to_thread(change), within=20, every=0.2)


def test_every_namespace_stands_alone(tmp_path: Path, nacos: RNacos) -> None:
    with pytest.raises(Exception, match="stands alone"):
        nacos_settings(tmp_path, nacos, namespaces=["*", "public"])


BENCH = [sys.executable, "-m", "bench.nacos"]


def test_the_nacos_benchmark_runs(rnacos_bin: Path) -> None:
    """bench/nacos.py (issue 13's bench case) at a tiny scale, so it cannot rot: the whole
    estate is served and both latencies are measured."""
    done = subprocess.run(
        [*BENCH, "--services", "20", "--instances", "2", "--changes", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["served_services"], result["served_endpoints"]) == (20, 40)
    assert result["baseline_instances"] == 40
    assert result["first_view_seconds"] > 0 and result["change_latency_median_ms"] > 0


@pytest.mark.parametrize("api", ["grpc", "http"])
async def test_keep_when_empty_keeps_a_listed_service_without_served_instances(
    tmp_path: Path, nacos: RNacos, serve: ServeFactory, api: str
) -> None:
    """`keep_when_empty`: a Nacos service still listed whose every instance is out (here
    disabled) stays served (same host, ports and address) without endpoints; when one is
    back, so are its endpoints."""
    nacos.register("orders", "10.38.0.1", metadata={"protocol": "http"})
    app, client = await serve(nacos_settings(tmp_path, nacos, api=api, keep_when_empty=True))
    await client.wait_for(lambda c: addresses(c) == ["10.38.0.1"], 30)
    before = entry_for(client)
    assert before is not None

    nacos.register("orders", "10.38.0.1", metadata={"protocol": "http"}, enabled=False)
    await client.wait_for(lambda c: entry_for(c) is not None and addresses(c) == [], 30)
    assert_kept_without_endpoints(before, entry_for(client))
    await past_next_rebuild(app)
    assert entry_for(client) is not None  # kept, not withdrawn a moment later

    nacos.register("orders", "10.38.0.1", metadata={"protocol": "http"})
    await client.wait_for(lambda c: addresses(c) == ["10.38.0.1"], 30)


async def test_a_restart_withdraws_nothing_whose_client_has_not_registered_again(
    tmp_path: Path, nacos: RNacos, serve: ServeFactory
) -> None:
    """Issue 27, the official Nacos case on r-nacos: restarted, the server has lost every
    ephemeral instance; mcpserver reconnects and re-lists at once, before the client of one
    service (3 of 8 instances, under max_removed_share) registers again. The reconnect is a
    recovery: that service is held for the recovery grace (Nacos' 30 s default) and never
    withdrawn; its client's return ends the hold."""
    late = "late.default-group.public.nacos"
    for i in range(5):
        nacos.register("steady", f"10.39.0.{i + 1}")  # persistent: kept across the restart
    clients = [await ephemeral_instance(nacos, "late", f"10.39.1.{i + 1}") for i in range(3)]
    top: dict[str, Any] = {
        "protection": {}
    }  # protection as deployed: 50%, min 5, Nacos' grace 30 s
    app, client = await serve(nacos_settings(tmp_path, nacos, top=top))
    three = ["10.39.1.1", "10.39.1.2", "10.39.1.3"]
    await client.wait_for(lambda c: addresses(c, late) == three, 30)
    registry = app.registries[0]
    await asyncio.to_thread(nacos.stop)
    for connection in clients:  # the late client lost its connection with the server
        await connection.close()
    await eventually(degraded(registry), within=30)
    await asyncio.to_thread(nacos.start)

    def relisted_without_it() -> bool:
        view = registry.view()
        return view.recovered is not None and late not in {
            h for s in view.services for h in s.hosts
        }

    await eventually(relisted_without_it, within=60)
    await past_next_rebuild(app)
    (state,) = app.pipeline.registry_states()
    assert state.hold is not None and state.hold.cause == "recovery"
    assert "reconnected to Nacos" in state.hold.reason
    assert addresses(client, late) == three  # held, not withdrawn
    # the client comes back and registers again: nothing held any more
    clients = [await ephemeral_instance(nacos, "late", address) for address in three]
    try:
        await eventually(lambda: app.pipeline.registry_states()[0].hold is None, within=30)
        await past_next_rebuild(app)
        se_url = next(u for u in client.type_urls if u.endswith("/ServiceEntry"))
        for response in client.responses[se_url]:  # never a set without them
            entry = next(
                (r for r in map(decode_resource, response.resources) if r.name == late), None
            )
            assert entry is not None and len(entry.service_entry.endpoints) == 3
    finally:
        for connection in clients:
            await connection.close()


# ---------------------------------------------------------------- clusters and edges


async def test_addresses_fail_over_and_rotate(
    tmp_path: Path, rnacos_bin: Path, serve: ServeFactory
) -> None:
    """Two servers (a cluster's, holding the same instances), the first one down at the
    start: served from the second; the second stopped: on to the first again, nothing
    withdrawn on the way, and a change made on it flows."""
    first = RNacos(rnacos_bin, tmp_path / "first")
    second = RNacos(rnacos_bin, tmp_path / "second")
    try:
        for server in (first, second):
            server.start()
            server.register("orders", "10.40.0.1")
            server.register("orders", "10.40.0.2")
        await asyncio.to_thread(first.stop)
        settings = nacos_settings(
            tmp_path, first, address=None, addresses=[first.address, second.address]
        )
        app, client = await serve(settings)
        await client.wait_for(lambda c: addresses(c) == ["10.40.0.1", "10.40.0.2"], 30)
        registry = app.registries[0]
        await eventually(lambda: registry.view().status is Status.READY, within=30)

        await asyncio.to_thread(first.start)
        first.register("orders", "10.40.0.1")
        first.register("orders", "10.40.0.2")
        await asyncio.to_thread(second.stop)
        first.register("orders", "10.40.0.3")  # only the first server has it
        await client.wait_for(lambda c: addresses(c) == ["10.40.0.1", "10.40.0.2", "10.40.0.3"], 60)
        await eventually(lambda: registry.view().status is Status.READY, within=30)
        await past_next_rebuild(app)
        every_response_holds(client, HOST, ["10.40.0.1", "10.40.0.2"])
    finally:
        first.stop()
        second.stop()


async def test_a_refused_login_backs_off_and_is_shown_once(
    tmp_path: Path,
    rnacos_bin: Path,
    start_app: AppFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong password: logins back off (0.5 s doubling, jittered; not once a second for
    ever), one WARNING, the reason shown."""
    server = RNacos(rnacos_bin, tmp_path / "rnacos-auth", auth=True)
    server.start()
    try:
        monkeypatch.setenv("TEST_NACOS_WRONG", "not-the-password")
        auth = {"username": ADMIN[0], "password": {"env": "TEST_NACOS_WRONG"}}
        app = await start_app(nacos_settings(tmp_path, server, auth=auth))
        registry = app.registries[0]
        await eventually(degraded(registry), within=30)

        def refused() -> float:
            value = app.metrics.registry.get_sample_value(
                "mcpserver_registry_errors_total", {"registry": "nacos", "kind": "unauthorized"}
            )
            return value or 0

        began = refused()
        await asyncio.sleep(8)  # the window the logins are counted in
        assert refused() - began <= 5  # 36 in 28 s before
        assert registry.view().detail.startswith(
            f"namespace public: login as 'admin' at {server.address}/nacos/v1/auth/login "
            "refused: HTTP 403"
        )
        assert caplog.text.count("registry degraded registry=nacos") == 1
        assert "still degraded" not in caplog.text
    finally:
        server.stop()


async def test_dubbo_categories_other_than_providers_are_left_out_silently(
    tmp_path: Path, nacos: RNacos, serve: ServeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Dubbo registers consumers (at port 0) and may hold routers and configurators beside
    its providers: none of them is a service, a problem or a log line."""
    iface = "org.example.DemoService"
    meta = {"interface": iface, "version": "1.0.0", "protocol": "dubbo"}
    nacos.register(
        f"providers:{iface}:1.0.0:", "10.41.0.1", 20880, metadata=meta | {"side": "provider"}
    )
    nacos.register(
        f"consumers:{iface}:1.0.0:", "10.41.0.9", 0, metadata=meta | {"side": "consumer"}
    )
    nacos.register(f"consumers:{iface}::", "10.41.0.8", 20881, metadata=meta | {"side": "consumer"})
    nacos.register(f"routers:{iface}::", "10.41.0.7", 1, metadata={"category": "routers"})
    nacos.register(f"configurators:{iface}::", "10.41.0.6", 1, metadata={})
    app, client = await serve(nacos_settings(tmp_path, nacos))
    host = "org.example.demoservice"
    await client.wait_for(lambda c: addresses(c, host) == ["10.41.0.1"], 30)
    await past_next_rebuild(app)
    assert [r.name for r in client.latest("ServiceEntry")] == [host]
    assert app.registries[0].view().problems == ()
    assert "skipped record" not in caplog.text


async def test_an_allow_list_keeps_only_the_keys_it_names(
    tmp_path: Path, nacos: RNacos, serve: ServeFactory
) -> None:
    meta = {"version": "v1", "team": "pay", "build.commit": "0a1b2c"}
    nacos.register("orders", "10.42.0.1", metadata=meta)
    nacos.register("orders", "10.42.0.2", metadata=meta)
    settings = nacos_settings(tmp_path, nacos, labels={"allow": ["version", "nacos-*"]})
    app, client = await serve(settings)
    await client.wait_for(lambda c: addresses(c) == ["10.42.0.1", "10.42.0.2"], 30)
    assert dict(endpoint(client, "10.42.0.1").labels) == {
        "version": "v1",
        "nacos-cluster": "DEFAULT",
        "registry": "nacos",
    }
    dropped = app.metrics.registry.get_sample_value(
        "mcpserver_registry_dropped_labels_total", {"registry": "nacos", "reason": "not-allowed"}
    )
    assert dropped == 2  # team and build.commit, once each for both instances
