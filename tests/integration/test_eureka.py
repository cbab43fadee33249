"""The Eureka registry against a real Spring Cloud Netflix Eureka server (tests/integration/
eureka: `@EnableEurekaServer`, built with Maven), and on to a real istiod.

Five servers start together once per module (JVM start-up dominates this file's time): the
shared one (basic auth on; each test keeps to its own apps through `apps`), one with a
300 ms delta window (a missed delta, a restart), two peers that replicate to each other, and
one whose registry holds only what its test registers (Eureka's eviction limit is a share
of the whole registry).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mcpserver.app import App
from mcpserver.registry.eureka.watcher import EurekaRegistry
from mcpserver.registry.view import Status
from mcpserver.xds.client import DecodedResource, IstiodLikeClient, decode_resource
from mcpserver.xds.typeurls import served_kind
from testbed.eureka import USER, EurekaServer, eureka_server_jar
from testbed.tlsproxy import TlsProxy
from testbed.xdsprobe import endpoints
from tests.certs import make_certs
from tests.conftest import AppFactory, eventually, past_next_rebuild, settings_for
from tests.integration.conftest import IstiodFactory, ServeFactory, assert_kept_without_endpoints
from tests.integration.test_nacos import listening

AUTH = {"mcpserver.test.basic-auth": "true"}
WINDOW = {
    # changes leave the delta queue after 300 ms (Eureka: 3 min), checked every 100 ms
    "eureka.server.retention-time-in-m-s-in-delta-queue": "300",
    "eureka.server.delta-retention-timer-interval-in-ms": "100",
}


@dataclass
class Servers:
    shared: EurekaServer  # basic auth on
    window: EurekaServer  # a 300 ms delta window
    peer_a: EurekaServer
    peer_b: EurekaServer
    eviction: EurekaServer  # one test's instances only


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    jar = eureka_server_jar()
    root = tmp_path_factory.mktemp("eureka")
    peer_a = EurekaServer(jar, root / "peer-a")
    peer_b = EurekaServer(jar, root / "peer-b")
    # each peer replicates to the other (Eureka's "peer aware" registry)
    peer_a.properties["eureka.client.service-url.defaultZone"] = peer_b.url + "/"
    peer_b.properties["eureka.client.service-url.defaultZone"] = peer_a.url + "/"
    started = Servers(
        shared=EurekaServer(jar, root / "shared", dict(AUTH)),
        window=EurekaServer(jar, root / "window", dict(WINDOW)),
        peer_a=peer_a,
        peer_b=peer_b,
        eviction=EurekaServer(jar, root / "eviction"),
    )
    every = (started.shared, started.window, peer_a, peer_b, started.eviction)
    try:
        for server in every:
            server.launch()
        for server in every:
            server.wait_ready()
        yield started
    finally:
        for server in every:
            server.stop()


def eureka_settings(
    tmp_path: Path,
    urls: list[str],
    apps: list[str],
    top: dict[str, Any] | None = None,
    **registry: Any,
) -> Any:
    entry: dict[str, Any] = {
        "kind": "eureka",
        "name": "eureka",
        "servers": urls,
        "apps": apps,
        "namespace": "eureka",
        "poll_interval": "300ms",
    }
    entry.update(registry)
    # most tests end by removing their app's last instance: protection would hold that
    top = {"protection": {"hold_empty": False, "min_instances": 100}, **(top or {})}
    return settings_for(tmp_path, entry, **top)


def with_auth(**registry: Any) -> dict[str, Any]:
    return {"auth": {"username": USER[0], "password": {"value": USER[1]}}, **registry}


def entry_for(client: IstiodLikeClient, host: str) -> DecodedResource | None:
    return entry_in(client.latest("ServiceEntry"), host)


def entry_in(entries: Iterable[DecodedResource], host: str) -> DecodedResource | None:
    return next((r for r in entries if r.name == host), None)


def addresses_in(entry: DecodedResource | None) -> list[str]:
    return [] if entry is None else sorted(e.address for e in entry.service_entry.endpoints)


def of_host(client: IstiodLikeClient, host: str) -> list[DecodedResource]:
    """Every ServiceEntry serving `host`: its own, and the parts of it with fewer ports
    (instances with a port disabled)."""
    return [r for r in client.latest("ServiceEntry") if host in r.service_entry.hosts]


def addresses(client: IstiodLikeClient, host: str) -> list[str]:
    """The host's endpoints, whichever of its ServiceEntries holds them."""
    return sorted(e.address for r in of_host(client, host) for e in r.service_entry.endpoints)


