"""Our hand-written Nacos Payload codec against the protobuf runtime's own encoding of the same
messages (built from a descriptor at test time, with the field numbers of Nacos' proto)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from mcpserver.registry.nacos.client import NacosUnauthorizedError, NacosUnregisteredError, check
from mcpserver.registry.nacos.payload import Payload, PayloadError, decode, encode

pytestmark = pytest.mark.unit


def _classes() -> tuple[type[Message], type[Message]]:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(
        descriptor_pb2.FileDescriptorProto.FromString(
            any_pb2.DESCRIPTOR.serialized_pb
        ).SerializeToString()
    )
    f = descriptor_pb2.FileDescriptorProto(
        name="nacos_test.proto",
        package="nacostest",
        syntax="proto3",
        dependency=["google/protobuf/any.proto"],
    )
    meta = f.message_type.add(name="Metadata")
    string = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    message = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    meta.field.add(name="type", number=3, type=string, label=optional)
    meta.field.add(name="clientIp", number=8, type=string, label=optional)
    entry = meta.nested_type.add(name="HeadersEntry")
    entry.field.add(name="key", number=1, type=string, label=optional)
    entry.field.add(name="value", number=2, type=string, label=optional)
    entry.options.map_entry = True
    meta.field.add(
        name="headers",
        number=7,
        type=message,
        label=repeated,
        type_name=".nacostest.Metadata.HeadersEntry",
    )
    payload = f.message_type.add(name="Payload")
    payload.field.add(
        name="metadata", number=2, type=message, label=optional, type_name=".nacostest.Metadata"
    )
    payload.field.add(
        name="body", number=3, type=message, label=optional, type_name=".google.protobuf.Any"
    )
    pool.Add(f)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("nacostest.Payload")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("nacostest.Metadata")),
    )


PAYLOAD, _ = _classes()


def test_our_bytes_parse_as_protobuf_and_back() -> None:
    ours = Payload(
        "SubscribeServiceRequest",
        {"serviceName": "café", "groupName": "DEFAULT_GROUP", "subscribe": True},
        {"accessToken": "t" * 300, "x": ""},
        "10.0.0.1",
    )
    parsed: Any = PAYLOAD.FromString(encode(ours))
    assert parsed.metadata.type == "SubscribeServiceRequest"
    assert parsed.metadata.clientIp == "10.0.0.1"
    assert dict(parsed.metadata.headers) == {"accessToken": "t" * 300, "x": ""}
    assert json.loads(parsed.body.value) == ours.body
    assert decode(parsed.SerializeToString()) == ours


def test_protobuf_bytes_decode_with_unknown_fields_skipped() -> None:
    theirs: Any = PAYLOAD()
    theirs.metadata.type = "NotifySubscriberRequest"
    theirs.metadata.headers["a"] = "b"
    theirs.body.type_url = "ignored"
    theirs.body.value = json.dumps({"serviceInfo": {"name": "x", "hosts": []}}).encode()
    # fields Nacos does not have: a varint, a fixed64, a fixed32 and a string
    extra = bytes([0x08, 0x96, 0x01, 0x11]) + bytes(8) + bytes([0x1D]) + bytes(4)
    extra += bytes([0x52, 0x02]) + b"hi"
    payload = decode(theirs.SerializeToString() + extra)
    assert payload.type == "NotifySubscriberRequest"
    assert payload.headers == {"a": "b"}
    assert payload.body == {"serviceInfo": {"name": "x", "hosts": []}}


@pytest.mark.parametrize(
    "data",
    [
        b"\x12\x05ab",  # truncated length-delimited field
        b"\x12",  # truncated varint
        b"\x1a\x03\x12\x01{",  # body that is not JSON
        b"\x1a\x04\x12\x02[]",  # body that is JSON but not an object
        b"\x0b",  # wire type 3 (groups): not in this message
    ],
)
def test_garbage_is_a_payload_error(data: bytes) -> None:
    with pytest.raises(PayloadError):
        decode(data)


def test_an_empty_message_is_an_empty_payload() -> None:
    assert decode(b"") == Payload("", {})


def test_response_codes_have_their_meaning() -> None:
    ok = Payload("ServiceListResponse", {"resultCode": 200, "count": 1})
    assert check(ok)["count"] == 1
    with pytest.raises(NacosUnregisteredError):
        check(Payload("ErrorResponse", {"resultCode": 500, "errorCode": 301, "message": "x"}))
    with pytest.raises(NacosUnauthorizedError):
        check(Payload("ErrorResponse", {"resultCode": 500, "errorCode": 403, "message": "x"}))
