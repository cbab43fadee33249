"""Immutable snapshots: the full resource set per kind, with per-type content versions.

State of the world means every response carries the whole set for its type (absence deletes,
pkg/adsc/adsc.go handleMCP), so the snapshot pre-joins each kind's framed resources once; all
streams then send the same bytes with only version and nonce around them.

A set's version is a hash of the sum (mod 2**128) of its resources' (name, version) digests:
it changes exactly when a resource is added, removed or changed, does not depend on order,
and is kept current one resource at a time (`TypeIndex`), so a rebuild that changed one
service pays for that service and for one byte join of the set, not for hashing it all.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from types import MappingProxyType

from mcpserver.heap import release
from mcpserver.xds.resources import PackedResource, encode_response, response_head
from mcpserver.xds.typeurls import SERVED_KINDS, served_kind

_NAME = attrgetter("name")
_DIGEST = attrgetter("digest")
MAX_CACHED_RESPONSES = 32  # per set: the type URLs of a few Istio versions
_MASK = (1 << 128) - 1
REBUILD_SHARE = 16
"""Changes to more than 1/REBUILD_SHARE of a set re-sort it instead of inserting one by one."""


def set_version(total: int, count: int) -> str:
    """The version of a set whose resources' digests sum to `total`."""
    return hashlib.blake2b(f"{total & _MASK:x}/{count}".encode(), digest_size=10).hexdigest()


@dataclass(frozen=True, slots=True)
class SetChange:
    """Names added, removed and changed in one kind since the snapshot before."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


@dataclass(frozen=True, slots=True)
class TypeSet:
    """All resources of one kind, sorted by name (their framed Anys are their `piece`s)."""

    kind: str
    version: str
    resources: tuple[PackedResource, ...]
    _responses: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)
    _sent: dict[str, None] = field(default_factory=dict, repr=False, compare=False)
    """Type URLs a stream took this set under (an ordered set; on the event loop)."""
    _recent: tuple[str, ...] = field(default=(), repr=False, compare=False)
    """Type URLs streams took the set before this one under."""

    def response(self, type_url: str, *, prepare: bool = False) -> bytes:
        """The serialized DiscoveryResponse for this set under `type_url`, with the set's
        version as version_info and nonce; encoded once and shared by every stream (on
        the event loop only, once the set is published; the builder encodes it beforehand,
        with `prepare`, under the type URLs streams took the sets before it under). Type URLs
        past a few dozen (clients may ask for anything) are encoded without being kept."""
        if not prepare and len(self._sent) < MAX_CACHED_RESPONSES:
            self._sent[type_url] = None
        payload = self._responses.get(type_url)
        if payload is None:
            # one join from the resources' own bytes: no full-set blob copied in between
            resources = self.resources
            payload = encode_response(
                self.version, type_url, self.version, [r.piece for r in resources]
            )
            if len(self._responses) < MAX_CACHED_RESPONSES:
                if not self._responses:
                    _rehome(resources, payload, len(response_head(self.version)))
                self._responses[type_url] = payload
        return payload

    @classmethod
    def of(cls, kind: str, resources: Iterable[PackedResource]) -> TypeSet:
        ordered = tuple(sorted(resources, key=_NAME))
        version = set_version(sum(map(_DIGEST, ordered)), len(ordered))
        return cls(kind, version, ordered)

    @property
    def blob(self) -> bytes:
        """All resources' framed bytes as one string (tests and benchmarks)."""
        return b"".join([r.piece for r in self.resources])


def _rehome(resources: Iterable[PackedResource], payload: bytes, at: int) -> None:
    """Keep each resource's framed bytes as a view of `payload`, the response just joined
    from them in this order starting at offset `at`, so that they are held once (a resource
    in several sets, the whole set and a shard, lives in the last one joined; the response
    it leaves stays as long as its set keeps it cached). A view per resource, ~200 bytes,
    against its own bytes, ~1.4 KB at 10 endpoints."""
    whole = memoryview(payload)
    owned = 0  # bytes freed: resources that held their own until now
    for resource in resources:
        piece = resource.piece
        end = at + len(piece)
        if isinstance(piece, bytes):
            owned += end - at
        del piece
        resource.rehome(whole[at:end])
        at = end
    release(owned)