def every_set(client: IstiodLikeClient, host: str) -> list[list[str]]:
    """The host's addresses in each ServiceEntry set the client was sent, oldest first."""
    return [
        addresses_in(entry_in(map(decode_resource, response.resources), host))
        for type_url, responses in client.responses.items()
        if served_kind(type_url) == "ServiceEntry"
        for response in responses
    ]


def endpoint(client: IstiodLikeClient, host: str, address: str) -> Any:
    entries = of_host(client, host)
    assert entries, f"{host} is not served"
    return next(e for r in entries for e in r.service_entry.endpoints if e.address == address)


def registry_of(app: App) -> EurekaRegistry:
    registry = app.registries[0]
    assert isinstance(registry, EurekaRegistry)
    return registry


def degraded(registry: EurekaRegistry) -> Callable[[], bool]:
    return lambda: registry.view().status is Status.DEGRADED


def held(app: App) -> bool:
    return any(state.hold is not None for state in app.pipeline.registry_states())


class Heartbeats:
    """Instances kept alive as Eureka's Java client keeps them: a renewal every `period`, and
    a new registration when the server answers 404 (it restarted, or evicted us)."""

    def __init__(self, server: EurekaServer, period: float) -> None:
        self.server = server
        self.period = period
        self.instances: dict[str, dict[str, Any]] = {}  # id -> register() arguments
        self.renewed = 0
        self.registered = 0
        self.failures: list[str] = []  # answers a Java client would not expect, kept going
        self.paused = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, app: str, ip: str, **kwargs: Any) -> str:
        ident = self.server.register(app, ip, **kwargs)
        self.instances[ident] = {"app": app, "ip": ip, **kwargs}
        if not self._thread.is_alive():
            self._thread.start()
        return ident

    def _run(self) -> None:
        while not self._stop.wait(self.period):  # a heartbeat period, not a synchronisation
            if self.paused.is_set():
                continue
            for ident, args in list(self.instances.items()):
                try:
                    code = self.server.heartbeat(args["app"], ident)
                    if code == 404:
                        self.server.register(**args)
                        self.registered += 1
                    elif code == 200:
                        self.renewed += 1
                    else:
                        self.failures.append(f"{ident}: heartbeat answered {code}")
                except OSError:
                    pass  # the server is down: the next beat tries again
                except AssertionError as err:  # register() got another answer than 204
                    self.failures.append(f"{ident}: registration answered {err}")

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)


@pytest.fixture
def beats(servers: Servers) -> Iterator[Callable[[EurekaServer, float], Heartbeats]]:
    made: list[Heartbeats] = []

    def make(server: EurekaServer, period: float) -> Heartbeats:
        made.append(Heartbeats(server, period))
        return made[-1]

    yield make
    for heartbeats in made:
        heartbeats.close()


# ---------------------------------------------------------------------------- scenarios


def test_the_fixture_servers_bind_loopback_only(servers: Servers) -> None:
    for server in (servers.shared, servers.window, servers.peer_a, servers.peer_b):
        assert server.process is not None and server.process.poll() is None
        sockets = listening(server.process.pid)
        assert server.port in {port for _, port in sockets}
        # Java listens on an IPv6 socket bound to 127.0.0.1's mapped address
        assert {address.removeprefix("::ffff:") for address, _ in sockets} == {"127.0.0.1"}


