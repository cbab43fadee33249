"""The Consul registry against a real Consul agent with real HTTP health checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from mcpserver.registry.view import Status
from mcpserver.xds.client import DecodedResource, IstiodLikeClient
from testbed.consulagent import ConsulAgent, Health
from testbed.ports import free_port
from testbed.xdsprobe import endpoints
from tests.certs import make_certs
from tests.conftest import AppFactory, eventually, past_next_rebuild, settings_for
from tests.integration.conftest import IstiodFactory, ServeFactory

HOST = "web.service.consul"


def register(agent: ConsulAgent, health: Health, ident: str, address: str, **extra: Any) -> None:
    service: dict[str, Any] = {
        "Name": "web",
        "ID": ident,
        "Address": address,
        "Port": 8080,
        "Tags": ["version=v1", "team|payments", "plain"],
        "Meta": {"protocol": "http", "zone": "z1"},
        "Weights": {"Passing": 3, "Warning": 1},
        "Check": {"HTTP": health.url(ident), "Interval": "1s", "Timeout": "1s"},
    }
    service.update(extra)
    agent.register(**service)


def consul_settings(
    tmp_path: Path, agent: ConsulAgent, top: dict[str, Any] | None = None, **registry: Any
) -> Any:
    """Settings with one Consul registry; `top` holds top-level settings (protection, ...)."""
    entry: dict[str, Any] = {
        "kind": "consul",
        "name": "consul",
        "address": agent.address,
        "namespace": "consul",
        "wait": "2s",
    }
    entry.update(registry)
    return settings_for(tmp_path, entry, **(top or {}))


def web_entry(client: IstiodLikeClient) -> DecodedResource | None:
    return next((r for r in client.latest("ServiceEntry") if r.name == HOST), None)


def require(entry: DecodedResource | None) -> DecodedResource:
    assert entry is not None, "web is not served"
    return entry


def addresses(client: IstiodLikeClient) -> list[str]:
    entry = web_entry(client)
    return [] if entry is None else sorted(e.address for e in entry.service_entry.endpoints)


async def test_register_tags_health_and_deregister(
    tmp_path: Path, consul: ConsulAgent, health: Health, serve: ServeFactory
) -> None:
    register(consul, health, "web-1", "10.20.0.1")
    register(consul, health, "web-2", "10.20.0.2", Port=8081)
    # the end deregisters the registry's only service: protection would hold that removal
    settings = consul_settings(tmp_path, consul, top={"protection": {"hold_empty": False}})
    app, client = await serve(settings)
    await client.wait_for(lambda c: addresses(c) == ["10.20.0.1", "10.20.0.2"], 30)
    entry = web_entry(client)
    assert entry is not None
    spec: Any = entry.spec
    assert [(p.name, p.number, p.protocol) for p in spec.ports] == [("http", 8080, "HTTP")]
    first, second = sorted(spec.endpoints, key=lambda e: e.address)
    assert dict(first.labels) == {
        "version": "v1",
        "team": "payments",
        "protocol": "http",
        "zone": "z1",
        "registry": "consul",
    }
    assert first.locality == "dc1/z1"
    assert first.weight == 3
    assert dict(second.ports) == {"http": 8081}
    assert entry.namespace == "consul"

    # tags change
    register(consul, health, "web-1", "10.20.0.1", Tags=["version=v2"])
    await client.wait_for(
        lambda c: any(
            e.labels.get("version") == "v2" for e in require(web_entry(c)).service_entry.endpoints
        ),
        30,
    )

    # a failing check takes the instance out; recovery brings it back
    health.healthy["web-2"] = False
    await client.wait_for(lambda c: addresses(c) == ["10.20.0.1"], 30)
    health.healthy["web-2"] = True
    await client.wait_for(lambda c: addresses(c) == ["10.20.0.1", "10.20.0.2"], 30)

    # deregistration removes the service entry
    consul.deregister("web-1")
    consul.deregister("web-2")
    await client.wait_for(lambda c: web_entry(c) is None, 30)
    assert app.registries[0].view().status is Status.READY


async def test_consul_restart_keeps_services_and_reconciles(
    tmp_path: Path, consul_bin: Path, health: Health, serve: ServeFactory
) -> None:
    agent = ConsulAgent(consul_bin, tmp_path / "consul-server", persistent=True)
    agent.start()
    try:
        register(agent, health, "web-1", "10.21.0.1")
        register(agent, health, "web-2", "10.21.0.2")
        app, client = await serve(consul_settings(tmp_path, agent))
        await client.wait_for(lambda c: addresses(c) == ["10.21.0.1", "10.21.0.2"], 60)
        responses = len(
            client.responses[next(u for u in client.type_urls if u.endswith("/ServiceEntry"))]
        )
        registry = app.registries[0]
        await asyncio.to_thread(agent.stop)
        await eventually(lambda: registry.view().status is Status.DEGRADED, within=30)
        assert addresses(client) == ["10.21.0.1", "10.21.0.2"]
        assert (
            len(client.responses[next(u for u in client.type_urls if u.endswith("/ServiceEntry"))])
            == responses
        )
        await asyncio.to_thread(agent.start)
        agent.deregister("web-1")
        register(agent, health, "web-3", "10.21.0.3")
        await client.wait_for(lambda c: addresses(c) == ["10.21.0.2", "10.21.0.3"], 60)
        await eventually(lambda: registry.view().status is Status.READY, within=30)
    finally:
        await asyncio.to_thread(agent.stop)


async def test_acl_token_from_environment(
    tmp_path: Path,
    consul_bin: Path,
    health: Health,
    start_app: AppFactory,
    monkeypatch: pytest.MonkeyPatch,
    serve: ServeFactory,
) -> None:
    agent = ConsulAgent(consul_bin, tmp_path / "consul-acl", acl_token="root-secret-token")
    agent.start()
    try:
        register(agent, health, "web-1", "10.22.0.1")
        monkeypatch.setenv("TEST_CONSUL_TOKEN", "root-secret-token")
        settings = consul_settings(tmp_path, agent, token={"env": "TEST_CONSUL_TOKEN"})
        _, client = await serve(settings)
        await client.wait_for(lambda c: addresses(c) == ["10.22.0.1"], 30)
        assert "root-secret-token" not in repr(settings)
        # without the token the agent refuses us: the registry says so and serves nothing
        blind = await start_app(consul_settings(tmp_path, agent))
        registry = blind.registries[0]
        await eventually(lambda: "Permission denied" in registry.view().detail, within=30)
        assert registry.view().status is Status.DEGRADED
        assert registry.view().services == ()
    finally:
        await asyncio.to_thread(agent.stop)


READ_ALL = (
    'service_prefix "" { policy = "read" } node_prefix "" { policy = "read" } '
    'agent_prefix "" { policy = "read" }'
)


async def test_results_filtered_by_acl_degrade_and_protection_holds_the_service(
    tmp_path: Path, consul_bin: Path, health: Health, serve: ServeFactory
) -> None:
    """Consul answers a token that may not read a service by leaving it out, and says so
    only in X-Consul-Results-Filtered-By-ACLs: the registry turns DEGRADED with that reason,
    the (empty) data still flows, and protection keeps the service served to istiod."""
    agent = ConsulAgent(consul_bin, tmp_path / "consul-acl", acl_token="root-secret-token")
    agent.start()
    try:
        register(agent, health, "web-1", "10.28.0.1")
        policy = json.loads(
            agent.request("PUT", "/v1/acl/policy", {"Name": "mcpserver", "Rules": READ_ALL})
        )
        token = json.loads(
            agent.request("PUT", "/v1/acl/token", {"Policies": [{"ID": policy["ID"]}]})
        )
        token_file = tmp_path / "consul-token"
        token_file.write_text(token["SecretID"])
        settings = consul_settings(tmp_path, agent, token={"file": str(token_file)})
        app, client = await serve(settings)
        await client.wait_for(lambda c: addresses(c) == ["10.28.0.1"], 30)
        registry = app.registries[0]
        assert registry.view().status is Status.READY

        def set_rules(rules: str) -> None:
            body = {"Name": "mcpserver", "Rules": rules}
            agent.request("PUT", f"/v1/acl/policy/{policy['ID']}", body)

        def metric(name: str, **labels: str) -> float:
            value = app.metrics.registry.get_sample_value(name, {"registry": "consul", **labels})
            return value or 0.0

        # the token loses service read: Consul filters every service out of its answers
        await asyncio.to_thread(
            set_rules,
            READ_ALL.replace(
                'service_prefix "" { policy = "read" }', 'service_prefix "" { policy = "deny" }'
            ),
        )
        await eventually(lambda: registry.view().status is Status.DEGRADED, within=30)
        assert "X-Consul-Results-Filtered-By-ACLs" in registry.view().detail
        assert "looks deleted" in registry.view().detail
        assert metric("mcpserver_registry_errors_total", kind="acl-filtered") >= 1
        # the filtered (empty) answer reached the pipeline, whose protection holds it
        await eventually(lambda: registry.view().services == (), within=30)
        await eventually(lambda: metric("mcpserver_registry_removal_held") == 1, within=30)
        assert addresses(client) == ["10.28.0.1"]

        # read access back: answers are no longer filtered, the registry recovers
        await asyncio.to_thread(set_rules, READ_ALL)
        await eventually(lambda: registry.view().status is Status.READY, within=30)
        await eventually(lambda: metric("mcpserver_registry_removal_held") == 0, within=30)
        assert addresses(client) == ["10.28.0.1"]
    finally:
        await asyncio.to_thread(agent.stop)


class Proxy:
    """A TCP proxy in front of Consul that the test can freeze: bytes stop flowing, and
    connections neither close nor answer (a dead connection that looks alive)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.frozen = asyncio.Event()
        self.thawed = asyncio.Event()
        self.thawed.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                await self.thawed.wait()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.thawed.wait()
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        for task in (self._pipe(reader, up_writer), self._pipe(up_reader, writer)):
            running = asyncio.create_task(task)
            self._tasks.add(running)
            running.add_done_callback(self._tasks.discard)

    def freeze(self) -> None:
        self.thawed.clear()

    def thaw(self) -> None:
        self.thawed.set()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server:
            self._server.close()


