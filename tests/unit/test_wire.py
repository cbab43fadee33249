"""Varints: the same bytes as protobuf's own encoder and decoder, and what a cut one is."""

from __future__ import annotations

import pytest

from mcpserver.wire import WireError, decode_varint, encode_varint, field, spans_of

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**21, 2**35])
def test_varint_matches_protobuf(value: int) -> None:
    from google.protobuf.internal import encoder

    assert encode_varint(value) == encoder._VarintBytes(value)  # type: ignore[attr-defined]  # protobuf's private varint encoder, the reference


def test_every_tabled_varint_matches_protobuf() -> None:
    """The one- and two-byte varints come from a table made at import: all of it is right."""
    from google.protobuf.internal import encoder

    wrong = [v for v in range(1 << 14) if encode_varint(v) != encoder._VarintBytes(v)]  # type: ignore[attr-defined]
    assert not wrong


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**21, 2**35, 2**64 - 1])
def test_decoded_varint_matches_protobuf(value: int) -> None:
    from google.protobuf.internal import decoder, encoder

    data = b"\xff" + encoder._VarintBytes(value) + b"\x01"  # type: ignore[attr-defined]  # protobuf's private varint encoder, the reference
    theirs, end = decoder._DecodeVarint(data, 1)  # type: ignore[attr-defined]  # and its decoder
    assert decode_varint(data, 1) == (theirs, end) == (value, len(data) - 1)


@pytest.mark.parametrize(
    "data",
    [
        b"",  # nothing at all
        b"\x80",  # a continuation bit, then the end
        b"\xff" * 10 + b"\x01",  # eleven bytes: longer than any 64-bit value's
    ],
)
def test_a_cut_or_overlong_varint_is_a_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        decode_varint(data, 0)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 70000])
def test_a_field_is_its_tag_its_length_and_its_payload(size: int) -> None:
    payload = b"x" * size
    framed = field(b"\x0a", payload)
    assert framed[:1] == b"\x0a"
    assert decode_varint(framed, 1) == (size, len(framed) - size)
    assert framed.endswith(payload)


def test_spans_of_finds_one_fields_payloads_past_every_wire_type() -> None:
    from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2

    spec = service_entry_pb2.ServiceEntry(
        hosts=["a.mesh"],
        ports=[service_entry_pb2.ServicePort(number=80, protocol="HTTP", name="http")],
        location=service_entry_pb2.ServiceEntry.MESH_INTERNAL,
        resolution=service_entry_pb2.ServiceEntry.STATIC,
        endpoints=[
            {"address": "10.0.0.1", "weight": 3},
            {"address": "10.0.0.2", "labels": {"zone": "z1"}},
        ],
        export_to=["."],
    )
    data = spec.SerializeToString(deterministic=True)
    spans = spans_of(data, 6)
    found = [data[spans[n] : spans[n + 1]] for n in range(0, len(spans), 2)]
    assert found == [e.SerializeToString(deterministic=True) for e in spec.endpoints]
    # fixed 32- and 64-bit fields are skipped by their width (a float, a double)
    mixed = b"\x0d" + b"\x00" * 4 + b"\x11" + b"\x00" * 8 + b"\x32\x02ab"
    assert spans_of(mixed, 6) == [16, 18]


@pytest.mark.parametrize("data", [b"\x32\x05ab", b"\x32", b"\x0b"])
def test_spans_of_a_cut_or_foreign_message_is_a_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        spans_of(data, 6)
