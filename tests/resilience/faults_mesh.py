"""The world the fault tests break: four real registries (ZooKeeper and Consul behind
stall proxies, r-nacos, Eureka), one mcpserver process watching all of them, and the
unmodified istiod consuming it; plus what the tests judge it by.

Judging needs three independent views of "what is served", each reduced to the same set of
(host, address, port) endpoints:

- the registries' true state, read straight from each server with its own API (kazoo, Consul's
  health API, Nacos' and Eureka's HTTP APIs), never from what the test wrote;
- a watching client on mcpserver (`Watch`): an istiod-like ADS stream that records every
  ServiceEntry set it is sent and reconnects when mcpserver dies;
- istiod itself: `/debug/configz`, sampled all along (`IstiodSampler`), and the clusters and
  endpoints a sidecar gets from its xDS port 15010 (`istiod_xds`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from mcpserver.xds.client import ADS_METHOD, Outbox, ack, decode_resource, initial_request
from mcpserver.xds.typeurls import ISTIO_1_30, MESH_CONFIG, served_kind
from testbed.consulagent import ConsulAgent
from testbed.eureka import EurekaServer
from testbed.istiod import Istiod
from testbed.nacos import RNacos
from testbed.ports import accepts
from testbed.process import tail
from testbed.xdsprobe import CDS, EDS, sidecar_node
from testbed.zookeeper import ZooKeeper
from tests.conftest import eventually
from tests.integration.test_eureka import Heartbeats
from tests.integration.test_failover import Replica
from tests.resilience.faults_proxy import StallProxy

Endpoint = tuple[str, str, int]
"""(host, address, port): one endpoint of one service, as a sidecar would dial it."""

ZK_ROOT = "/dubbo"
DUBBO_PORT = 20880
CONSUL_PORT = 9000
NACOS_PORT = 8080
EUREKA_PORT = 8080
SESSION_TIMEOUT = 4.0  # the ZooKeeper registry's session_timeout, in seconds
OUR_NAMESPACES = frozenset(("dubbo", "consul", "nacos", "eureka"))
WATCH_NODE = "sidecar~~faults-watch.istio-system~istio-system.svc.cluster.local"
"""The watching client's node id: /debug/clients tells its stream from istiod's by it."""


def ours(host: str) -> bool:
    """A host one of this module's registries names (istiod holds others: the apiserver's)."""
    return host.startswith("org.example.faults.") or host.endswith(
        (".service.consul", ".nacos", ".eureka")
    )


# --------------------------------------------------------------------------- the registries


@dataclass
class Mesh:
    """Every process of the module, and the writers that play the applications' part."""

    zookeeper: ZooKeeper
    zk_proxy: StallProxy
    consul: ConsulAgent
    consul_proxy: StallProxy
    nacos: RNacos
    eureka: EurekaServer
    beats: Heartbeats
    mcpserver: Replica
    istiod: Istiod | None = None

    def mcpserver_config(self) -> dict[str, Any]:
        return {
            "debounce": {"after": "50ms", "max": "500ms"},
            "shutdown": {"drain": "0.5s", "grace": "5s"},
            "registries": [
                {
                    "kind": "zookeeper",
                    "name": "zk",
                    "hosts": f"127.0.0.1:{self.zk_proxy.port}",
                    "namespace": "dubbo",
                    "session_timeout": f"{SESSION_TIMEOUT:g}s",
                },
                {
                    "kind": "consul",
                    "name": "consul",
                    "address": f"http://127.0.0.1:{self.consul_proxy.port}",
                    "namespace": "consul",
                    "wait": "2s",
                },
                {
                    "kind": "nacos",
                    "name": "nacos",
                    "address": self.nacos.address,
                    "namespace": "nacos",
                    "host_template": "{service}.nacos",
                    "list_interval": "300ms",
                },
                {
                    "kind": "eureka",
                    "name": "eureka",
                    "servers": [self.eureka.url],
                    "namespace": "eureka",
                    "poll_interval": "300ms",
                },
            ],
        }

    # writers -------------------------------------------------------------------------

    def add_provider(self, interface: str, address: str) -> None:
        """A Dubbo provider, as a persistent node (a provider's ephemeral node would go with
        its session: the faults here are the registry's and mcpserver's, not the provider's)."""
        url = (
            f"dubbo://{address}:{DUBBO_PORT}/{interface}"
            f"?application=faults&interface={interface}&side=provider"
        )
        path = f"{ZK_ROOT}/{interface}/providers/{urllib.parse.quote(url, safe='')}"
        with kazoo(self.zookeeper.address) as zk:
            zk.create(path, b"", makepath=True)

    def add_consul(self, service: str, address: str) -> None:
        self.consul.register(
            ID=f"{service}-{address}", Name=service, Address=address, Port=CONSUL_PORT
        )

    def add_nacos(self, service: str, address: str) -> None:
        self.nacos.register(service, address, NACOS_PORT)

    def add_eureka(self, app: str, address: str) -> None:
        self.beats.add(app, address, port=EUREKA_PORT)

    def logs(self) -> str:
        """The ends of mcpserver's and istiod's logs, for a failure's message."""
        istiod = self.istiod.log()[-3000:] if self.istiod is not None else ""
        return f"mcpserver's log:\n{tail(self.mcpserver.log_path)}\nistiod's log:\n{istiod}"

    # the truth ------------------------------------------------------------------------

    def truth(self) -> set[Endpoint]:
        """Every live endpoint the registries hold right now, read from the servers."""
        return (
            zookeeper_truth(self.zookeeper.address)
            | consul_truth(self.consul)
            | nacos_truth(self.nacos)
            | eureka_truth(self.eureka)
        )


