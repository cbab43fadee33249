"""Nacos 2.x/3.x's one gRPC message, `Payload`, encoded and decoded by hand.

Every Nacos gRPC call carries the same message (Nacos' `nacos_grpc_service.proto`):

    message Metadata { string type = 3; string clientIp = 8; map<string, string> headers = 7; }
    message Payload  { Metadata metadata = 2; google.protobuf.Any body = 3; }

`type` names the request or response class (`SubscribeServiceRequest`), `body.value` is that
object as JSON, and `body.type_url` is unused. Three small messages do not earn a proto file,
generated code and a descriptor pool: this module writes and reads their protobuf wire format
directly (varint tags and lengths, with wire.py; length-delimited strings; a map is a repeated
entry message {1: key, 2: value}), and skips fields it does not know, as protobuf parsers
must. The unit tests check it against the protobuf runtime.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mcpserver.wire import WireError, decode_varint, encode_varint

_LEN = 2  # wire type: length-delimited
_VARINT = 0
_I64 = 1
_I32 = 5


class PayloadError(ValueError):
    """Bytes that are not a Payload, or a body that is not a JSON object."""


@dataclass(frozen=True, slots=True)
class Payload:
    type: str
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)
    client_ip: str = ""


def _field(number: int, data: bytes) -> bytes:
    return encode_varint(number << 3 | _LEN) + encode_varint(len(data)) + data


def encode(payload: Payload) -> bytes:
    """A Payload's protobuf bytes; the body is compact JSON."""
    metadata = _field(3, payload.type.encode())
    for key, value in sorted(payload.headers.items()):
        metadata += _field(7, _field(1, key.encode()) + _field(2, value.encode()))
    if payload.client_ip:
        metadata += _field(8, payload.client_ip.encode())
    body = json.dumps(dict(payload.body), separators=(",", ":")).encode()
    return _field(2, metadata) + _field(3, _field(2, body))


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    try:
        return decode_varint(data, at)
    except WireError as err:  # a bad message is a PayloadError, whatever part of it is bad
        raise PayloadError(str(err)) from None


def _fields(data: bytes) -> list[tuple[int, bytes]]:
    """The length-delimited fields of one message, by number; other wire types skipped."""
    found = []
    at = 0
    while at < len(data):
        tag, at = _read_varint(data, at)
        number, wire = tag >> 3, tag & 7
        if wire == _LEN:
            size, at = _read_varint(data, at)
            if at + size > len(data):
                raise PayloadError("truncated field")
            found.append((number, data[at : at + size]))
            at += size
        elif wire == _VARINT:
            _, at = _read_varint(data, at)
        elif wire == _I64:
            at += 8
        elif wire == _I32:
            at += 4
        else:
            raise PayloadError(f"unsupported wire type {wire}")
    if at != len(data):
        raise PayloadError("truncated field")
    return found


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("a string field is not UTF-8") from None


def decode(data: bytes) -> Payload:
    """A Payload from protobuf bytes; PayloadError if it is not one or its body is not a
    JSON object."""
    kind, client_ip, body = "", "", b""
    headers: dict[str, str] = {}
    for number, value in _fields(data):
        if number == 2:  # metadata
            for inner, part in _fields(value):
                if inner == 3:
                    kind = _text(part)
                elif inner == 8:
                    client_ip = _text(part)
                elif inner == 7:
                    entry = dict(_fields(part))
                    headers[_text(entry.get(1, b""))] = _text(entry.get(2, b""))
        elif number == 3:  # body: google.protobuf.Any
            body = dict(_fields(value)).get(2, b"")
    try:
        parsed = json.loads(body) if body else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PayloadError(f"{kind or 'payload'} body is not JSON: {err}") from None
    if not isinstance(parsed, dict):
        raise PayloadError(f"{kind or 'payload'} body is not a JSON object")
    return Payload(kind, parsed, headers, client_ip)