async def test_register_status_metadata_and_delete_flow_by_delta(
    tmp_path: Path, servers: Servers, serve: ServeFactory
) -> None:
    eureka = servers.shared
    host = "orders.eureka"
    one = eureka.register(
        "orders", "10.40.0.1", metadata={"version": "v1", "zone": "zone-a", "weight": "3"}
    )
    two = eureka.register("orders", "10.40.0.2", 8081, secure_port=8443)
    starting = eureka.register("orders", "10.40.0.3", status="STARTING")
    settings = eureka_settings(tmp_path, [eureka.url], ["orders"], **with_auth(region="eu-west"))
    app, client = await serve(settings, within=60)
    # UP only: the STARTING instance is not an endpoint
    await client.wait_for(lambda c: addresses(c, host) == ["10.40.0.1", "10.40.0.2"], 30)
    entry = entry_for(client, host)
    assert entry is not None and entry.namespace == "eureka"
    spec = entry.service_entry
    assert list(spec.hosts) == [host]  # ORDERS, lower-cased
    assert [(p.name, p.number, p.protocol) for p in spec.ports] == [
        ("http", 8080, "HTTP"),
        ("https", 8443, "HTTPS"),
    ]
    assert dict(entry.labels)["eureka-app"] == "orders"
    first, second = endpoint(client, host, "10.40.0.1"), endpoint(client, host, "10.40.0.2")
    assert dict(first.labels) == {
        "version": "v1",
        "zone": "zone-a",
        "weight": "3",
        "registry": "eureka",
    }
    assert (first.weight, first.locality) == (3, "eu-west/zone-a")
    assert dict(second.ports) == {"http": 8081}

    # OUT_OF_SERVICE (a status override) and back
    eureka.set_status("orders", one, "OUT_OF_SERVICE")
    await client.wait_for(lambda c: addresses(c, host) == ["10.40.0.2"], 30)
    eureka.clear_status("orders", one)
    await client.wait_for(lambda c: addresses(c, host) == ["10.40.0.1", "10.40.0.2"], 30)

    # metadata changed: the client registers again with it
    eureka.register("orders", "10.40.0.1", metadata={"version": "v2", "zone": "zone-a"})
    await client.wait_for(lambda c: endpoint(c, host, "10.40.0.1").labels["version"] == "v2", 30)

    # DELETE (a cancel): out; the last one out takes the service
    eureka.deregister("orders", two)
    await client.wait_for(lambda c: addresses(c, host) == ["10.40.0.1"], 30)
    eureka.deregister("orders", one)
    eureka.deregister("orders", starting)
    await client.wait_for(lambda c: entry_for(c, host) is None, 30)

    # every change came by delta, and our hash always matched the server's
    registry = registry_of(app)
    assert registry.delta_fetches > 0
    assert (registry.full_fetches, registry.mismatches) == (1, 0)
    assert registry.view().status is Status.READY


async def test_heartbeats_keep_an_instance_and_lease_expiry_evicts_it(
    tmp_path: Path,
    servers: Servers,
    beats: Callable[[EurekaServer, float], Heartbeats],
    serve: ServeFactory,
) -> None:
    eureka = servers.shared
    host = "beating.eureka"
    heartbeats = beats(eureka, 0.3)
    heartbeats.add("beating", "10.41.0.1", lease=1)  # expires 2 s after its last renewal
    eureka.register("beating", "10.41.0.2")  # a 90 s lease: stays
    settings = eureka_settings(tmp_path, [eureka.url], ["beating"], **with_auth())
    _, client = await serve(settings, within=60)
    await client.wait_for(lambda c: addresses(c, host) == ["10.41.0.1", "10.41.0.2"], 30)
    # renewed for well past its lease and the 500 ms eviction timer: never evicted
    await eventually(lambda: heartbeats.renewed >= 12, within=60)
    assert heartbeats.registered == 0
    assert addresses(client, host) == ["10.41.0.1", "10.41.0.2"]
    # its client stops renewing: Eureka evicts it, and it leaves
    heartbeats.close()
    await client.wait_for(lambda c: addresses(c, host) == ["10.41.0.2"], 30)


async def test_an_instance_without_ip_is_skipped_and_its_app_kept_with_a_host_per_vip(
    tmp_path: Path, servers: Servers, serve: ServeFactory
) -> None:
    """higress#1322 dropped a whole application for one instance whose address was a host
    name; here that instance alone is skipped (and counted). `{vip}` renders one host per
    VIP of an instance's comma-separated vipAddress."""
    eureka = servers.shared
    eureka.register("legacy", "10.42.0.1", vip="legacy-api,legacy-web")
    eureka.register(
        "legacy", "legacy-2.example.internal", vip="legacy-api", host_name="legacy-2.example"
    )
    settings = eureka_settings(
        tmp_path, [eureka.url], ["legacy"], **with_auth(host_template="{vip}.vip.eureka")
    )
    app, client = await serve(settings, within=60)
    await client.wait_for(lambda c: addresses(c, "legacy-web.vip.eureka") == ["10.42.0.1"], 30)
    assert addresses(client, "legacy-api.vip.eureka") == ["10.42.0.1"]
    problems = registry_of(app).view().problems
    assert [p.reason for p in problems] == ["not-an-ip"]
    assert "legacy-2.example.internal" in problems[0].message
    skipped = app.metrics.registry.get_sample_value(
        "mcpserver_registry_skipped_records_total", {"registry": "eureka", "reason": "not-an-ip"}
    )
    assert skipped == 1