@contextlib.contextmanager
def kazoo(address: str) -> Any:
    client = KazooClient(hosts=address, timeout=10)
    client.start(30)
    try:
        yield client
    finally:
        client.stop()
        client.close()


def zookeeper_truth(address: str) -> set[Endpoint]:
    found: set[Endpoint] = set()
    with kazoo(address) as zk:
        for interface in zk.get_children(ZK_ROOT):
            try:
                providers = zk.get_children(f"{ZK_ROOT}/{interface}/providers")
            except NoNodeError:
                continue
            for node in providers:
                url = urllib.parse.urlsplit(urllib.parse.unquote(node))
                assert url.hostname is not None and url.port is not None, node
                found.add((interface.lower(), url.hostname, url.port))
    return found


def consul_truth(agent: ConsulAgent) -> set[Endpoint]:
    found: set[Endpoint] = set()
    for name in json.loads(agent.request("GET", "/v1/catalog/services")):
        if name == "consul":
            continue
        for entry in json.loads(agent.request("GET", f"/v1/health/service/{name}?passing=1")):
            service = entry["Service"]
            found.add((f"{name}.service.consul", service["Address"], service["Port"]))
    return found


def nacos_truth(server: RNacos) -> set[Endpoint]:
    found: set[Endpoint] = set()
    listing = server.request("GET", "/nacos/v1/ns/service/list", pageNo="1", pageSize="1000")
    for name in listing.get("doms") or []:
        instances = server.request(
            "GET", "/nacos/v1/ns/instance/list", serviceName=name, healthyOnly="false"
        )
        for instance in instances.get("hosts") or []:
            if instance.get("healthy") and instance.get("enabled", True):
                found.add((f"{name}.nacos", instance["ip"], int(instance["port"])))
    return found


def eureka_truth(server: EurekaServer) -> set[Endpoint]:
    found: set[Endpoint] = set()
    for app in server.apps()["applications"]["application"]:
        for instance in app["instance"]:
            if instance["status"] == "UP":
                port = int(instance["port"]["$"])
                found.add((f"{app['name'].lower()}.eureka", instance["ipAddr"], port))
    return found


# --------------------------------------------------------------------------- the views


def spec_endpoints(
    hosts: Iterable[str],
    ports: Iterable[tuple[str, int, int]],
    endpoints: Iterable[tuple[str, Mapping[str, int]]],
) -> set[Endpoint]:
    """A ServiceEntry's endpoints as a sidecar dials them: each endpoint on each service port,
    the endpoint's own port for it if it names one, else the target port, else the port."""
    ports = list(ports)
    return {
        (host, address, own.get(name) or target or number)
        for host in hosts
        for address, own in endpoints
        for name, number, target in ports
    }