EMPTY = TypeSet.of("", ())


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What every stream serves; replaced whole, never mutated."""

    version: str
    sets: Mapping[str, TypeSet]
    base: str = ""
    """The version of the snapshot `changes` are relative to ("" when unknown)."""
    changes: Mapping[str, SetChange] = field(default_factory=dict)
    """Per kind, what changed since snapshot `base` (kinds without changes left out)."""
    owners: Mapping[str, str] = field(default_factory=dict)
    """The registry of each service named in `changes` (resource name -> registry)."""
    layouts: Mapping[int, tuple[Snapshot, ...]] = field(default_factory=dict)
    """Layout N > 1 (server.shards): its N shards, each a snapshot of its part of these sets
    (xds/shards.py). A shard that did not change is the same object as in the snapshot
    before, so its streams have nothing to do."""

    def part(self, shards: int, shard: int) -> Snapshot:
        """Shard `shard` of layout `shards`; layout 1 is this snapshot, the whole set."""
        return self if shards == 1 else self.layouts[shards][shard]

    def for_type_url(self, type_url: str) -> TypeSet:
        """The set to send for a requested type; types we don't serve get the empty set."""
        kind = served_kind(type_url)
        return self.sets.get(kind, EMPTY) if kind else EMPTY


def snapshot_version(sets: Mapping[str, TypeSet]) -> str:
    digest = hashlib.blake2b(digest_size=10)
    for kind in sorted(sets):
        digest.update(f"{kind}={sets[kind].version};".encode())
    return digest.hexdigest()


def build_snapshot(resources: Iterable[PackedResource]) -> Snapshot:
    """Group packed resources by kind into one immutable snapshot."""
    grouped: dict[str, list[PackedResource]] = {kind: [] for kind in SERVED_KINDS}
    for resource in resources:
        grouped.setdefault(resource.kind, []).append(resource)
    sets = {kind: TypeSet.of(kind, items) for kind, items in grouped.items()}
    return Snapshot(version=snapshot_version(sets), sets=MappingProxyType(sets))


class TypeIndex:
    """One kind's resources kept sorted by name between rebuilds, so a new TypeSet costs the
    changes (a bisect and a list insert each) and one byte join, not a sort and a hash of
    everything. Not thread-safe: one rebuild at a time owns it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._names: list[str] = []
        self._items: list[PackedResource] = []
        self._total = 0
        self._pending: dict[str, PackedResource | None] = {}
        self._current = TypeSet.of(kind, ())

    def put(self, resource: PackedResource) -> None:
        self._pending[resource.name] = resource

    def remove(self, name: str) -> None:
        self._pending[name] = None

    def __len__(self) -> int:
        return len(self._names)

    def commit(self) -> tuple[TypeSet, SetChange]:
        """Apply what was put and removed since the last commit: the new set (the same
        object when nothing changed) and what changed in it."""
        pending, self._pending = self._pending, {}
        names, items = self._names, self._items
        added: list[str] = []
        removed: list[str] = []
        changed: dict[str, PackedResource] = {}
        for name, resource in pending.items():
            at = bisect.bisect_left(names, name)
            old = items[at] if at < len(names) and names[at] == name else None
            if resource is None:
                if old is not None:
                    removed.append(name)
            elif old is None:
                added.append(name)
            elif old.version != resource.version or old.piece != resource.piece:
                changed[name] = resource
        if not (added or removed or changed):
            return self._current, SetChange()
        if (len(added) + len(removed)) * REBUILD_SHARE > len(names) + REBUILD_SHARE:
            by_name = dict(zip(names, items, strict=True))
            for name in removed:
                del by_name[name]
            by_name.update(changed)
            for name in added:
                resource = pending[name]
                assert resource is not None
                by_name[name] = resource
            self._names = sorted(by_name)
            self._items = [by_name[name] for name in self._names]
            self._total = sum(map(_DIGEST, self._items))
        else:
            self._apply(pending, added, removed, changed)
        previous = self._current
        # tuple() of a dict is one C call, safe while the loop may add to it
        sent = tuple(previous._sent)
        self._current = TypeSet(
            self.kind,
            set_version(self._total, len(self._items)),
            tuple(self._items),
            _recent=sent,
        )
        # Encode now, in the builder's thread and before the set is published, the responses
        # streams took either of the last two sets under, so the loop sends at once. Not
        # further back: a set nobody reads (the whole set while istiods read shards, once a
        # dump has gone) must not cost a join of every resource on each rebuild.
        for type_url in dict.fromkeys((*sent, *previous._recent)):
            self._current.response(type_url, prepare=True)
        return self._current, SetChange(
            tuple(sorted(added)), tuple(sorted(removed)), tuple(sorted(changed))
        )

    def _apply(
        self,
        pending: Mapping[str, PackedResource | None],
        added: list[str],
        removed: list[str],
        changed: Mapping[str, PackedResource],
    ) -> None:
        """A few changes: each a bisect and a list insert or delete (memmove, in C)."""
        names, items = self._names, self._items
        for name in removed:
            at = bisect.bisect_left(names, name)
            self._total -= items[at].digest
            del names[at], items[at]
        for name, replacement in changed.items():
            at = bisect.bisect_left(names, name)
            self._total += replacement.digest - items[at].digest
            items[at] = replacement
        for name in added:
            resource = pending[name]
            assert resource is not None
            at = bisect.bisect_left(names, name)
            self._total += resource.digest
            names.insert(at, name)
            items.insert(at, resource)