async def test_a_missed_delta_is_caught_by_the_hash_and_fetched_whole(
    tmp_path: Path, servers: Servers, serve: ServeFactory
) -> None:
    """A change that left the server's delta window before we polled (a client paused longer
    than the window: Eureka's is 3 minutes, this server's 300 ms) is missing from our merge;
    the hash tells, and a full fetch brings it."""
    eureka = servers.window
    host = "window.eureka"
    eureka.register("window", "10.43.0.1")
    settings = eureka_settings(tmp_path, [eureka.url], ["window"], poll_interval="2s")
    app, client = await serve(settings, within=60)
    await client.wait_for(lambda c: addresses(c, host) == ["10.43.0.1"], 30)
    registry = registry_of(app)
    fetched = registry.delta_fetches
    # right after a delta poll: the next one comes 2 s later, long after this change has
    # left the server's 300 ms delta window
    await eventually(lambda: registry.delta_fetches > fetched, within=30)
    eureka.register("window", "10.43.0.2")
    await client.wait_for(lambda c: addresses(c, host) == ["10.43.0.1", "10.43.0.2"], 30)
    assert registry.mismatches >= 1
    assert registry.full_fetches >= 2


async def test_a_server_restarted_empty_does_not_withdraw_our_services(
    tmp_path: Path,
    servers: Servers,
    beats: Callable[[EurekaServer, float], Heartbeats],
    serve: ServeFactory,
) -> None:
    """Eureka keeps its registry in memory: restarted, it answers an empty registry until
    its clients' next heartbeats (404) make them register again. Protection against mass
    removal holds our view meanwhile; the clients' return releases it, once nearly all are
    back: istiod is never sent a set without either of the two."""
    eureka = servers.window
    host = "restart.eureka"
    heartbeats = beats(eureka, 0.3)
    heartbeats.add("restart", "10.44.0.1")
    heartbeats.add("restart", "10.44.0.2")
    # protection as deployed (an empty registry is held), for as long as the test needs
    top = {"protection": {"hold_for": "10m"}}
    settings = eureka_settings(tmp_path, [eureka.url], ["restart", "newcomer"], top=top)
    app, client = await serve(settings, within=60)
    await client.wait_for(lambda c: addresses(c, host) == ["10.44.0.1", "10.44.0.2"], 30)
    registry = registry_of(app)
    heartbeats.paused.set()  # the clients do not notice the restart yet
    await asyncio.to_thread(eureka.stop)
    await eventually(lambda: registry.view().status is Status.DEGRADED, within=30)
    assert eureka.url in registry.view().detail
    eureka.launch()  # on this thread: see EurekaServer.start
    await asyncio.to_thread(eureka.wait_ready)
    # the empty registry is fetched (the hash no longer matches) and held
    await eventually(lambda: registry.view().services == () and held(app), within=60)
    assert registry.view().status is Status.READY
    await past_next_rebuild(app)
    assert addresses(client, host) == ["10.44.0.1", "10.44.0.2"]  # istiod keeps them
    # One client registers again first, and mcpserver reads the registry with it alone (as
    # in CI, where a fetch fell between two registrations): half the instances missing is
    # under max_removed_share, not within release_share, so the hold stays.
    eureka.register("restart", "10.44.0.1")

    def one_back() -> bool:
        services = registry.view().services
        return len(services) == 1 and len(services[0].instances) == 1

    await eventually(one_back, within=60)
    await past_next_rebuild(app)
    assert held(app)
    # A new registration is not held back: served at once, beside everything held.
    eureka.register("newcomer", "10.44.1.1")
    await client.wait_for(lambda c: addresses(c, "newcomer.eureka") == ["10.44.1.1"], 60)
    assert held(app)
    assert addresses(client, host) == ["10.44.0.1", "10.44.0.2"]
    # The other's heartbeat gets 404 and it registers again: the hold is released.
    heartbeats.paused.clear()
    await eventually(lambda: heartbeats.registered >= 1, within=30)
    await eventually(lambda: not held(app), within=90)
    restart = next(s for s in registry.view().services if host in s.hosts)
    assert len(restart.instances) == 2
    await past_next_rebuild(app)
    both = ["10.44.0.1", "10.44.0.2"]
    sets = every_set(client, host)  # istiod was never sent a set without either
    assert sets[sets.index(both) :] == [both] * (len(sets) - sets.index(both))


