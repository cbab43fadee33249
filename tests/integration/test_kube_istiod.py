"""mcpserver under the unmodified pilot-discovery in a real Kubernetes control plane, with the
config sources our users deploy (`xds://` mcpserver, then `k8s://`): nothing of ours lands in
the apiserver, Kubernetes-held config sits beside ours, and restarts of either side converge.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from mcpserver.app import App
from mcpserver.settings import Settings
from testbed.builds import consul_binary
from testbed.consulagent import ConsulAgent
from testbed.istiod import Istiod
from testbed.kube import ISTIOD_USER, ControlPlane, Kubectl
from testbed.xdsprobe import endpoints
from testbed.zookeeper import ZooKeeper
from tests.conftest import AppFactory, eventually, service, settings_for, write_services
from tests.integration.conftest import IstiodFactory
from tests.integration.test_istiod import until
from tests.integration.test_zookeeper import HOST as DUBBO_HOST
from tests.integration.test_zookeeper import add_provider, provider_url

OUR_KINDS = ("ServiceEntry", "WorkloadEntry")
# what a lock's holder is recorded in: an annotation on a ConfigMap lock, the spec of a Lease
LEADER_ANNOTATION = "control-plane.alpha.kubernetes.io/leader"


@pytest.fixture
def consul(tmp_path: Path) -> Iterator[ConsulAgent]:
    agent = ConsulAgent(consul_binary(), tmp_path / "consul")
    agent.start()
    yield agent
    agent.stop()


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> str:
    """A Kubernetes namespace of this test's own (namespaces outlive the test: without
    kube-controller-manager nothing finalises a deleted one; tests delete their objects)."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_"))[:50].strip("-")
    kubectl.ensure_namespace(name)
    return name


@pytest.fixture
async def applied(kubectl: Kubectl) -> AsyncIterator[list[str]]:
    """Manifests a test applies with kubectl, deleted afterwards whatever the outcome."""
    manifests: list[str] = []
    yield manifests
    for manifest in reversed(manifests):
        await asyncio.to_thread(kubectl.delete, manifest)


async def apply(kubectl: Kubectl, applied: list[str], manifest: str) -> None:
    applied.append(manifest)
    await asyncio.to_thread(kubectl.apply, manifest)


def versions(istiod: Istiod, kind: str) -> dict[str, str]:
    """`namespace/name` -> resourceVersion of one kind in istiod's /debug/configz."""
    return {k: c["metadata"]["resourceVersion"] for k, c in istiod.configs(kind).items()}


def served(app: App, kind: str) -> dict[str, str]:
    assert app.store.snapshot is not None
    return {r.name: r.version for r in app.store.snapshot.sets[kind].resources}


def holds(istiod: Istiod, app: App) -> bool:
    """istiod's store holds every resource we serve (and we serve some), at our version."""
    return bool(served(app, "ServiceEntry")) and all(
        versions(istiod, kind).items() >= served(app, kind).items() for kind in OUR_KINDS
    )


async def eds(istiod: Istiod, host: str, expected: list[str], within: float = 30) -> None:
    """Wait until a sidecar asking istiod gets `expected` as the endpoints of HOST:8080."""

    async def served() -> bool:
        found = (await endpoints(istiod.grpc_port, f"outbound|8080||{host}"))[1]
        assert found == expected, f"{host}: {found} != {expected}"
        return True

    await eventually(served, within=within, every=0.2)


def configz(istiod: Istiod) -> set[tuple[str, str, str, str]]:
    """Everything in istiod's config store: (kind, namespace, name, resourceVersion)."""
    return {
        (
            c["kind"],
            c["metadata"]["namespace"],
            c["metadata"]["name"],
            c["metadata"].get("resourceVersion", ""),
        )
        for c in istiod.debug("configz")
    }


def three_registries(
    tmp_path: Path, zookeeper: ZooKeeper, consul: ConsulAgent, zk_writer: KazooClient
) -> Settings:
    """A Dubbo provider in ZooKeeper, a service in Consul, and a static service whose
    instances are WorkloadEntries: every kind of thing we serve."""
    add_provider(zk_writer, provider_url("10.40.0.1"))
    consul.register(
        Name="orders", ID="orders-1", Address="10.50.0.1", Port=8080, Tags=["version=v1"]
    )
    static = tmp_path / "services.yaml"
    write_services(static, [service("cart", "10.1.0.1", "10.1.0.2")])
    return settings_for(
        tmp_path,
        {
            "kind": "static",
            "name": "files",
            "path": str(static),
            "poll_interval": "50ms",
            "endpoints": "workloadentry",
        },
        {"kind": "zookeeper", "name": "zk", "hosts": zookeeper.address, "namespace": "dubbo"},
        {
            "kind": "consul",
            "name": "consul",
            "address": consul.address,
            "namespace": "consul",
            "wait": "2s",
        },
    )


