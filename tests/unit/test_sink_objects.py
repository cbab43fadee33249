"""The Kubernetes sink's pure decisions: the objects it sends and the plan that says what to
write and delete (what it must never touch above all)."""

from __future__ import annotations

from datetime import UTC, datetime

from mcpserver.convert.serviceentry import convert
from mcpserver.model import Instance, Port, Service
from mcpserver.sink.objects import (
    MANAGED_BY_LABEL,
    OWNER_LABEL,
    VERSION_ANNOTATION,
    Key,
    desired,
    plan,
    read_listed,
    to_object,
)
from mcpserver.xds.resources import pack
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