def configz_endpoints(configs: list[dict[str, Any]]) -> set[Endpoint]:
    """Our ServiceEntries' endpoints in istiod's /debug/configz."""
    found: set[Endpoint] = set()
    for config in configs:
        if config.get("kind") != "ServiceEntry":
            continue
        if config["metadata"]["namespace"] not in OUR_NAMESPACES:
            continue
        spec = config["spec"]
        found |= spec_endpoints(
            spec.get("hosts", []),
            ((p["name"], p["number"], p.get("targetPort", 0)) for p in spec.get("ports", [])),
            ((e["address"], e.get("ports", {})) for e in spec.get("endpoints", [])),
        )
    return found


def response_endpoints(response: discovery_pb2.DiscoveryResponse) -> set[Endpoint]:
    found: set[Endpoint] = set()
    for resource in response.resources:
        spec = decode_resource(resource).service_entry
        found |= spec_endpoints(
            spec.hosts,
            ((p.name, p.number, p.target_port) for p in spec.ports),
            ((e.address, dict(e.ports)) for e in spec.endpoints),
        )
    return found


class Watch:
    """An istiod-like ADS stream on mcpserver that records every ServiceEntry set it is
    sent (each is the whole set: what is absent is withdrawn), and opens a new stream when
    one ends, as istiod does when mcpserver dies."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sets: list[tuple[float, set[Endpoint]]] = []
        self.streams = 0  # streams mcpserver answered on
        self._task: asyncio.Task[None] | None = None
        self._outbox: Outbox[discovery_pb2.DiscoveryRequest] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._outbox is not None:
            self._outbox.close()  # ends the request stream before the call goes
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def latest(self) -> set[Endpoint]:
        return self.sets[-1][1] if self.sets else set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
                    await self._stream(channel)
            await asyncio.sleep(0.1)  # istiod's own retry is slower; this is a backoff

    async def _stream(self, channel: grpc.aio.Channel) -> None:
        outbox: Outbox[discovery_pb2.DiscoveryRequest] = Outbox()
        self._outbox = outbox
        for i, type_url in enumerate(ISTIO_1_30):
            request = initial_request(type_url, first=i == 0)
            if request.HasField("node"):
                request.node.id = WATCH_NODE
            outbox.send(request)

        call = channel.stream_stream(
            ADS_METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )(outbox.requests())
        answered = False
        try:
            async for response in call:
                if not answered:  # a stream counts once mcpserver answers on it
                    answered = True
                    self.streams += 1
                if served_kind(response.type_url) == "ServiceEntry":
                    self.sets.append((time.monotonic(), response_endpoints(response)))
                if response.type_url != MESH_CONFIG:
                    outbox.send(ack(response))
        finally:
            outbox.close()  # the request stream ends with the call


class IstiodSampler:
    """istiod's /debug/configz, sampled on a thread of its own every 100 ms (the test's event
    loop may block while it restarts a process), while istiod serves (15010 open: it opens
    only once every config source has synced)."""

    def __init__(self, istiod: Istiod) -> None:
        self.istiod = istiod
        self.samples: list[tuple[float, set[Endpoint]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.1):  # a sampling period, not a synchronisation
            if not accepts(self.istiod.grpc_port):
                continue
            with contextlib.suppress(OSError, ValueError):
                configs = self.istiod.debug("configz")
                self.samples.append((time.monotonic(), configz_endpoints(configs)))


def withdrawals(
    protected: set[Endpoint],
    hosts: set[str],
    sets: list[tuple[float, set[Endpoint]]],
    since: float,
) -> list[tuple[float, list[Endpoint], list[str]]]:
    """Every recorded set, after `since`, that lacked a protected endpoint or host: when
    (seconds after `since`), which endpoints, which hosts."""
    found = []
    for at, endpoints in sets:
        if at < since:
            continue
        lost_hosts = hosts - {host for host, _, _ in endpoints}
        if lost_hosts or not protected <= endpoints:
            found.append((round(at - since, 2), sorted(protected - endpoints), sorted(lost_hosts)))
    return found


async def istiod_xds(istiod: Istiod, within: float = 10.0) -> set[Endpoint]:
    """Our endpoints as a sidecar gets them from istiod's 15010: CDS (every cluster), then EDS
    for each `outbound|PORT||HOST` cluster of ours."""
    outbox: Outbox[discovery_pb2.DiscoveryRequest] = Outbox()

    clusters: dict[str, tuple[str, int]] = {}  # cluster name -> (host, port)
    found: dict[str, set[Endpoint]] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{istiod.grpc_port}") as channel:
        call = channel.stream_stream(
            ADS_METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )(outbox.requests())
        outbox.send(discovery_pb2.DiscoveryRequest(type_url=CDS, node=sidecar_node()))
        try:
            async with asyncio.timeout(within):
                async for response in call:
                    names = sorted(clusters) if response.type_url == EDS else []
                    outbox.send(
                        discovery_pb2.DiscoveryRequest(
                            type_url=response.type_url,
                            version_info=response.version_info,
                            response_nonce=response.nonce,
                            resource_names=names,
                        )
                    )
                    if response.type_url == CDS:
                        for any_cluster in response.resources:
                            cluster = cluster_pb2.Cluster()
                            any_cluster.Unpack(cluster)
                            direction, port, subset, host = (cluster.name.split("|") + [""] * 4)[:4]
                            if direction == "outbound" and not subset and ours(host):
                                clusters[cluster.name] = (host, int(port))
                        if not clusters:
                            return set()
                        outbox.send(
                            discovery_pb2.DiscoveryRequest(
                                type_url=EDS, resource_names=sorted(clusters)
                            )
                        )
                    elif response.type_url == EDS:
                        for any_cla in response.resources:
                            cla = endpoint_pb2.ClusterLoadAssignment()
                            any_cla.Unpack(cla)
                            if cla.cluster_name not in clusters:
                                continue
                            host, _ = clusters[cla.cluster_name]
                            found[cla.cluster_name] = {
                                (
                                    host,
                                    lb.endpoint.address.socket_address.address,
                                    lb.endpoint.address.socket_address.port_value,
                                )
                                for locality in cla.endpoints
                                for lb in locality.lb_endpoints
                            }
                        if set(found) >= set(clusters):
                            break
        finally:
            outbox.close()
            call.cancel()
    return set().union(*found.values()) if found else set()


# --------------------------------------------------------------------------- mcpserver's word


def istiod_streams(mcpserver: Replica) -> list[dict[str, Any]]:
    """istiod's streams on mcpserver, as its admin /debug/clients lists them."""
    return [c for c in mcpserver.clients() if c["node"] != WATCH_NODE]


