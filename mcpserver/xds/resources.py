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

import calendar
import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

from google.protobuf import any_pb2
from google.protobuf.message import Message
from mcpserver_protos.istio.mcp.v1alpha1 import resource_pb2

from mcpserver.wire import decode_varint, encode_varint, string_map
from mcpserver.wire import field as _field
from mcpserver.xds.typeurls import BODY_TYPE, RESOURCE_TYPE

_RESOURCES_FIELD = b"\x12"  # DiscoveryResponse.resources = 2, length-delimited
_VERSION_FIELD = b"\x0a"  # version_info = 1
_TYPE_URL_FIELD = b"\x22"  # type_url = 4
_NONCE_FIELD = b"\x2a"  # nonce = 5
SHARED_VALUES = 256
"""Distinct create times, and label sets, whose encodings are kept for reuse."""


@dataclass(frozen=True, slots=True)
class PackedResource:
    """One resource ready for the wire: name, content-hash version and framed bytes.

    The bytes are kept once. Packed, a resource owns them (`piece` is a bytes object); once
    a response of a set holding it has been joined (snapshot.py, `TypeSet.response`), `piece`
    becomes a view of its span in that response, and its own bytes are freed: at 10k
    services the resources' bytes are as large as a response (13 MiB), and holding them
    twice, plus gRPC's copy of the response while it sends, made the peak of a cold start.
    Only where the bytes are stored moves (`rehome`), never what they are: a reader sees the
    same bytes before and after, in any thread."""

    kind: str
    name: str
    version: str
    piece: bytes | memoryview = field(repr=False)
    """The framed bytes: its own, or a read-only view of a joined response holding them."""
    digest: int = field(default=0, repr=False, compare=False)
    """A 128-bit hash of name and version: set versions are sums of these (snapshot.py)."""

    def __post_init__(self) -> None:
        ident = f"{self.name}\0{self.version}".encode()
        object.__setattr__(
            self, "digest", int.from_bytes(hashlib.blake2b(ident, digest_size=16).digest())
        )

    @property
    def framed(self) -> bytes:
        """The framed bytes as a bytes object (a copy when they live in a response)."""
        piece = self.piece
        return piece if isinstance(piece, bytes) else piece.tobytes()

    def rehome(self, view: memoryview) -> None:
        """Keep the framed bytes as `view` (the same bytes, inside a joined response) from
        now on, dropping the resource's own copy. One attribute store: a reader in another
        thread sees the old or the new storage, both holding these bytes."""
        object.__setattr__(self, "piece", view)

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
    length, start = decode_varint(framed, 1)
    return framed[start : start + length]


def content_version(
    kind: str,
    name: str,
    body: bytes,
    labels: Iterable[tuple[str, str]],
    annotations: Iterable[tuple[str, str]],
) -> str:
    """A short, stable hash of everything istiod stores for the resource except create_time."""
    return _version(kind, name, body, _hashed_maps(tuple(labels), tuple(annotations)))


def _version(kind: str, name: str, body: bytes, maps: bytes) -> str:
    """content_version's hash: of its parts one after the other, hashed at once (one call,
    not one per part: pack_bytes runs for every service of a cold start)."""
    joined = b"".join((kind.encode(), b"\0", name.encode(), b"\0", body, maps))
    return hashlib.blake2b(joined, digest_size=10).hexdigest()


@lru_cache(maxsize=SHARED_VALUES)  # most resources of a registry share their labels
def _hashed_maps(
    labels: tuple[tuple[str, str], ...], annotations: tuple[tuple[str, str], ...]
) -> bytes:
    """What content_version hashes of the labels and annotations, after the body."""
    return b"".join(
        (
            *(f"\0l{key}={value}".encode() for key, value in sorted(labels)),
            *(f"\0a{key}={value}".encode() for key, value in sorted(annotations)),
        )
    )


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
    return pack_bytes(
        kind,
        namespace,
        name,
        body.SerializeToString(deterministic=True),
        create_time,
        labels,
        annotations,
    )


