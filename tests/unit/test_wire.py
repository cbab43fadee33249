"""Varints: the same bytes as protobuf's own encoder and decoder, and what a cut one is."""

from __future__ import annotations

import pytest

from mcpserver.wire import WireError, decode_varint, encode_varint, field

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