def all_acked(mcpserver: Replica) -> bool:
    """One istiod stream on mcpserver, every type it was sent acknowledged."""
    streams = istiod_streams(mcpserver)
    return len(streams) == 1 and all(
        t["acked"] == t["sent"] and t["sent"] for t in streams[0]["types"].values()
    )


def registry_entries(mcpserver: Replica) -> dict[str, dict[str, Any]]:
    """Each registry as mcpserver's admin /debug/registries reports it, by name."""
    url = f"http://127.0.0.1:{mcpserver.admin_port}/debug/registries"
    with urllib.request.urlopen(url, timeout=5) as response:
        return {entry["name"]: entry for entry in json.loads(response.read())}


def registry_states(mcpserver: Replica) -> dict[str, str]:
    """Each registry's status as mcpserver's admin /debug/registries reports it."""
    return {name: entry["status"] for name, entry in registry_entries(mcpserver).items()}


async def until(
    what: str, check: Callable[[], Any], within: float = 60.0, every: float = 0.1
) -> Any:
    """Poll a blocking check off the loop until it is truthy; fail naming `what` and the
    last value (or error) seen."""

    async def attempt() -> Any:
        try:
            value = await asyncio.to_thread(check)
        except (OSError, ValueError, KeyError) as err:
            value = err
        assert value and not isinstance(value, Exception), (
            f"{what}: not within {within}s; last: {value!r}"
        )
        return value

    return await eventually(attempt, within=within, every=every)