def pack_bytes(
    kind: str,
    namespace: str,
    name: str,
    body_bytes: bytes,
    create_time: datetime,
    labels: Iterable[tuple[str, str]] = (),
    annotations: Iterable[tuple[str, str]] = (),
    full_name: str = "",
) -> PackedResource:
    """pack() for a spec already serialized (deterministically). `full_name`: the
    `namespace/name` string if the caller holds one already (a Service's key), so that the
    resource shares it instead of keeping its own copy."""
    labels = tuple(labels)
    annotations = tuple(annotations)
    full_name = full_name or f"{namespace}/{name}"
    version = _version(kind, full_name, body_bytes, _hashed_maps(labels, annotations))
    framed = _field(
        _RESOURCES_FIELD,
        _encode_any(kind, full_name, version, body_bytes, create_time, labels, annotations),
    )
    return PackedResource(kind, full_name, version, framed)  # by position: keywords cost 1 us


def _encode_any(
    kind: str,
    name: str,
    version: str,
    body: bytes,
    create_time: datetime,
    labels: tuple[tuple[str, str], ...],
    annotations: tuple[tuple[str, str], ...],
) -> bytes:
    """Any{Resource{Metadata, Any{body}}}, encoded as protobuf's deterministic serializer
    does (fields by number, proto3 defaults left out, map entries sorted by key), without
    building the three wrapper messages: this runs for every changed resource, and the
    messages cost 4x the bytes. tests/unit/test_resources.py checks it byte for byte against
    the message classes."""
    metadata = b"".join(
        (
            _text(b"\x0a", name),
            _timestamp(create_time),
            _text(b"\x1a", version),
            _maps(labels, annotations),
        )
    )
    inner = _text(b"\x0a", BODY_TYPE[kind]) + (_field(b"\x12", body) if body else b"")
    resource = _field(b"\x0a", metadata) + _field(b"\x12", inner)
    return _RESOURCE_TYPE_FIELD + _field(b"\x12", resource)


_RESOURCE_TYPE_FIELD = _field(b"\x0a", RESOURCE_TYPE.encode())


# Both made once per distinct value: most resources of a registry share their create time
# (a static file's default) and their labels (the registry's), and a cold start packs 10k.
# Few entries: where the values are all distinct (a Dubbo service's create time and its
# interface label are its own) a cache hits nothing and only holds what it saw, 2 MiB at
# 4,096 entries, live at the peak of a cold start.
@lru_cache(maxsize=SHARED_VALUES)
def _timestamp(create_time: datetime) -> bytes:
    """Metadata.create_time (field 2) as a google.protobuf.Timestamp."""
    seconds = calendar.timegm(create_time.utctimetuple())
    nanos = create_time.microsecond * 1000
    timestamp = (b"\x08" + encode_varint(seconds % (1 << 64)) if seconds else b"") + (
        b"\x10" + encode_varint(nanos) if nanos else b""
    )
    return _field(b"\x12", timestamp)


@lru_cache(maxsize=SHARED_VALUES)
def _maps(labels: tuple[tuple[str, str], ...], annotations: tuple[tuple[str, str], ...]) -> bytes:
    """Metadata.labels (field 4) and annotations (field 5)."""
    return b"".join((*string_map(b"\x22", labels), *string_map(b"\x2a", annotations)))


def _text(tag: bytes, text: str) -> bytes:
    return _field(tag, text.encode()) if text else b""


def response_head(version_info: str) -> bytes:
    """What precedes the resources in encode_response()'s bytes."""
    return _field(_VERSION_FIELD, version_info.encode())


def encode_response(
    version_info: str,
    type_url: str,
    nonce: str,
    resources: bytes | Iterable[bytes | memoryview],
) -> bytes:
    """A serialized envoy DiscoveryResponse around resources already framed by pack() (their
    bytes joined, or each resource's own)."""
    parts = [resources] if isinstance(resources, bytes) else resources
    return b"".join(
        itertools.chain(
            (response_head(version_info),),
            parts,
            (
                _field(_TYPE_URL_FIELD, type_url.encode()),
                _field(_NONCE_FIELD, nonce.encode()),
            ),
        )
    )