async def test_nothing_of_ours_is_stored_in_the_apiserver(
    tmp_path: Path,
    zookeeper: ZooKeeper,
    zk_writer: KazooClient,
    consul: ConsulAgent,
    start_app: AppFactory,
    start_istiod: IstiodFactory,
    control_plane: ControlPlane,
    kubectl: Kubectl,
) -> None:
    mark = control_plane.audit_mark()
    app = await start_app(three_registries(tmp_path, zookeeper, consul, zk_writer))
    istiod = await start_istiod(app.port)
    ours = served(app, "ServiceEntry")
    assert {name.split("/")[0] for name in ours} == {"dubbo", "consul", "shop"}, ours
    assert len(served(app, "WorkloadEntry")) == 2
    await until(lambda: holds(istiod, app), within=60)
    # istiod has pushed them: a sidecar gets the WorkloadEntries as the cart's endpoints
    _, found = await endpoints(istiod.grpc_port, "outbound|8080||cart.shop.svc.mesh")
    assert found == ["10.1.0.1:8080", "10.1.0.2:8080"]
    assert DUBBO_HOST in istiod.hosts()
    # the proof that istiod's writes are audited at all: its leader elections
    await until(lambda: control_plane.writes(mark, ISTIOD_USER), within=60)

    stored = await asyncio.to_thread(kubectl.items, "serviceentries", "workloadentries")
    assert stored == [], [f"{i['kind']} {i['metadata']['name']}" for i in stored]
    writes = control_plane.writes(mark)
    assert [
        w for w in writes if w["objectRef"]["resource"] in ("serviceentries", "workloadentries")
    ] == []
    by_istiod = {
        (w["objectRef"]["resource"], w["objectRef"].get("namespace"), w["objectRef"].get("name"))
        for w in control_plane.writes(mark, ISTIOD_USER)
    }
    assert {(r, ns) for r, ns, _ in by_istiod} <= {
        ("configmaps", "istio-system"),
        ("leases", "istio-system"),
    }, by_istiod
    for resource, ns, name in by_istiod:
        lock: dict[str, Any] = json.loads(
            await asyncio.to_thread(
                kubectl.run, "get", resource, f"{name}", "-n", f"{ns}", "-o", "json"
            )
        )
        if resource == "configmaps":
            assert LEADER_ANNOTATION in lock["metadata"].get("annotations", {}), lock
        else:
            assert lock["spec"].get("holderIdentity") is not None, lock
    print(
        f"control plane ready in {control_plane.startup_seconds:.1f}s, CRDs in"
        f" {control_plane.crds_seconds:.1f}s; istiod ready in {istiod.ready_seconds:.1f}s;"
        f" istiod wrote {sorted(by_istiod)}"
    )


async def test_istiod_restart_converges_to_the_same_configz(
    tmp_path: Path,
    start_app: AppFactory,
    start_istiod: IstiodFactory,
    kubectl: Kubectl,
    namespace: str,
    applied: list[str],
) -> None:
    """istiod killed and started again while mcpserver and the apiserver keep running:
    the same store, ours and Kubernetes' alike, resource versions included."""
    static = tmp_path / "services.yaml"
    write_services(static, [service("cart", "10.1.0.1"), service("pay", "10.1.0.9")])
    app = await start_app(
        settings_for(
            tmp_path,
            {"kind": "static", "name": "files", "path": str(static), "poll_interval": "50ms"},
        )
    )
    await apply(
        kubectl,
        applied,
        f"""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: cart, namespace: {namespace}}}
spec:
  host: cart.shop.svc.mesh
  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: 7}}}}}}
""",
    )
    istiod = await start_istiod(app.port)
    await until(lambda: holds(istiod, app) and istiod.configs("DestinationRule"))
    before = configz(istiod)
    assert ("DestinationRule", namespace, "cart") in {c[:3] for c in before}
    await asyncio.to_thread(istiod.kill)
    istiod.start()
    await asyncio.to_thread(istiod.wait_ready)
    await until(lambda: configz(istiod) == before, within=60)
    _, found = await endpoints(istiod.grpc_port, "outbound|8080||cart.shop.svc.mesh")
    assert found == ["10.1.0.1:8080"]


async def test_mcpserver_restart_never_drops_our_hosts(
    tmp_path: Path, start_app: AppFactory, start_istiod: IstiodFactory
) -> None:
    """While mcpserver is down and while it comes back, istiod keeps serving our hosts; then
    it converges on the new set."""
    static = tmp_path / "services.yaml"
    write_services(static, [service("cart", "10.1.0.1"), service("pay", "10.1.0.9")])
    registry = {"kind": "static", "name": "files", "path": str(static), "poll_interval": "50ms"}
    app = await start_app(settings_for(tmp_path, registry))
    port = app.port
    istiod = await start_istiod(port)
    kept = {"cart.shop.svc.mesh", "pay.shop.svc.mesh"}
    await until(lambda: kept <= istiod.hosts())
    samples: list[tuple[float, set[str]]] = []
    sampling = True

    async def sample() -> None:
        while sampling:
            samples.append((time.monotonic(), await asyncio.to_thread(istiod.hosts)))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        await app.stop()
        stopped = time.monotonic()
        await until(lambda: "connection closed" in istiod.log() or "Unavailable" in istiod.log())
        write_services(
            static,
            [service("cart", "10.1.0.1"), service("pay", "10.1.0.9"), service("new", "10.1.0.30")],
        )
        again = await start_app(
            settings_for(
                tmp_path, registry, server={"listen": f"127.0.0.1:{port}", "admin": "127.0.0.1:0"}
            )
        )
        assert again.port == port
        await until(lambda: "new.shop.svc.mesh" in istiod.hosts(), within=60)
    finally:
        sampling = False
        await sampler
    away = [hosts for at, hosts in samples if at > stopped]
    assert away, "no sample taken while mcpserver was away"
    dropped = [(at, kept - hosts) for at, hosts in samples if not kept <= hosts]
    assert dropped == [], dropped


