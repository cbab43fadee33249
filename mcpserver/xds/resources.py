"""Packing one Istio resource the way istiod's adsc client unpacks it, once, with its version.

Wire shape (pkg/adsc/adsc.go handleMCP and mcpToPilot; pkg/config/conversion.go
PilotConfigToResource): each DiscoveryResponse resource is an Any of istio.mcp.v1alpha1.Resource,
not wrapped in envoy's discovery Resource; its body is an Any of the v1alpha3 spec;
metadata.name is `namespace/name`. metadata.version is a content hash: istiod skips updates
whose version did not change, and re-applies (and pushes) on every response when it is empty.

A PackedResource keeps the bytes already framed as field 2 of DiscoveryResponse, so building a
response for N resources is a byte join, and a rebuild re-encodes only what changed.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message
from mcpserver_protos.istio.mcp.v1alpha1 import metadata_pb2, resource_pb2

from mcpserver.xds.typeurls import BODY_TYPE, RESOURCE_TYPE

_RESOURCES_FIELD = b"\x12"  # DiscoveryResponse.resources = 2, length-delimited
_VERSION_FIELD = b"\x0a"  # version_info = 1
_TYPE_URL_FIELD = b"\x22"  # type_url = 4
_NONCE_FIELD = b"\x2a"  # nonce = 5


def encode_varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + encode_varint(len(payload)) + payload


@dataclass(frozen=True, slots=True)
class PackedResource:
    """One resource ready for the wire: name, content-hash version and framed bytes."""

    kind: str
    name: str
    version: str
    framed: bytes
    digest: int = field(default=0, repr=False, compare=False)
    """A 128-bit hash of name and version: set versions are sums of these (snapshot.py)."""

    def __post_init__(self) -> None:
        ident = f"{self.name}\0{self.version}".encode()
        object.__setattr__(
            self, "digest", int.from_bytes(hashlib.blake2b(ident, digest_size=16).digest())
        )

    def to_any(self) -> any_pb2.Any:
        """The Any as it travels in DiscoveryResponse.resources."""
        outer = any_pb2.Any()
        outer.ParseFromString(_unframe(self.framed))
        return outer

    def decode(self) -> resource_pb2.Resource:
        """The istio.mcp.v1alpha1.Resource inside (for debugging endpoints and tests)."""
        resource = resource_pb2.Resource()
        self.to_any().Unpack(resource)
        return resource


def _unframe(framed: bytes) -> bytes:
    """Strip the field tag and length prefix that frame an Any inside DiscoveryResponse."""
    pos = 1
    shift = 0
    length = 0
    while True:
        byte = framed[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            break
        shift += 7
    return framed[pos : pos + length]


def content_version(
    kind: str,
    name: str,
    body: bytes,
    labels: Iterable[tuple[str, str]],
    annotations: Iterable[tuple[str, str]],
) -> str:
    """A short, stable hash of everything istiod stores for the resource except create_time."""
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


def pack(
    kind: str,
    namespace: str,
    name: str,
    body: Message,
    create_time: datetime,
    labels: Iterable[tuple[str, str]] = (),
    annotations: Iterable[tuple[str, str]] = (),
) -> PackedResource:
    """Encode one spec message as an MCP resource; deterministic bytes give a stable version."""
    body_bytes = body.SerializeToString(deterministic=True)
    labels = tuple(labels)
    annotations = tuple(annotations)
    full_name = f"{namespace}/{name}"
    version = content_version(kind, full_name, body_bytes, labels, annotations)
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromDatetime(create_time)
    resource = resource_pb2.Resource(
        metadata=metadata_pb2.Metadata(
            name=full_name,
            create_time=timestamp,
            version=version,
            labels=dict(labels),
            annotations=dict(annotations),
        ),
        body=any_pb2.Any(type_url=BODY_TYPE[kind], value=body_bytes),
    )
    outer = any_pb2.Any(
        type_url=RESOURCE_TYPE, value=resource.SerializeToString(deterministic=True)
    )
    framed = _field(_RESOURCES_FIELD, outer.SerializeToString(deterministic=True))
    return PackedResource(kind=kind, name=full_name, version=version, framed=framed)


def encode_response(
    version_info: str, type_url: str, nonce: str, resources: bytes | Iterable[bytes]
) -> bytes:
    """A serialized envoy DiscoveryResponse around resources already framed by pack() (their
    bytes joined, or each resource's own)."""
    parts = [resources] if isinstance(resources, bytes) else resources
    return b"".join(
        itertools.chain(
            (_field(_VERSION_FIELD, version_info.encode()),),
            parts,
            (
                _field(_TYPE_URL_FIELD, type_url.encode()),
                _field(_NONCE_FIELD, nonce.encode()),
            ),
        )
    )
