"""The Kubernetes sink against a real kube-apiserver with Istio's CRDs: what it writes is what
MCP serves, it deletes only what it owns and protection does not hold, it never touches
objects of others, a restart or a leader change writes nothing that did not change, and one
replica of a set writes.

Writes are counted from the apiserver's audit log by the sink's user agent, so a test says
exactly what the sink sent.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcpserver.app import App
from mcpserver.settings import Settings
from mcpserver.sink.client import USER_AGENT
from mcpserver.sink.objects import OWNER_LABEL, VERSION_ANNOTATION
from testbed.kube import ADMIN_TOKEN, ControlPlane, Kubectl
from testbed.xdsprobe import workload_addresses
from tests.conftest import (
    AppFactory,
    eventually,
    past_next_rebuild,
    service,
    settings_for,
    static_entry,
    write_services,
)
from tests.integration.conftest import IstiodFactory

pytestmark = pytest.mark.integration


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of this test's own (namespaces outlive a test: nothing finalises them),
    emptied of Istio objects afterwards: other tests of the session's apiserver assert that
    nothing of ours is stored there when the sink is off."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_"))[:40].strip("-")
    name = f"sink-{name}"
    kubectl.ensure_namespace(name)
    yield name
    kubectl.run("delete", "serviceentries,workloadentries", "--all", "-n", name, "--wait")


def sink_settings(
    directory: Path,
    control_plane: ControlPlane,
    namespace: str,
    *registries: dict[str, Any],
    **top: Any,
) -> Settings:
    token = directory / "token"
    token.write_text(ADMIN_TOKEN)
    kubernetes = {
        "apiserver": control_plane.server.url,
        "token_file": str(token),
        "ca_file": str(control_plane.server.cert),
        "owner": namespace,
        "lease_namespace": namespace,
        # long enough that a slow apiserver on a loaded machine never costs the leader its
        # lease mid-test (a re-list and a full plan in the middle of a count); a leader
        # change in these tests is a handover, which does not wait for expiry
        "lease_duration": "15s",
        "renew_deadline": "10s",
        "retry_period": "200ms",
        **top.pop("kubernetes", {}),
    }
    return settings_for(
        directory, *registries, sink=["mcp", "kubernetes"], kubernetes=kubernetes, **top
    )


def sink_writes(
    control_plane: ControlPlane, after: int, resources: str = ""
) -> list[dict[str, Any]]:
    """Write requests the sink sent after `after` (of `resources`, e.g. "serviceentries")."""
    return [
        event
        for event in control_plane.writes(after)
        if event.get("userAgent") == USER_AGENT
        and (not resources or event.get("objectRef", {}).get("resource") == resources)
    ]


def istio_writes(control_plane: ControlPlane, after: int) -> list[dict[str, Any]]:
    return [
        e
        for e in sink_writes(control_plane, after)
        if e.get("objectRef", {}).get("resource") in ("serviceentries", "workloadentries")
    ]


def objects(kubectl: Kubectl, namespace: str, kinds: str = "serviceentries") -> dict[str, Any]:
    return {item["metadata"]["name"]: item for item in kubectl.items(kinds, namespace=namespace)}


async def synced(app: App) -> None:
    """The sink leads and the apiserver holds the current snapshot."""
    assert app.sink is not None
    sink = app.sink
    await eventually(lambda: sink.status()["synced"] and not sink.status()["error"], within=60)


async def test_writes_what_mcp_serves_and_deletes_what_left(
    tmp_path: Path,
    start_app: AppFactory,
    control_plane: ControlPlane,
    kubectl: Kubectl,
    namespace: str,
) -> None:
    inline = tmp_path / "inline.yaml"
    entries = tmp_path / "entries.yaml"
    write_services(
        inline,
        [
            service("cart", "10.1.0.1", "10.1.0.2", namespace=namespace),
            service("pay", "10.1.0.9", namespace=namespace),
        ],
    )
    write_services(entries, [service("ledger", "10.2.0.1", namespace=namespace)])
    settings = sink_settings(
        tmp_path,
        control_plane,
        namespace,
        static_entry(inline),
        {**static_entry(entries), "endpoints": "workloadentry"},
    )
    app = await start_app(settings)
    await synced(app)
    found = objects(kubectl, namespace)
    assert sorted(found) == ["cart", "ledger", "pay"]
    cart = found["cart"]
    assert cart["metadata"]["labels"][OWNER_LABEL] == namespace
    assert cart["metadata"]["labels"]["registry"] == "inline"
    assert sorted(e["address"] for e in cart["spec"]["endpoints"]) == ["10.1.0.1", "10.1.0.2"]
    assert cart["spec"]["resolution"] == "STATIC"
    # the content version istiod sees over MCP is the annotation
    snapshot = app.store.snapshot
    assert snapshot is not None
    served = {r.name: r.version for r in snapshot.sets["ServiceEntry"].resources}
    assert cart["metadata"]["annotations"][VERSION_ANNOTATION] == served[f"{namespace}/cart"]
    workloads = objects(kubectl, namespace, "workloadentries")
    assert [w["spec"]["address"] for w in workloads.values()] == ["10.2.0.1"]

    # one service changes: one write, planned over what the snapshot changed alone
    assert app.sink is not None
    plans, lists = dict(app.sink.plans), app.sink.lists
    mark = control_plane.audit_mark()
    write_services(
        inline,
        [
            service("cart", "10.1.0.1", "10.1.0.2", "10.1.0.3", namespace=namespace),
            service("pay", "10.1.0.9", namespace=namespace),
        ],
    )
    await eventually(
        lambda: len(objects(kubectl, namespace)["cart"]["spec"]["endpoints"]) == 3, within=30
    )
    await synced(app)
    writes = istio_writes(control_plane, mark)
    assert [(w["verb"], w["objectRef"]["name"]) for w in writes] == [("patch", "cart")]
    assert app.sink.plans["changed"] > plans["changed"]
    assert app.sink.plans["full"] == plans["full"]
    assert app.sink.lists == lists  # what we own is known: not listed again per change

    # a service that left is deleted
    write_services(inline, [service("cart", "10.1.0.1", namespace=namespace)])
    await eventually(lambda: "pay" not in objects(kubectl, namespace), within=30)
    assert "cart" in objects(kubectl, namespace)
    assert app.sink.plans["full"] == plans["full"]


async def test_a_held_removal_is_not_deleted(
    tmp_path: Path,
    start_app: AppFactory,
    control_plane: ControlPlane,
    kubectl: Kubectl,
    namespace: str,
) -> None:
    path = tmp_path / "services.yaml"
    write_services(
        path, [service(f"svc{i}", f"10.3.0.{i + 1}", namespace=namespace) for i in range(4)]
    )
    app = await start_app(sink_settings(tmp_path, control_plane, namespace, static_entry(path)))
    await synced(app)
    assert len(objects(kubectl, namespace)) == 4
    mark = control_plane.audit_mark()
    write_services(path, [])  # everything gone at once: protection holds it
    await eventually(lambda: app.pipeline.registry_states()[0].hold is not None, within=30)
    await past_next_rebuild(app)
    await synced(app)
    assert len(objects(kubectl, namespace)) == 4
    assert istio_writes(control_plane, mark) == []
    # the operator confirms: then (and only then) they go
    assert app.pipeline.confirm(path.stem)
    await eventually(lambda: not objects(kubectl, namespace), within=30)


async def test_objects_of_others_are_never_touched(
    tmp_path: Path,
    start_app: AppFactory,
    control_plane: ControlPlane,
    kubectl: Kubectl,
    namespace: str,
) -> None:
    theirs = f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cart, namespace: {namespace}}}
spec:
  hosts: [cart.by-hand.example]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: unrelated, namespace: {namespace}, labels: {{{OWNER_LABEL}: someone-else}}}}
spec:
  hosts: [unrelated.example]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: DNS
"""
    kubectl.apply(theirs)
    before = {n: o["metadata"]["resourceVersion"] for n, o in objects(kubectl, namespace).items()}
    path = tmp_path / "services.yaml"
    write_services(
        path,
        [
            service("cart", "10.4.0.1", namespace=namespace),
            service("pay", "10.4.0.2", namespace=namespace),
        ],
    )
    settings = sink_settings(
        tmp_path, control_plane, namespace, static_entry(path), protection={"hold_empty": False}
    )
    app = await start_app(settings)
    assert app.sink is not None
    sink = app.sink
    await eventually(lambda: "pay" in objects(kubectl, namespace), within=60)
    await eventually(lambda: f"ServiceEntry/{namespace}/cart" in sink.status()["failed"], within=30)
    assert sink.status()["foreign"] == [f"ServiceEntry/{namespace}/cart"]
    # what the sink left unsynced is said: not synced, with the reason, as a problem too
    assert not sink.status()["synced"]
    (problem,) = app.admin.sink_problems()
    assert "1 objects not written" in problem.message
    write_services(path, [])  # ours go; theirs stay
    await eventually(lambda: "pay" not in objects(kubectl, namespace), within=30)
    after = {n: o["metadata"]["resourceVersion"] for n, o in objects(kubectl, namespace).items()}
    assert after == before
    kubectl.delete(theirs)