async def test_two_peers_one_stopped_the_other_serves(
    tmp_path: Path, servers: Servers, serve: ServeFactory
) -> None:
    a, b = servers.peer_a, servers.peer_b
    host = "peered.eureka"
    a.register("peered", "10.45.0.1")

    def replicated() -> bool:
        apps = b.apps()["applications"]["application"]
        return any(app["name"] == "PEERED" for app in apps)

    await eventually(replicated, within=30)  # A replicated it to B
    settings = eureka_settings(tmp_path, [a.url, b.url], ["peered"])
    app, client = await serve(settings, within=60)
    await client.wait_for(lambda c: addresses(c, host) == ["10.45.0.1"], 30)
    registry = registry_of(app)
    assert registry.client is not None and registry.client.server == a.url
    await asyncio.to_thread(a.stop)
    b.register("peered", "10.45.0.2")
    await client.wait_for(lambda c: addresses(c, host) == ["10.45.0.1", "10.45.0.2"], 30)
    assert registry.client.server == b.url and registry.client.failovers == 1
    assert registry.view().status is Status.READY


async def test_basic_auth_and_tls(
    tmp_path: Path, servers: Servers, start_app: AppFactory, serve: ServeFactory
) -> None:
    """Through TLS (a terminating proxy in front of the server) verified against the CA,
    with basic auth; a wrong password, none, or a CA that did not sign the certificate:
    nothing served, degraded, saying why."""
    eureka = servers.shared
    host = "secure.eureka"
    certs = make_certs(tmp_path / "certs")
    proxy = TlsProxy(eureka.port, certs["server"], certs["server-key"])
    await proxy.start()
    try:
        eureka.register("secure", "10.46.0.1")
        url = f"https://127.0.0.1:{proxy.port}/eureka"
        tls = {"ca_file": str(certs["ca"])}
        (tmp_path / "good").mkdir()
        settings = eureka_settings(tmp_path / "good", [url], ["secure"], tls=tls, **with_auth())
        _, client = await serve(settings, within=60)
        await client.wait_for(lambda c: addresses(c, host) == ["10.46.0.1"], 30)
        assert proxy.connections > 0

        other = make_certs(tmp_path / "other")
        refused: list[App] = []
        cases: dict[str, dict[str, Any]] = {
            "wrong": {"tls": tls, "auth": {"username": USER[0], "password": {"value": "nope"}}},
            "none": {"tls": tls},
            "ca": {"tls": {"ca_file": str(other["ca"])}, **with_auth()},
        }
        for name, entry in cases.items():
            (tmp_path / name).mkdir()
            refused.append(
                await start_app(eureka_settings(tmp_path / name, [url], ["secure"], **entry))
            )
        for registry in map(registry_of, refused):
            await eventually(degraded(registry), within=30)
            assert registry.view().services == ()
            assert not registry.view().synced
        wrong, none, ca = (registry_of(one).view().detail for one in refused)
        assert "HTTP 401" in wrong and "nope" not in wrong
        assert "HTTP 401" in none
        assert "certificate" in ca.lower(), ca
        errors = refused[0].metrics.registry.get_sample_value(
            "mcpserver_registry_errors_total", {"registry": "eureka", "kind": "unauthorized"}
        )
        assert (errors or 0) >= 1
    finally:
        await proxy.stop()


