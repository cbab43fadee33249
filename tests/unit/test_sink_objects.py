"""The Kubernetes sink's pure decisions: the objects it sends and the plan that says what to
write and delete (what it must never touch above all)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from mcpserver.convert.serviceentry import convert
from mcpserver.model import Instance, Port, Service
from mcpserver.sink.objects import (
    MANAGED_BY_LABEL,
    OWNER_LABEL,
    VERSION_ANNOTATION,
    Key,
    desired,
    desired_among,
    plan,
    read_listed,
    to_object,
)
from mcpserver.xds.resources import PackedResource, pack
from mcpserver.xds.snapshot import build_snapshot

SE = "ServiceEntry"


def key(name: str, namespace: str = "shop") -> Key:
    return (SE, namespace, name)


def test_writes_only_what_differs_and_deletes_only_ours() -> None:
    wanted = {key("a"): "1", key("b"): "2", key("c"): "3"}
    ours = {key("a"): "1", key("b"): "old", key("gone"): "9"}
    found = plan(wanted, ours, foreign={key("c")})
    assert found.apply == (key("b"),)
    assert found.delete == (key("gone"),)
    assert found.foreign == (key("c"),)
    # nothing differs: nothing to do, whatever others hold
    assert not plan({key("a"): "1"}, {key("a"): "1"}, foreign={key("x")})


def test_a_name_another_owner_holds_is_never_ours() -> None:
    theirs = {"metadata": {"name": "a", "namespace": "shop", "labels": {OWNER_LABEL: "other"}}}
    unlabelled = {"metadata": {"name": "b", "namespace": "shop"}}
    mine = {
        "metadata": {
            "name": "c",
            "namespace": "shop",
            "labels": {OWNER_LABEL: "me"},
            "annotations": {VERSION_ANNOTATION: "v1"},
        }
    }
    assert not read_listed(SE, theirs, "me").ours
    assert not read_listed(SE, unlabelled, "me").ours
    listed = read_listed(SE, mine, "me")
    assert listed.ours and listed.version == "v1" and listed.key == key("c")


def test_the_object_is_the_served_resource() -> None:
    service = Service(
        registry="files",
        namespace="shop",
        name="cart",
        hosts=("cart.shop.svc",),
        ports=(Port("http", 8080, "HTTP"),),
        instances=(Instance("10.0.0.1", labels=(("zone", "a"),)),),
        create_time=datetime(2026, 1, 1, tzinfo=UTC),
    )
    packed = [
        pack(r.kind, r.namespace, r.name, r.spec, r.create_time, r.labels, r.annotations)
        for r in convert(service)
    ]
    resources = desired(build_snapshot(packed))
    resource = resources[key("cart")]
    obj = to_object(resource, "me")
    assert obj["apiVersion"] == "networking.istio.io/v1"
    assert obj["metadata"]["name"] == "cart" and obj["metadata"]["namespace"] == "shop"
    assert obj["metadata"]["labels"][OWNER_LABEL] == "me"
    assert obj["metadata"]["labels"][MANAGED_BY_LABEL] == "mcpserver"
    assert obj["metadata"]["labels"]["registry"] == "files"
    assert obj["metadata"]["annotations"][VERSION_ANNOTATION] == resource.version
    spec = obj["spec"]
    assert spec["hosts"] == ["cart.shop.svc"]
    assert spec["ports"] == [{"number": 8080, "protocol": "HTTP", "name": "http"}]
    assert spec["endpoints"][0]["address"] == "10.0.0.1"
    assert spec["endpoints"][0]["labels"]["zone"] == "a"


def served(versions: dict[str, int]) -> list[PackedResource]:
    """One ServiceEntry per name, its content (a port number) set by `versions`."""
    packed = []
    for name, number in versions.items():
        service = Service(
            registry="files",
            namespace="shop",
            name=name,
            hosts=(f"{name}.shop.svc",),
            ports=(Port("http", number, "HTTP"),),
            instances=(Instance("10.0.0.1"),),
            create_time=datetime(2026, 1, 1, tzinfo=UTC),
        )
        packed += [
            pack(r.kind, r.namespace, r.name, r.spec, r.create_time, r.labels, r.annotations)
            for r in convert(service)
        ]
    return packed


def test_a_plan_over_the_changed_names_is_the_plan_over_everything() -> None:
    """What the sink does between snapshots that follow each other: the apiserver holds the
    old set exactly, and only the names the new snapshot changed are planned over."""
    for seed in range(20):
        rng = random.Random(seed)
        old = {f"s{i}": rng.choice((80, 81)) for i in range(rng.randrange(0, 30))}
        new = {n: v for n, v in old.items() if rng.random() > 0.2}
        new |= {n: rng.choice((80, 81, 82)) for n in rng.sample(list(old) or ["x"], len(old) // 3)}
        new |= {f"n{i}": 80 for i in range(rng.randrange(0, 5))}
        old_set, new_set = build_snapshot(served(old)), build_snapshot(served(new))
        ours = {k: r.version for k, r in desired(old_set).items()}
        full = desired(new_set)
        everything = plan({k: r.version for k, r in full.items()}, ours, foreign=())
        was = {r.name: r.version for s in old_set.sets.values() for r in s.resources}
        now = {r.name: r.version for s in new_set.sets.values() for r in s.resources}
        changed = {n for n in was.keys() | now.keys() if was.get(n) != now.get(n)}
        touched = {SE: changed, "WorkloadEntry": set()}
        resources, asked = desired_among(new_set, touched)
        assert resources == {k: full[k] for k in asked if k in full}
        part = plan(
            {k: r.version for k, r in resources.items()},
            {k: ours[k] for k in asked if k in ours},
            foreign=(),
        )
        assert part == everything, seed
