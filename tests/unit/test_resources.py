"""Packing: the exact wire shape istiod's adsc unpacks, and content-hash versions."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from mcpserver_protos.istio.mcp.v1alpha1 import resource_pb2
from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2

from mcpserver.wire import encode_varint
from mcpserver.xds.client import decode_resource
from mcpserver.xds.resources import content_version, encode_response, pack, pack_bytes
from mcpserver.xds.snapshot import EMPTY, build_snapshot

pytestmark = pytest.mark.unit

WHEN = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def entry(*hosts: str) -> service_entry_pb2.ServiceEntry:
    return service_entry_pb2.ServiceEntry(
        hosts=list(hosts),
        ports=[service_entry_pb2.ServicePort(number=80, name="http", protocol="HTTP")],
        resolution=service_entry_pb2.ServiceEntry.STATIC,
        endpoints=[{"address": "10.0.0.1", "labels": {"b": "2", "a": "1"}}],
    )


def test_wire_shape_matches_adsc_expectations() -> None:
    packed = pack("ServiceEntry", "shop", "cart", entry("cart.shop"), WHEN, [("registry", "r")])
    response = discovery_pb2.DiscoveryResponse.FromString(
        encode_response("v1", "networking.istio.io/v1/ServiceEntry", "n1", packed.framed)
    )
    assert response.version_info == "v1"
    assert response.nonce == "n1"
    assert response.type_url == "networking.istio.io/v1/ServiceEntry"
    (outer,) = response.resources
    # not wrapped in envoy's discovery Resource: the Any names the MCP Resource directly
    assert outer.type_url == "type.googleapis.com/istio.mcp.v1alpha1.Resource"
    resource = resource_pb2.Resource()
    assert outer.Unpack(resource)
    assert resource.metadata.name == "shop/cart"
    assert resource.metadata.version == packed.version
    assert resource.metadata.create_time.ToDatetime(tzinfo=UTC) == WHEN
    assert dict(resource.metadata.labels) == {"registry": "r"}
    # the body is always v1alpha3, even for the v1 GVK
    assert resource.body.type_url == "type.googleapis.com/istio.networking.v1alpha3.ServiceEntry"
    decoded = decode_resource(outer)
    assert list(decoded.service_entry.hosts) == ["cart.shop"]
    assert packed.decode() == resource


def test_version_is_a_content_hash() -> None:
    a = pack("ServiceEntry", "shop", "cart", entry("cart.shop"), WHEN)
    again = pack(
        "ServiceEntry", "shop", "cart", entry("cart.shop"), datetime(2030, 1, 1, tzinfo=UTC)
    )
    changed = pack("ServiceEntry", "shop", "cart", entry("cart.shop", "cart.alt"), WHEN)
    relabelled = pack("ServiceEntry", "shop", "cart", entry("cart.shop"), WHEN, [("x", "y")])
    assert a.version and a.version == again.version
    assert len({a.version, changed.version, relabelled.version}) == 3


def test_map_order_does_not_change_bytes() -> None:
    one = entry("h.x")
    two = entry("h.x")
    two.endpoints[0].labels.clear()
    two.endpoints[0].labels["a"] = "1"
    two.endpoints[0].labels["b"] = "2"
    assert (
        pack("ServiceEntry", "n", "s", one, WHEN).framed
        == pack("ServiceEntry", "n", "s", two, WHEN).framed
    )


def test_snapshot_groups_sorts_and_versions() -> None:
    b = pack("ServiceEntry", "shop", "b", entry("b.shop"), WHEN)
    a = pack("ServiceEntry", "shop", "a", entry("a.shop"), WHEN)
    snap = build_snapshot([b, a])
    type_set = snap.for_type_url("networking.istio.io/v1alpha3/ServiceEntry")
    assert [r.name for r in type_set.resources] == ["shop/a", "shop/b"]
    assert type_set.blob == a.framed + b.framed
    assert snap.for_type_url("networking.istio.io/v1/VirtualService") is EMPTY
    assert snap.for_type_url("networking.istio.io/v1/WorkloadEntry").resources == ()
    assert build_snapshot([a, b]).version == snap.version
    assert build_snapshot([a]).version != snap.version


def _by_messages(
    kind: str,
    name: str,
    version: str,
    body: bytes,
    when: datetime,
    labels: dict[str, str],
    annotations: dict[str, str],
) -> bytes:
    """What the hand encoder must equal: the same Any built with the message classes."""
    from google.protobuf import any_pb2, timestamp_pb2
    from mcpserver_protos.istio.mcp.v1alpha1 import metadata_pb2

    from mcpserver.xds.typeurls import BODY_TYPE, RESOURCE_TYPE

    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromDatetime(when)
    resource = resource_pb2.Resource(
        metadata=metadata_pb2.Metadata(
            name=name,
            create_time=timestamp,
            version=version,
            labels=labels,
            annotations=annotations,
        ),
        body=any_pb2.Any(type_url=BODY_TYPE[kind], value=body),
    )
    outer = any_pb2.Any(
        type_url=RESOURCE_TYPE, value=resource.SerializeToString(deterministic=True)
    )
    return outer.SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    ("when", "labels", "annotations"),
    [
        (WHEN, {"b": "2", "a": "1", "registry": "zk"}, {}),
        (datetime(2000, 1, 1, tzinfo=UTC), {}, {"note": ""}),  # zero nanos; an empty value
        (
            datetime(1970, 1, 1, tzinfo=UTC),
            {"": "x", "é": "ü", "a": "1", "ab": "2"},
            {"z": "1", "a": "2"},
        ),
        (datetime(2031, 7, 9, 3, 4, 5, 678901, tzinfo=UTC), {"k": "v" * 300}, {}),
        (datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), {}, {}),  # negative seconds
    ],
)
def test_hand_encoded_resource_equals_the_message_classes(
    when: datetime, labels: dict[str, str], annotations: dict[str, str]
) -> None:
    for spec in (entry("a.mesh"), service_entry_pb2.ServiceEntry()):  # an empty body too
        packed = pack(
            "ServiceEntry", "ns", "svc", spec, when, sorted(labels.items()), annotations.items()
        )
        body = spec.SerializeToString(deterministic=True)
        want = _by_messages(
            "ServiceEntry", "ns/svc", packed.version, body, when, labels, annotations
        )
        assert packed.framed == b"\x12" + encode_varint(len(want)) + want


Case = tuple[str, str, bytes, list[tuple[str, str]], list[tuple[str, str]]]
"""kind, name, body, labels, annotations"""


def versions_as_first_written(case: Case) -> str:
    """content_version as it hashed before it hashed in one call: part by part. Versions
    must not move across a release (replicas of two releases serve the same set)."""
    kind, name, body, labels, annotations = case
    digest = hashlib.blake2b(digest_size=10)
    for part in (kind, name):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(body)
    for key, value in sorted(labels):
        digest.update(f"\0l{key}={value}".encode())
    for key, value in sorted(annotations):
        digest.update(f"\0a{key}={value}".encode())
    return digest.hexdigest()


pairs = st.lists(st.tuples(st.text(max_size=4), st.text(max_size=4)), max_size=3)
cases = st.tuples(
    st.sampled_from(["ServiceEntry", "WorkloadEntry"]), st.text(), st.binary(), pairs, pairs
)


@settings(derandomize=True, database=None, deadline=None, max_examples=300)
@given(cases)
def test_versions_hash_what_they_always_hashed(case: Case) -> None:
    kind, name, body, labels, annotations = case
    assert content_version(*case) == versions_as_first_written(case)
    namespace, _, short = name.partition("/")
    packed = pack_bytes(kind, namespace, short, body, WHEN, labels, annotations)
    assert packed.version == versions_as_first_written((kind, packed.name, *case[2:]))
