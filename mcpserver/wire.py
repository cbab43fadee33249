"""Protobuf's base-128 varints, length-delimited fields and map entries, written and read by
hand.

Four places write protobuf bytes without the protobuf runtime: the xDS responses (framed
resources are joined as bytes, xds/resources.py), a ServiceEntry's endpoints (spliced into
its serialized spec, convert/serviceentry.py, and each written from its Instance,
convert/inline.py) and Nacos' one gRPC message (registry/nacos/payload.py). They share
this one encoding of varints (tags and lengths) and of maps in upb's deterministic order,
low in the layers so that none of them needs another for it; and the builder finds a
ServiceEntry's endpoints in its bytes again (`spans_of`). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

_SHORT_VARINTS: tuple[bytes, ...] = tuple(
    bytes([v]) if v < 0x80 else bytes([(v & 0x7F) | 0x80, v >> 7]) for v in range(1 << 14)
)
"""The one- and two-byte varints, made once (about 0.5 MB): nearly every length we frame is
below 16 KiB, and a changed service frames about thirty of them."""

MAX_BYTES = 10  # a varint of a 64-bit value takes at most ten bytes


class WireError(ValueError):
    """Bytes that end inside a varint, or one longer than a 64-bit value's."""


def encode_varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    if value < 0x4000:
        return _SHORT_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint starting at `data[at]`, and where the next field starts; WireError if
    the bytes end first or it runs past ten bytes."""
    value = shift = 0
    while True:
        if at >= len(data) or shift >= 7 * MAX_BYTES:
            raise WireError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def spans_of(data: bytes, number: int) -> list[int]:
    """Where the payloads of the top-level length-delimited fields `number` of one message
    lie in its bytes, in order, as flat (start, end) pairs; the other fields skipped.
    WireError if the bytes are not a message's."""
    found: list[int] = []
    at, end = 0, len(data)
    while at < end:
        tag, at = decode_varint(data, at)
        wire = tag & 7
        if wire == 2:
            size, at = decode_varint(data, at)
            if tag >> 3 == number:
                found += (at, at + size)
            at += size
        elif wire == 0:
            _, at = decode_varint(data, at)
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise WireError(f"wire type {wire} in a message's fields")
    if at != end:
        raise WireError("truncated field")
    return found


def field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length, the payload."""
    size = len(payload)  # encode_varint's short case without its call: a field per value
    return tag + (_SHORT_VARINTS[size] if size < 0x4000 else encode_varint(size)) + payload


def string_map(tag: bytes, pairs: Iterable[tuple[str, str]]) -> list[bytes]:
    """A map<string, string> field as protobuf's deterministic serializer writes it: one
    entry message {1: key, 2: value} per key (the last of repeated keys wins), both always
    written, in upb's order (`upb_order`)."""
    return [
        field(tag, field(b"\x0a", key) + field(b"\x12", value.encode()))
        for key, value in sorted(((k.encode(), v) for k, v in dict(pairs).items()), key=upb_order)
    ]


def uint_map(tag: bytes, pairs: Iterable[tuple[str, int]]) -> list[bytes]:
    """A map<string, uint32> field likewise: entries {1: key, 2: varint value}."""
    return [
        field(tag, field(b"\x0a", key) + b"\x10" + encode_varint(value))
        for key, value in sorted(((k.encode(), v) for k, v in dict(pairs).items()), key=upb_order)
    ]


def upb_order(pair: tuple[bytes, object]) -> bytes:
    """upb's deterministic order of map entries: by key bytes, and of two keys where one is
    a prefix of the other, the longer first (a 0xff, which UTF-8 never holds, after each key
    sorts exactly so)."""
    return pair[0] + b"\xff"