async def test_a_hanging_blocking_query_is_cut_and_retried(
    tmp_path: Path, consul: ConsulAgent, health: Health, serve: ServeFactory
) -> None:
    register(consul, health, "web-1", "10.23.0.1")
    proxy = Proxy(consul.http_port)
    await proxy.start()
    try:
        settings = consul_settings(tmp_path, consul, address=f"http://127.0.0.1:{proxy.port}")
        app, client = await serve(settings)
        await client.wait_for(lambda c: addresses(c) == ["10.23.0.1"], 30)
        registry: Any = app.registries[0]
        proxy.freeze()
        register(consul, health, "web-2", "10.23.0.2")  # a change the frozen link hides
        await eventually(lambda: registry.timeouts >= 1, within=30)
        timeouts = app.metrics.registry.get_sample_value(
            "mcpserver_registry_errors_total", {"registry": "consul", "kind": "timeout"}
        )
        assert timeouts is not None and timeouts >= 1
        await eventually(lambda: registry.view().status is Status.DEGRADED, within=30)
        assert addresses(client) == ["10.23.0.1"]  # nothing withdrawn meanwhile
        proxy.thaw()
        await client.wait_for(lambda c: addresses(c) == ["10.23.0.1", "10.23.0.2"], 60)
        await eventually(lambda: registry.view().status is Status.READY, within=30)
    finally:
        await proxy.stop()


