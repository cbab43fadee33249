"""The pure rebuild: merge, convert, validate, pack; work proportional to what changed."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from mcpserver.builder import Builder, BuildInputs, build
from mcpserver.model import Instance, Port, Service
from mcpserver.registry.view import Status, View
from mcpserver.xds.client import decode_resource

pytestmark = pytest.mark.unit

CIDR = "240.241.0.0/16"
NONE = BuildInputs({}, CIDR)


def svc(name: str, *addresses: str, registry: str = "r1", **extra: Any) -> Service:
    return Service(
        registry=registry,
        namespace="shop",
        name=name,
        hosts=(f"{name}.shop.mesh",),
        ports=(Port("http", 80, "HTTP"),),
        instances=tuple(Instance(a) for a in addresses),
        **extra,
    )


def view(*services: Service, registry: str = "r1") -> View:
    return View(registry, tuple(services), synced=True, status=Status.READY)


def test_only_changed_services_are_reencoded() -> None:
    services = [svc(f"s{i}", f"10.0.0.{i}") for i in range(50)]
    builder = Builder(NONE)
    first = builder.build([view(*services)])
    assert first.encoded == 50
    changed = list(services)
    changed[7] = svc("s7", "10.0.9.9")
    # equal-but-new objects are recognised too (static files re-parse everything)
    changed[8] = svc("s8", "10.0.0.8")
    second = builder.build([view(*changed)])
    assert second.encoded == 1
    old = {r.name: r.version for r in first.snapshot.sets["ServiceEntry"].resources}
    new = {r.name: r.version for r in second.snapshot.sets["ServiceEntry"].resources}
    assert {n for n in old if old[n] != new[n]} == {"shop/s7"}


def test_invalid_withheld_valid_flow() -> None:
    result = build([view(svc("ok", "10.0.0.1"), svc("bad", "not-an-ip"))], NONE)
    names = [r.name for r in result.snapshot.sets["ServiceEntry"].resources]
    assert names == ["shop/ok"]
    (problem,) = result.problems
    assert problem.subject == "ServiceEntry shop/bad"
    assert "not a valid IP address" in problem.message


def test_empty_services_are_removed_unless_kept() -> None:
    empty = svc("empty")
    assert build([view(empty)], NONE).snapshot.sets["ServiceEntry"].resources == ()
    kept = (
        build([view(empty)], BuildInputs({"r1": True}, CIDR))
        .snapshot.sets["ServiceEntry"]
        .resources
    )
    assert [r.name for r in kept] == ["shop/empty"]
    dns = replace(empty, resolution="DNS")
    assert build([view(dns)], NONE).snapshot.sets["ServiceEntry"].resources != ()


def test_name_clash_first_registry_wins() -> None:
    a = svc("cart", "10.0.0.1", registry="r1")
    b = svc("cart", "10.0.0.2", registry="r2")
    result = build([view(a), view(b, registry="r2")], NONE)
    (resource,) = result.snapshot.sets["ServiceEntry"].resources
    assert resource.decode().body.value.find(b"10.0.0.1") >= 0
    (problem,) = result.problems
    assert problem.registry == "r2" and "already served by registry 'r1'" in problem.message


def test_workloadentry_mode() -> None:
    service = svc("cart", "10.0.0.1", "10.0.0.2", endpoints_mode="workloadentry")
    result = build([view(service)], NONE)
    entries = result.snapshot.sets["WorkloadEntry"].resources
    assert len(entries) == 2
    assert all(e.name.startswith("shop/cart-") for e in entries)
    spec = decode_resource(result.snapshot.sets["ServiceEntry"].resources[0].to_any()).service_entry
    assert dict(spec.workload_selector.labels) == {
        "mcpserver.io/service": "cart",
        "registry": "r1",
    }
    assert len(spec.endpoints) == 0


def test_same_host_from_two_registries_first_policy() -> None:
    static = replace(svc("cart", "10.0.0.1", registry="static"), hosts=("cart.mesh",))
    zk = replace(svc("cart-zk", "10.0.0.2", registry="zk"), hosts=("cart.mesh",))
    result = build([view(static, registry="static"), view(zk, registry="zk")], NONE)
    assert [r.name for r in result.snapshot.sets["ServiceEntry"].resources] == ["shop/cart"]
    (problem,) = result.problems
    assert problem.registry == "zk"
    assert "host 'cart.mesh' already served by registry 'static'" in problem.message


def test_same_host_from_two_registries_union_policy() -> None:
    static = replace(svc("cart", "10.0.0.1", registry="static"), hosts=("cart.mesh",))
    zk = replace(
        svc("cart-zk", "10.0.0.2", "10.0.0.1", registry="zk"),
        hosts=("cart.mesh",),
        ports=(Port("http", 80, "HTTP"), Port("grpc", 90, "GRPC")),
    )
    union = BuildInputs({}, CIDR, "union")
    result = build([view(static, registry="static"), view(zk, registry="zk")], union)
    (resource,) = result.snapshot.sets["ServiceEntry"].resources
    assert resource.name == "shop/cart"
    spec = decode_resource(resource.to_any()).service_entry
    assert [p.name for p in spec.ports] == ["http", "grpc"]
    endpoints = {e.address: e.labels["registry"] for e in spec.endpoints}
    assert endpoints == {"10.0.0.1": "static", "10.0.0.2": "zk"}
    assert result.problems == ()


def test_served_counts_what_reaches_istiod_per_registry() -> None:
    """`served` (mcpserver_registry_services, the status page) counts services in the
    snapshot: not one withheld as invalid, emptied, or lost to another registry's name; and
    it follows each incremental build."""
    builder = Builder(NONE)
    r1 = view(
        svc("ok", "10.0.0.1", "10.0.0.2"),
        svc("bad", "not-an-ip"),  # withheld: Istio would reject it
        svc("empty"),  # no instances: not served
        svc("wide", "10.0.0.3", endpoints_mode="workloadentry"),
    )
    r2 = view(svc("ok", "10.0.0.9", registry="r2"), svc("own", "10.0.0.8", registry="r2"))
    first = builder.build([r1, replace(r2, registry="r2")])
    assert first.served == {"r1": (2, 3), "r2": (1, 1)}  # r2's `ok` clashes with r1's
    # r1 drops `ok`: r2's is served now; `bad` becomes valid
    r1 = view(svc("bad", "10.0.0.4"), svc("wide", "10.0.0.3", endpoints_mode="workloadentry"))
    second = builder.build([r1, replace(r2, registry="r2")])
    assert second.served == {"r1": (2, 2), "r2": (2, 2)}
    assert builder.build([view(), replace(r2, registry="r2", services=())]).served == {}