@dataclass
class Fault:
    """One fault's observers: what must never be withdrawn, and who watches for it."""

    mesh: Mesh
    protected: set[Endpoint]
    hosts: set[str]
    watch: Watch
    sampler: IstiodSampler
    started: float = field(default_factory=time.monotonic)

    async def status(self, registry: str, status: str, within: float = 60.0) -> None:
        """mcpserver's admin /debug/registries reports the registry so."""
        await until(
            f"mcpserver says {registry} is {status}",
            lambda: registry_states(self.mesh.mcpserver).get(registry) == status,
            within,
        )

    async def held(self, registry: str, within: float = 60.0) -> None:
        """mcpserver holds a mass removal of the registry (and says so)."""
        await until(
            f"mcpserver holds a removal of {registry}",
            lambda: "held" in registry_entries(self.mesh.mcpserver)[registry],
            within,
        )

    async def flows(self, endpoint: Endpoint, within: float = 60.0, istiod: bool = True) -> None:
        """The endpoint reaches the watching client, and istiod unless told otherwise."""
        assert self.mesh.istiod is not None
        await until(f"{endpoint} at the watch", lambda: endpoint in self.watch.latest(), within)
        if istiod:
            await self.reaches_istiod(endpoint, within)

    async def reaches_istiod(self, endpoint: Endpoint, within: float = 60.0) -> None:
        istiod = self.mesh.istiod
        assert istiod is not None
        await until(
            f"{endpoint} in istiod",
            lambda: endpoint in configz_endpoints(istiod.debug("configz")),
            within,
        )


async def exact(mesh: Mesh, watch: Watch | None = None, within: float = 60.0) -> set[Endpoint]:
    """Wait until every view equals what the registries hold right now: the watching client,
    istiod's /debug/configz and the endpoints a sidecar gets from istiod's 15010. Returns
    the registries' state."""
    istiod = mesh.istiod
    assert istiod is not None

    async def agree() -> set[Endpoint]:
        truth = await asyncio.to_thread(mesh.truth)
        views: dict[str, set[Endpoint] | Exception] = {}
        if watch is not None:
            views["mcpserver's watching client"] = watch.latest()
        try:
            views["istiod /debug/configz"] = configz_endpoints(
                await asyncio.to_thread(istiod.debug, "configz")
            )
            views["istiod xDS (15010)"] = await istiod_xds(istiod)
        except (OSError, ValueError, TimeoutError, grpc.aio.AioRpcError) as err:
            views["istiod"] = err
        wrong = {
            name: view if isinstance(view, Exception) else
            {"missing": sorted(truth - view), "extra": sorted(view - truth)}
            for name, view in views.items()
            if view != truth
        }  # fmt: skip
        assert not wrong, f"views differ from the registries after {within}s: {wrong}"
        return truth

    agreed: set[Endpoint] = await eventually(agree, within=within, every=0.2)
    return agreed


@contextlib.asynccontextmanager
async def observed(mesh: Mesh) -> AsyncIterator[Fault]:
    """Around one fault: every view equals the registries before it; a watching client and
    an istiod sampler record everything during it; after it (the body ends with a change
    that flowed, so past the next rebuild) every view equals the registries again, and no
    recorded set ever lacked a protected endpoint or host."""
    assert mesh.istiod is not None
    truth = await exact(mesh)
    watch = Watch(mesh.mcpserver.port)
    await watch.start()
    sampler = IstiodSampler(mesh.istiod)
    try:
        await until("the watch's first set", lambda: watch.latest() == truth, 30)
        sampler.start()
        fault = Fault(mesh, truth, {host for host, _, _ in truth}, watch, sampler)

        def withdrawn() -> str:
            sampler.stop()
            at_watch = withdrawals(fault.protected, fault.hosts, watch.sets, fault.started)
            at_istiod = withdrawals(fault.protected, fault.hosts, sampler.samples, fault.started)
            if not at_watch and not at_istiod:
                return ""
            return (
                "live endpoints or hosts withdrawn (seconds into the fault, endpoints, "
                f"hosts): by mcpserver {at_watch}; in istiod {at_istiod}"
            )

        try:
            yield fault
            await exact(mesh, watch)
        except AssertionError as err:
            # what was withdrawn on the way is the likelier cause: say it first
            raise AssertionError(f"{withdrawn()}\n{err}\n{mesh.logs()}") from None
        message = withdrawn()
        assert not message, f"{message}\n{mesh.logs()}"
        assert sampler.samples, "istiod was never sampled"
    finally:
        sampler.stop()
        await watch.stop()