async def test_restart_and_leader_change_write_nothing_new(
    tmp_path: Path,
    control_plane: ControlPlane,
    kubectl: Kubectl,
    namespace: str,
) -> None:
    path = tmp_path / "services.yaml"
    write_services(
        path, [service(f"svc{i}", f"10.5.0.{i + 1}", namespace=namespace) for i in range(20)]
    )
    settings = sink_settings(tmp_path, control_plane, namespace, static_entry(path))
    first, second = App(settings), App(settings)
    stopped = False
    await first.start()
    try:
        await synced(first)
        assert len(objects(kubectl, namespace)) == 20
        await second.start()  # a standby: same owner, same lease
        await past_next_rebuild(second)
        assert second.sink is not None and not second.sink.lease.leading
        mark = control_plane.audit_mark()
        began = time.monotonic()
        await first.stop()  # hands the lease over
        stopped = True
        await synced(second)
        took = time.monotonic() - began
        assert second.sink.lease.leading
        assert istio_writes(control_plane, mark) == [], "the new leader rewrote unchanged objects"
        print(f"leader change: the standby synced {took:.2f}s after the leader stopped")
        # the new leader writes what changes from now on
        write_services(
            path, [service(f"svc{i}", f"10.5.0.{i + 1}", namespace=namespace) for i in range(19)]
        )
        await eventually(lambda: "svc19" not in objects(kubectl, namespace), within=30)
    finally:
        if not stopped:
            await first.stop()
        await second.stop()