async def test_filters_by_name_and_tag(
    tmp_path: Path, consul: ConsulAgent, health: Health, serve: ServeFactory
) -> None:
    register(consul, health, "web-1", "10.24.0.1", Tags=["mesh"])
    register(consul, health, "api-1", "10.24.0.2", Name="api", Tags=["mesh"])
    register(consul, health, "db-1", "10.24.0.3", Name="db", Tags=[])
    settings = consul_settings(
        tmp_path, consul, services=["web", "a*", "db"], exclude=["api"], tags=["mesh"]
    )
    _, client = await serve(settings)
    await client.wait_for(lambda c: addresses(c) == ["10.24.0.1"], 30)
    assert [r.name for r in client.latest("ServiceEntry")] == [HOST]


async def test_consul_services_and_health_reach_istiod(
    tmp_path: Path,
    consul: ConsulAgent,
    health: Health,
    start_app: AppFactory,
    start_istiod: IstiodFactory,
) -> None:
    register(consul, health, "web-1", "10.25.0.1")
    register(consul, health, "web-2", "10.25.0.2")
    app = await start_app(consul_settings(tmp_path, consul))
    istiod = await start_istiod(app.port)
    cluster = f"outbound|8080||{HOST}"

    async def istiod_endpoints() -> list[str]:
        return (await endpoints(istiod.grpc_port, cluster))[1]

    async def wait_for(expected: list[str]) -> None:
        async def served() -> bool:
            found = await istiod_endpoints()
            assert found == expected, found
            return True

        await eventually(served, within=60, every=0.2)

    await wait_for(["10.25.0.1:8080", "10.25.0.2:8080"])
    assert f"consul/{HOST}" in istiod.configs()
    health.healthy["web-1"] = False
    await wait_for(["10.25.0.2:8080"])