async def test_a_disabled_port_is_never_an_endpoints_port_and_a_default_port_loses_a_tie(
    tmp_path: Path, servers: Servers, serve: ServeFactory
) -> None:
    """An instance registered with its non-secure port disabled (`port.@enabled=false`) gets
    only the https port (a part of the host with that port alone); an instance registered
    without a port (Eureka records 7001) does not win a 1-1 tie for the service port."""
    eureka = servers.shared
    eureka.register("payments", "10.48.0.1", secure_port=8443)
    eureka.register("payments", "10.48.0.2", port_enabled=False, secure_port=8443)
    eureka.register("ledger", "10.48.1.1", None)
    eureka.register("ledger", "10.48.1.2", 8080)
    settings = eureka_settings(tmp_path, [eureka.url], ["payments", "ledger"], **with_auth())
    app, client = await serve(settings, within=60)
    await client.wait_for(
        lambda c: addresses(c, "payments.eureka") == ["10.48.0.1", "10.48.0.2"], 30
    )
    await client.wait_for(lambda c: addresses(c, "ledger.eureka") == ["10.48.1.1", "10.48.1.2"], 30)
    entries = {r.name: r.service_entry for r in of_host(client, "payments.eureka")}
    assert sorted(entries) == ["payments.eureka", "payments.eureka.only-https"]
    main, secure = entries["payments.eureka"], entries["payments.eureka.only-https"]
    assert [(p.name, p.number) for p in main.ports] == [("http", 8080), ("https", 8443)]
    assert [e.address for e in main.endpoints] == ["10.48.0.1"]
    assert list(secure.hosts) == ["payments.eureka"]
    assert [(p.name, p.number) for p in secure.ports] == [("https", 8443)]
    assert [e.address for e in secure.endpoints] == ["10.48.0.2"]
    assert app.registries[0].view().problems == ()
    ledger = entry_for(client, "ledger.eureka")
    assert ledger is not None
    assert [(p.name, p.number) for p in ledger.service_entry.ports] == [("http", 8080)]
    assert dict(endpoint(client, "ledger.eureka", "10.48.1.1").ports) == {"http": 7001}
    for ident in ("10.48.0.1:payments:8080", "10.48.0.2:payments:8080"):
        eureka.deregister("payments", ident)
    for ident in ("10.48.1.1:ledger:None", "10.48.1.2:ledger:8080"):
        eureka.deregister("ledger", ident)


async def test_500_metadata_keys_are_bounded_and_each_dropped_key_counted_once(
    tmp_path: Path, servers: Servers, serve: ServeFactory
) -> None:
    """An instance with 500 metadata keys: 32 labels (version among them, though it sorts
    last), the other 469 keys counted once each, however many instances carry them."""
    eureka = servers.shared
    meta = {f"key{i:03d}": "x" for i in range(500)} | {"version": "v7"}
    one = eureka.register("inventory", "10.49.0.1", metadata=meta)
    settings = eureka_settings(tmp_path, [eureka.url], ["inventory"], **with_auth())
    app, client = await serve(settings, within=60)
    host = "inventory.eureka"
    await client.wait_for(lambda c: addresses(c, host) == ["10.49.0.1"], 30)
    labels = dict(endpoint(client, host, "10.49.0.1").labels)
    assert len(labels) == 33 and labels["version"] == "v7" and labels["registry"] == "eureka"

    def dropped() -> float:
        value = app.metrics.registry.get_sample_value(
            "mcpserver_registry_dropped_labels_total", {"registry": "eureka", "reason": "too-many"}
        )
        return value or 0

    assert dropped() == 469
    two = eureka.register("inventory", "10.49.0.2", metadata=meta)
    await client.wait_for(lambda c: addresses(c, host) == ["10.49.0.1", "10.49.0.2"], 30)
    assert dropped() == 469
    for ident in (one, two):
        eureka.deregister("inventory", ident)


async def test_eureka_services_reach_istiod(
    tmp_path: Path, servers: Servers, start_app: AppFactory, start_istiod: IstiodFactory
) -> None:
    eureka = servers.shared
    host = "reviews.eureka"
    eureka.register("reviews", "10.47.0.1")
    two = eureka.register("reviews", "10.47.0.2")
    app = await start_app(eureka_settings(tmp_path, [eureka.url], ["reviews"], **with_auth()))
    istiod = await start_istiod(app.port)
    cluster = f"outbound|8080||{host}"

    async def wait_for(expected: list[str], cluster: str = cluster) -> None:
        async def served() -> bool:
            found = (await endpoints(istiod.grpc_port, cluster))[1]
            assert found == expected, found
            return True

        await eventually(served, within=60, every=0.2)

    await wait_for(["10.47.0.1:8080", "10.47.0.2:8080"])
    assert f"eureka/{host}" in istiod.configs()
    assert host in istiod.hosts()
    eureka.set_status("reviews", two, "OUT_OF_SERVICE")
    await wait_for(["10.47.0.1:8080"])

    # an instance with its non-secure port disabled: istiod joins the part of the host that
    # has the https port alone, and sends it https traffic only, never http
    eureka.register("reviews", "10.47.0.3", port_enabled=False, secure_port=8443)
    secure = f"outbound|8443||{host}"
    await wait_for(["10.47.0.3:8443"], secure)
    assert f"eureka/{host}.only-https" in istiod.configs()
    await wait_for(["10.47.0.1:8080"])