def kube_service_entry(namespace: str, name: str, host: str, address: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{name: http, number: 8080, protocol: HTTP}}]
  endpoints: [{{address: {address}}}]
"""


async def test_kubernetes_serviceentry_beside_ours(
    tmp_path: Path,
    start_app: AppFactory,
    start_istiod: IstiodFactory,
    kubectl: Kubectl,
    namespace: str,
    applied: list[str],
    control_plane: ControlPlane,
) -> None:
    """A ServiceEntry in the apiserver for one host and ours for another: istiod serves both,
    and of all ServiceEntries it writes only the status of the one in the apiserver (the
    addresses it allocates, which ours carry themselves)."""
    static = tmp_path / "services.yaml"
    write_services(static, [service("web", "10.1.0.1")])
    app = await start_app(
        settings_for(
            tmp_path,
            {"kind": "static", "name": "files", "path": str(static), "poll_interval": "50ms"},
        )
    )
    mark = control_plane.audit_mark()
    istiod = await start_istiod(app.port)
    await apply(
        kubectl,
        applied,
        kube_service_entry(namespace, "legacy", "legacy.example.mesh", "10.60.0.1"),
    )
    await until(lambda: {"shop/web", f"{namespace}/legacy"} <= set(istiod.configs()))
    await eds(istiod, "web.shop.svc.mesh", ["10.1.0.1:8080"])
    await eds(istiod, "legacy.example.mesh", ["10.60.0.1:8080"])
    assert {"web.shop.svc.mesh", "legacy.example.mesh"} <= istiod.hosts()

    def entry_writes() -> set[tuple[str, str, str]]:
        return {
            (
                w["objectRef"].get("namespace"),
                w["objectRef"]["name"],
                w["objectRef"].get("subresource", ""),
            )
            for w in control_plane.writes(mark, ISTIOD_USER)
            if w["objectRef"]["resource"] == "serviceentries"
        }

    await until(entry_writes)
    assert entry_writes() == {(namespace, "legacy", "status")}


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        # one service in istiod's registry per ServiceEntry, and EDS merges the endpoints of
        # every ServiceEntry of a host within one namespace
        ("same-namespace", ["10.1.0.1:8080", "10.60.0.2:8080"]),
        # across namespaces a sidecar elsewhere sees one of them: the older ServiceEntry, and
        # ours are dated by the registry (2000-01-01 for a static entry without `created`)
        ("other-namespace", ["10.1.0.1:8080"]),
    ],
)
async def test_same_host_from_kubernetes_and_from_us(
    where: str,
    expected: list[str],
    tmp_path: Path,
    start_app: AppFactory,
    start_istiod: IstiodFactory,
    kubectl: Kubectl,
    namespace: str,
    applied: list[str],
) -> None:
    """The same host from a ServiceEntry in the apiserver and from us: what istiod does, as
    observed (docs/deployment.md "Run it in a cluster"), pinned so that a change in istiod shows."""
    static = tmp_path / "services.yaml"
    write_services(static, [service("web", "10.1.0.1", namespace=namespace)])
    app = await start_app(
        settings_for(
            tmp_path,
            {"kind": "static", "name": "files", "path": str(static), "poll_interval": "50ms"},
        )
    )
    host = f"web.{namespace}.svc.mesh"
    theirs = namespace if where == "same-namespace" else f"{namespace}-other"
    await asyncio.to_thread(kubectl.ensure_namespace, theirs)
    await apply(kubectl, applied, kube_service_entry(theirs, "web-kube", host, "10.60.0.2"))
    # both exist before istiod starts, so its first push already holds both: what a sidecar
    # gets below is istiod's answer, not a moment before the second one arrived
    istiod = await start_istiod(app.port)
    assert {f"{namespace}/web", f"{theirs}/web-kube"} <= set(istiod.configs())
    # both are in istiod's registry, ours (registry label) dated 2000, theirs dated now
    both = [s for s in istiod.debug("registryz") if s["hostname"] == host]
    assert sorted((s["Attributes"]["ObjectName"], s["Attributes"]["Namespace"]) for s in both) == [
        ("web", namespace),
        ("web-kube", theirs),
    ]
    await eds(istiod, host, expected)