async def test_what_the_sink_writes_reaches_ztunnel_in_ambient_mode(
    tmp_path: Path,
    start_app: AppFactory,
    start_istiod: IstiodFactory,
    control_plane: ControlPlane,
    kubectl: Kubectl,
    namespace: str,
) -> None:
    """Ambient's workload discovery reads ServiceEntries from the apiserver only (what an
    `xds://` source serves never reaches ztunnel: docs/deployment.md "Ambient mode"): with the
    sink, our services and their endpoints do, as Service and Workload addresses."""
    kubectl.run("label", "--overwrite", "namespace", namespace, "istio.io/dataplane-mode=ambient")
    path = tmp_path / "services.yaml"
    write_services(path, [service("cart", "10.6.0.1", "10.6.0.2", namespace=namespace)])
    app = await start_app(sink_settings(tmp_path, control_plane, namespace, static_entry(path)))
    await synced(app)
    host = objects(kubectl, namespace)["cart"]["spec"]["hosts"][0]
    # the apiserver is istiod's only source here: with xds:// as well it would get every
    # service twice
    istiod = await start_istiod(
        app.port, sources=[{"address": "k8s://"}], env={"PILOT_ENABLE_AMBIENT": "true"}
    )
    service_name = f"{namespace}/{host}"

    def has_service_and_workloads(names: set[str]) -> bool:
        workloads = [n for n in names if f"/ServiceEntry/{namespace}/cart" in n]
        return service_name in names and len(workloads) == 2

    names = await workload_addresses(istiod.grpc_port, has_service_and_workloads, within=60)
    assert service_name in names
    # a removal reaches ztunnel as well
    write_services(path, [service("cart", "10.6.0.1", namespace=namespace)])
    await workload_addresses(
        istiod.grpc_port,
        lambda n: len([x for x in n if f"/ServiceEntry/{namespace}/cart" in x]) == 1,
        within=60,
    )