async def test_keep_when_empty_keeps_an_app_eureka_still_lists(
    tmp_path: Path, servers: Servers, serve: ServeFactory
) -> None:
    """keep_when_empty: an app whose every instance is out of service stays served without
    endpoints (istiod keeps its host, ports and address) while Eureka lists it; when its
    last instance is gone from Eureka, so is the ServiceEntry."""
    eureka = servers.shared
    host = "ledger.eureka"
    one = eureka.register("ledger", "10.40.9.1")
    starting = eureka.register("ledger", "10.40.9.2", status="STARTING")
    settings = eureka_settings(
        tmp_path, [eureka.url], ["ledger"], **with_auth(keep_when_empty=True)
    )
    _, client = await serve(settings, within=60)
    await client.wait_for(lambda c: addresses(c, host) == ["10.40.9.1"], 30)
    before = entry_for(client, host)
    eureka.set_status("ledger", one, "OUT_OF_SERVICE")
    await client.wait_for(lambda c: entry_for(c, host) is not None and addresses(c, host) == [], 30)
    entry = entry_for(client, host)
    assert entry is not None and [p.number for p in entry.service_entry.ports] == [8080]
    assert_kept_without_endpoints(before, entry)
    eureka.deregister("ledger", one)
    eureka.deregister("ledger", starting)
    await client.wait_for(lambda c: entry_for(c, host) is None, 30)


async def test_an_eviction_in_slices_is_held_as_one_mass_removal(
    tmp_path: Path,
    servers: Servers,
    beats: Callable[[EurekaServer, float], Heartbeats],
    serve: ServeFactory,
) -> None:
    """Issue 27: three clients hold 7 instances; two of them die (5 instances). Eureka
    evicts at most 15% of its registry per eviction run (every 500 ms here), so the 5 leave
    in slices of 2+1+1+1, each under max_removed_share. Over protection.window they add up
    to one mass removal: held, and istiod is served all 7 again until the hold ends."""
    eureka = servers.eviction
    host = "sliced.eureka"
    survivor, doomed = beats(eureka, 0.3), [beats(eureka, 0.3), beats(eureka, 0.3)]
    everyone = [f"10.48.0.{i}" for i in range(1, 8)]
    for address in everyone[:2]:
        survivor.add("sliced", address, lease=1)  # expires 2 s after its last renewal
    for address in everyone[2:5]:
        doomed[0].add("sliced", address, lease=1)
    for address in everyone[5:]:
        doomed[1].add("sliced", address, lease=1)
    top = {"protection": {"hold_for": "10m", "window": "30s"}}
    settings = eureka_settings(tmp_path, [eureka.url], ["sliced"], top=top)
    app, client = await serve(settings, within=60)
    await client.wait_for(lambda c: addresses(c, host) == everyone, 30)
    registry = registry_of(app)
    evicted_before = eureka.log_path.read_text().count("Evicting ")
    for dead in doomed:  # two client processes die
        dead.close()

    def evicted() -> bool:
        services = registry.view().services
        return len(services) == 1 and len(services[0].instances) == 2

    await eventually(evicted, within=30)
    await past_next_rebuild(app)
    # Eureka did evict in slices (its log has one line per eviction run that evicted)
    runs = eureka.log_path.read_text().count("Evicting ") - evicted_before
    assert runs >= 2, eureka.log_path.read_text()[-2000:]
    assert held(app)
    assert addresses(client, host) == everyone  # the whole loss held, first slices included
    (state,) = app.pipeline.registry_states()
    assert state.hold is not None
    assert (state.hold.removed_instances, state.hold.total_instances) == (5, 7)
    assert "protection.window" in state.hold.reason
    sizes = [len(found) for found in every_set(client, host)]
    print(f"\nsets served while Eureka evicted in {runs} runs: {sizes}")