async def test_tls_to_consul_with_client_certificate(
    tmp_path: Path, consul_bin: Path, health: Health, start_app: AppFactory, serve: ServeFactory
) -> None:
    certs = make_certs(tmp_path / "certs")
    https_port = free_port()
    agent = ConsulAgent(
        consul_bin,
        tmp_path / "consul-tls",
        extra_hcl=(
            f"ports {{ https = {https_port} }}",
            f'tls {{ defaults {{ ca_file = "{certs["ca"]}" cert_file = "{certs["server"]}" '
            f'key_file = "{certs["server-key"]}" verify_incoming = true }} }}',
        ),
    )
    agent.start()
    try:
        register(agent, health, "web-1", "10.26.0.1")
        address = f"https://127.0.0.1:{https_port}"
        tls = {
            "ca_file": str(certs["ca"]),
            "cert_file": str(certs["client"]),
            "key_file": str(certs["client-key"]),
        }
        _, client = await serve(consul_settings(tmp_path, agent, address=address, tls=tls))
        await client.wait_for(lambda c: addresses(c) == ["10.26.0.1"], 30)
        # without a client certificate the agent refuses the handshake
        refused = await start_app(
            consul_settings(tmp_path, agent, address=address, tls={"ca_file": str(certs["ca"])})
        )
        await eventually(lambda: refused.registries[0].view().status is Status.DEGRADED, within=30)
        assert refused.registries[0].view().services == ()
    finally:
        await asyncio.to_thread(agent.stop)


async def test_several_datacenters(
    tmp_path: Path, consul_bin: Path, health: Health, serve: ServeFactory
) -> None:
    """Two federated datacenters; one registry serves both, with the datacenter as locality."""
    dc1 = ConsulAgent(consul_bin, tmp_path / "dc1")
    dc1.start()
    dc2 = ConsulAgent(
        consul_bin,
        tmp_path / "dc2",
        datacenter="dc2",
        extra_args=(f"-retry-join-wan=127.0.0.1:{dc1.serf_wan}",),
    )
    dc2.start()
    try:
        register(dc1, health, "web-1", "10.27.0.1", Meta={"protocol": "http"})
        register(dc2, health, "web-2", "10.27.1.1", Meta={"protocol": "http"})
        await eventually(
            lambda: '"dc2"' in dc1.request("GET", "/v1/catalog/datacenters"), within=60
        )
        settings = consul_settings(tmp_path, dc1, datacenters=["dc1", "dc2"])
        _, client = await serve(settings)
        await client.wait_for(lambda c: addresses(c) == ["10.27.0.1", "10.27.1.1"], 60)
        localities = {
            e.address: e.locality for e in require(web_entry(client)).service_entry.endpoints
        }
        assert localities == {"10.27.0.1": "dc1", "10.27.1.1": "dc2"}
    finally:
        await asyncio.to_thread(dc2.stop)
        await asyncio.to_thread(dc1.stop)


async def test_more_services_than_a_default_connection_pool(
    tmp_path: Path, consul: ConsulAgent, serve: ServeFactory
) -> None:
    """150 services: each holds a long-poll connection, so a 100-connection pool (aiohttp's
    default) would starve the rest of their first answer."""
    from bench.consul import register_all

    await asyncio.to_thread(register_all, consul, [f"svc-{i}" for i in range(150)], 2)
    _, client = await serve(consul_settings(tmp_path, consul, wait="30s"))
    names = {r.name for r in client.latest("ServiceEntry")}
    assert len([n for n in names if n.startswith("svc-")]) == 150


async def test_keep_when_empty_keeps_a_service_whose_instances_all_fail(
    tmp_path: Path, consul: ConsulAgent, health: Health, serve: ServeFactory
) -> None:
    """`keep_when_empty`: a service Consul still lists whose every instance fails its check
    stays served (same host, ports and address) without endpoints; deregistered, it goes."""
    register(consul, health, "web-1", "10.29.0.1")
    settings = consul_settings(
        tmp_path, consul, top={"protection": {"hold_empty": False}}, keep_when_empty=True
    )
    app, client = await serve(settings)
    await client.wait_for(lambda c: addresses(c) == ["10.29.0.1"], 30)
    before = require(web_entry(client)).service_entry

    health.healthy["web-1"] = False
    await client.wait_for(lambda c: web_entry(c) is not None and addresses(c) == [], 30)
    kept = require(web_entry(client)).service_entry
    assert list(kept.hosts) == list(before.hosts)
    assert list(kept.addresses) == list(before.addresses)
    assert [(p.name, p.number, p.protocol) for p in kept.ports] == [("http", 8080, "HTTP")]
    await past_next_rebuild(app)
    assert web_entry(client) is not None  # kept, not withdrawn a moment later

    health.healthy["web-1"] = True
    await client.wait_for(lambda c: addresses(c) == ["10.29.0.1"], 30)
    consul.deregister("web-1")
    await client.wait_for(lambda c: web_entry(c) is None, 30)
