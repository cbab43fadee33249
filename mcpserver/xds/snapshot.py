"""Immutable snapshots: the full resource set per kind, with per-type content versions.

State of the world means every response carries the whole set for its type (absence deletes,
pkg/adsc/adsc.go handleMCP), so the snapshot pre-joins each kind's framed resources once; all
streams then send the same bytes with only version and nonce around them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from types import MappingProxyType

from mcpserver.xds.resources import PackedResource, encode_response
from mcpserver.xds.typeurls import SERVED_KINDS, served_kind

_NAME = attrgetter("name")
MAX_CACHED_RESPONSES = 32  # per set: the type URLs of a few Istio versions


def set_version(resources: Iterable[PackedResource]) -> str:
    """Hash of the (name, version) list: changes exactly when the set's content changes.
    One join and one hash call (not one update per resource): this runs per rebuild."""
    return hashlib.blake2b(b"".join(r.ident for r in resources), digest_size=10).hexdigest()


@dataclass(frozen=True, slots=True)
class TypeSet:
    """All resources of one kind, sorted by name, and the bytes of their framed Anys."""

    kind: str
    version: str
    resources: tuple[PackedResource, ...]
    blob: bytes = field(repr=False)
    _responses: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    def response(self, type_url: str) -> bytes:
        """The serialized DiscoveryResponse for this set under `type_url`, with the set's
        version as version_info and nonce; encoded once and shared by every stream (on
        the event loop only). Type URLs past a few dozen (clients may ask for anything)
        are encoded without being kept."""
        payload = self._responses.get(type_url)
        if payload is None:
            payload = encode_response(self.version, type_url, self.version, self.blob)
            if len(self._responses) < MAX_CACHED_RESPONSES:
                self._responses[type_url] = payload
        return payload

    @classmethod
    def of(cls, kind: str, resources: Iterable[PackedResource]) -> TypeSet:
        ordered = tuple(sorted(resources, key=_NAME))
        return cls(kind, set_version(ordered), ordered, b"".join(r.framed for r in ordered))


EMPTY = TypeSet.of("", ())


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What every stream serves; replaced whole, never mutated."""

    version: str
    sets: Mapping[str, TypeSet]

    def for_type_url(self, type_url: str) -> TypeSet:
        """The set to send for a requested type; types we don't serve get the empty set."""
        kind = served_kind(type_url)
        return self.sets.get(kind, EMPTY) if kind else EMPTY


def build_snapshot(resources: Iterable[PackedResource]) -> Snapshot:
    """Group packed resources by kind into one immutable snapshot."""
    grouped: dict[str, list[PackedResource]] = {kind: [] for kind in SERVED_KINDS}
    for resource in resources:
        grouped.setdefault(resource.kind, []).append(resource)
    sets = {kind: TypeSet.of(kind, items) for kind, items in grouped.items()}
    digest = hashlib.blake2b(digest_size=10)
    for kind in sorted(sets):
        digest.update(f"{kind}={sets[kind].version};".encode())
    return Snapshot(version=digest.hexdigest(), sets=MappingProxyType(sets))
