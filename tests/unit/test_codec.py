"""What protection remembers, as JSON (codec.py): exact round trips, shared services written
once, and malformed documents refused naming where."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from mcpserver.codec import (
    CodecError,
    Document,
    GraceRecord,
    HeldRecord,
    Point,
    Record,
    decode_document,
    encode_document,
)
from mcpserver.model import Instance, Port, Service

pytestmark = pytest.mark.unit

FULL = Service(
    "zk",
    "dubbo",
    "org.example.orders",
    ("org.example.orders", "orders.mesh"),
    (Port("tcp-dubbo", 20880, "TCP", 20881), Port("http", 8080, "HTTP")),
    (
        Instance("10.0.0.1"),
        Instance(
            "10.0.0.2",
            ports=(("tcp-dubbo", 20882),),
            labels=(("version", "v2"), ("zone", "a")),
            weight=3,
            locality="us-east/zone-a",
            network="net1",
            service_account="spiffe://x/ns/y/sa/z",
        ),
    ),
    addresses=("240.0.0.7",),
    labels=(("registry", "zk"),),
    annotations=(("note", "é ✓"),),
    export_to=(".",),
    location="MESH_EXTERNAL",
    resolution="DNS",
    endpoints_mode="workloadentry",
    create_time=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
)
PLAIN = Service("zk", "dubbo", "plain", ("plain",), (Port("tcp", 1),), (Instance("10.1.0.1"),))


def roundtrip(document: Document) -> Document:
    return decode_document(json.loads(json.dumps(encode_document(document))))


def test_every_field_survives_and_shared_services_are_written_once() -> None:
    first = Point(100.5, (FULL, PLAIN))
    last = Point(160.25, (FULL,), origin="peer 10.0.0.9:15052")
    record = Record(
        (first, last),
        HeldRecord(150.0, "update removes ...", "mass removal", first),
        GraceRecord(140.0, 230.0, "reconnected to Nacos"),
    )
    document = Document("r1", 170.0, True, {"zk": record})
    encoded = encode_document(document)
    assert len(encoded["registries"]["zk"]["services"]) == 2  # FULL once for three views
    back = roundtrip(document)
    assert back == document
    (got,) = back.records.values()
    assert got.checkpoints[0].services[0] == FULL
    assert got.checkpoints[0].services[0] is got.checkpoints[1].services[0]  # shared again


def test_equal_services_are_written_once_whichever_objects_they_are() -> None:
    """A Service converted again to the same value (another object) is the same record:
    what is written depends on values only."""
    again = dataclasses.replace(FULL)
    assert again == FULL and again is not FULL
    record = Record((Point(1.0, (FULL, PLAIN)), Point(2.0, (again, PLAIN))))
    encoded = encode_document(Document("r", 3.0, True, {"zk": record}))
    assert len(encoded["registries"]["zk"]["services"]) == 2
    assert encoded["registries"]["zk"]["checkpoints"][1]["services"] == [0, 1]


def test_defaults_are_left_out() -> None:
    encoded = encode_document(Document("r", 1.0, False, {"zk": Record((Point(1.0, (PLAIN,)),))}))
    (service,) = encoded["registries"]["zk"]["services"]
    assert set(service) == {"registry", "namespace", "name", "hosts", "ports", "instances"}
    assert service["instances"] == [{"address": "10.1.0.1"}]


def mangle(path: list[Any], value: object) -> dict[str, Any]:
    good = encode_document(Document("r", 1.0, True, {"zk": Record((Point(1.0, (FULL,)),))}))
    node: Any = good
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return good


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["format"], 2, "format 2"),
        (["primed"], "yes", "primed"),
        (["registries"], [], "registries: expected an object"),
        (["registries", "zk", "checkpoints"], [], "registry zk: checkpoints: empty"),
        (["registries", "zk", "checkpoints", 0, "services"], [5], "index 5 out of range"),
        (["registries", "zk", "checkpoints", 0, "at"], "now", "checkpoints[0].at"),
        (["registries", "zk", "services", 0, "ports", 0], ["tcp", "x", "TCP", 0], "ports[0]"),
        (["registries", "zk", "services", 0, "instances", 1, "weight"], True, "weight"),
        (["registries", "zk", "services", 0, "create_time"], "yesterday", "create_time"),
        (["registries", "zk", "hold"], {"since": 1.0}, "hold.reason"),
    ],
)
def test_a_malformed_document_is_refused_naming_where(
    path: list[Any], value: object, message: str
) -> None:
    with pytest.raises(CodecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        decode_document(mangle(path, value))


def test_not_a_document_at_all() -> None:
    cases: list[object] = [None, [], "x", {"format": 1}]
    for data in cases:
        with pytest.raises(CodecError):
            decode_document(data)
