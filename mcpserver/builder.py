"""The pure part of a rebuild: registry views -> merge -> convert -> validate -> pack ->
snapshot, kept between rebuilds so that each one costs what changed.

Each registry's view says which keys changed since the view built last
(`View.changed_since`); only those go through merge (with the services they share a name or
host with), VIP claims, conversion and validation, and into the per-kind indexes. A
service's packed resources are kept and reused while it is unchanged, and a changed inline
service reuses the bytes of every endpoint whose instance is unchanged (byte splicing), so a
rebuild re-encodes what changed; joining the full set per type is the one O(all) step, as
state of the world requires.

No I/O and no event loop: the pipeline (pipeline.py) runs `Builder.build` in a worker
thread; check-config and the tests call `build()` directly.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from types import MappingProxyType

from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2, workload_entry_pb2

from mcpserver.convert.inline import (
    inline_endpoint_bytes,
    inline_spec,
    plain_endpoints,
    validate_inline_endpoint,
    validate_inline_spec,
)
from mcpserver.convert.merge import MergeIndex
from mcpserver.convert.serviceentry import (
    IstioResource,
    convert,
    endpoint_spans,
    inline_endpoint,
    inline_parts,
    join_inline,
    resource_labels,
)
from mcpserver.convert.validate import (
    validate_name,
    validate_service_entry,
    validate_workload_entry,
)
from mcpserver.convert.vip import allocate, capacity, needs_vip
from mcpserver.failure import describe
from mcpserver.model import Port, Problem, Service, is_served
from mcpserver.registry.view import View, same_revision
from mcpserver.xds.resources import PackedResource, pack, pack_bytes
from mcpserver.xds.shards import shard_of
from mcpserver.xds.snapshot import SetChange, Snapshot, TypeIndex, TypeSet, snapshot_version
from mcpserver.xds.typeurls import SERVED_KINDS

log = logging.getLogger("mcpserver.pipeline")

Known = tuple[View, Collection[str]]
"""(an earlier view of a registry, the keys its current view changed since)."""


@dataclass(frozen=True, slots=True)
class Converted:
    """One service's outcome: what we serve and what we withheld."""

    service: Service
    packed: tuple[PackedResource, ...]
    problems: tuple[Problem, ...]
    vip: str | None = None
    needs_vip: bool = False
    body_length: int = 0
    """Inline services: the length of the spec's bytes, the end of the packed resource. The
    next conversion of this service reuses each endpoint's bytes in them for every Instance
    object it still has (usually all but the one that changed), found by its position
    among the spec's endpoints (`endpoint_spans`, in `service.instances` order)."""
    endpoint_context: tuple[str, frozenset[str]] | None = None
    """(registry, port names): what the endpoints' bytes and validation depended on; set
    for inline conversions that are served (the ones with bytes to reuse)."""
    head_length: int = 0
    tail_length: int = 0
    """Inline services: how many bytes of the spec come before the endpoints and after
    them, reused (sliced from the packed bytes) while the fields they encode are unchanged
    (`_spec_fields`). Kept as lengths: the bytes and the fields held apart were 2.7 MiB at
    10k services, live at the peak of a cold start."""


def check(resource: IstioResource) -> list[str]:
    """Istio's validation errors for one resource."""
    errors = validate_name(resource.namespace, resource.name)
    spec = resource.spec
    if isinstance(spec, service_entry_pb2.ServiceEntry):
        errors += validate_service_entry(spec, resource.namespace)
    elif isinstance(spec, workload_entry_pb2.WorkloadEntry):
        errors += validate_workload_entry(spec, None, allow_fqdn=True)
    else:
        errors.append(f"unexpected spec type {type(spec).__name__}")
    return errors


def convert_service(
    service: Service,
    vip: str | None = None,
    wants_vip: bool = False,
    previous: Converted | None = None,
) -> Converted:
    """Convert, validate and pack one service (with its allocated VIP, if any), reusing the
    endpoints of `previous` (this service's last conversion) whose Instance is unchanged. A
    service whose ServiceEntry is invalid is withheld whole (its WorkloadEntries would
    select nothing). Nothing raises: a failure of any kind withholds this service alone."""
    try:
        subject = replace(service, addresses=(vip,)) if vip else service
        if subject.endpoints_mode != "workloadentry" and subject.resolution == "STATIC":
            return _convert_inline(service, subject, vip, wants_vip, previous)
        return _convert_service(service, vip, wants_vip)
    except Exception as err:  # one poisoned record must never fail every push
        log.exception("conversion failed registry=%s service=%s", service.registry, service.key)
        message = f"conversion failed: {describe(err)}"
        problem = Problem(service.registry, f"ServiceEntry {service.key}", message, "conversion")
        return Converted(service, (), (problem,), vip, wants_vip)


def _convert_inline(
    service: Service,
    subject: Service,
    vip: str | None,
    wants_vip: bool,
    previous: Converted | None,
) -> Converted:
    """The common case, STATIC resolution with inline endpoints, endpoint by endpoint: the
    same bytes and the same validation as service_entry() and check() of the whole spec
    (a test holds them equal), but an endpoint whose Instance object is unchanged since the
    last conversion is neither built, validated nor serialized again."""
    # the last conversion's spec bytes, if it was inline and valid (one with errors keeps
    # nothing to reuse)
    last = previous if previous is not None and previous.endpoint_context is not None else None
    old_body = b""
    if last is not None:
        framed = last.packed[0].framed
        old_body = framed[len(framed) - last.body_length :]
    spec_errors: tuple[str, ...] = ()
    if last is not None and _spec_fields(subject) == _spec_fields(_subject(last)):
        # only endpoints changed, as usual
        head = old_body[: last.head_length]
        tail = old_body[len(old_body) - last.tail_length :]
    else:
        written, checked = inline_spec(subject), validate_inline_spec(subject)
        if written is not None and checked is not None:
            (head, tail), spec_errors = written, tuple(checked)
        else:  # what only the messages say (convert/inline.py)
            bare, head, tail = inline_parts(subject)
            spec_errors = tuple(validate_name(subject.namespace, subject.name)) + tuple(
                validate_service_entry(bare, subject.namespace)
            )
    errors = list(spec_errors)
    context = _endpoint_context(subject.registry, subject.ports)
    names = context[1]
    # the previous conversion's endpoints, by the id of their Instance: `previous` holds its
    # Service, so these are live objects and their ids unique. Keyed by Instance value
    # instead, hashing every endpoint on both sides costs about five times as much as the
    # whole lookup (10 endpoints: ~55 us against ~10), and watchers keep unchanged
    # Instance objects anyway.
    old_index: dict[int, int] = {}
    spans: list[int] = []
    if last is not None and last.endpoint_context == context:
        old_index = {id(i): n for n, i in enumerate(last.service.instances)}
        spans = endpoint_spans(old_body)
    # a first conversion of the usual shape goes in one pass (convert/inline.py)
    plain = None if old_index else plain_endpoints(head, subject.instances, subject.registry)
    if plain is not None:
        errors += plain[1]
    parts: list[bytes] = []
    for instance in subject.instances if plain is None else ():
        n = old_index.get(id(instance))
        if n is not None:
            parts.append(old_body[spans[2 * n] : spans[2 * n + 1]])
            continue
        body = inline_endpoint_bytes(instance, subject.registry)
        found = (
            None if body is None else validate_inline_endpoint(instance, subject.registry, names)
        )
        if body is None or found is None:  # what only the message says (convert/inline.py)
            message = inline_endpoint(instance, subject.registry)
            body = message.SerializeToString(deterministic=True)
            found = validate_workload_entry(message, names, allow_fqdn=False)
        parts.append(body)
        errors += found
    if errors:
        problem = Problem(
            service.registry, f"ServiceEntry {subject.key}", "; ".join(errors), "invalid"
        )
        return Converted(service, (), (problem,), vip, wants_vip)
    if plain is not None:
        pieces = plain[0]
        pieces.append(tail)
        body = b"".join(pieces)
    else:
        body = join_inline(head, parts, tail)
    packed = pack_bytes(
        "ServiceEntry",
        subject.namespace,
        subject.name,
        body,
        subject.create_time,
        resource_labels(subject),
        subject.annotations,
        service.key,  # the served Service's own string (`subject` may be a copy with a VIP)
    )
    return Converted(
        service,
        (packed,),
        (),
        vip,
        wants_vip,
        len(body),
        context,
        len(head),
        len(tail),
    )


def _subject(converted: Converted) -> Service:
    """The service a conversion converted: its own, with its VIP if it got one."""
    service, vip = converted.service, converted.vip
    return replace(service, addresses=(vip,)) if vip else service


def _spec_fields(subject: Service) -> tuple[object, ...]:
    """What an inline ServiceEntry's bytes before and after its endpoints are made of."""
    return (
        subject.namespace,
        subject.name,
        subject.hosts,
        subject.addresses,
        subject.ports,
        subject.location,
        subject.resolution,
        subject.export_to,
    )


@lru_cache(maxsize=1 << 10)
def _endpoint_context(registry: str, ports: tuple[Port, ...]) -> tuple[str, frozenset[str]]:
    """(registry, port names), one object per distinct value: each inline conversion keeps
    it (`Converted.endpoint_context`), and a registry's services mostly share their ports
    (10k equal frozensets and tuples were 2.7 MiB at 10k services)."""
    return registry, frozenset(p.name for p in ports)


def _convert_service(service: Service, vip: str | None, wants_vip: bool = False) -> Converted:
    packed: list[PackedResource] = []
    problems: list[Problem] = []
    subject = replace(service, addresses=(vip,)) if vip else service
    for resource in convert(subject):
        errors = check(resource)
        if errors:
            problems.append(
                Problem(
                    service.registry,
                    f"{resource.kind} {resource.key}",
                    "; ".join(errors),
                    "invalid",
                )
            )
            if resource.kind == "ServiceEntry":
                return Converted(service, (), tuple(problems), vip, wants_vip)
            continue
        packed.append(
            pack(
                resource.kind,
                resource.namespace,
                resource.name,
                resource.spec,
                resource.create_time,
                resource.labels,
                resource.annotations,
            )
        )
    return Converted(service, tuple(packed), tuple(problems), vip, wants_vip)


@dataclass(frozen=True, slots=True)
class BuildResult:
    snapshot: Snapshot
    problems: tuple[Problem, ...]
    encoded: int
    vips: int
    vip_capacity: int
    served: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """(services, instances) in the snapshot by registry: a merged service counts for its
    owner; one withheld, merged away or not served for want of instances counts nowhere."""
    withheld: frozenset[str] = frozenset()
    """Keys of the services withheld whole (no ServiceEntry served): protection counts
    them neither as served nor as removed."""


@dataclass(frozen=True, slots=True)
class BuildInputs:
    """What a rebuild depends on besides the registry views."""

    keep_when_empty: Mapping[str, bool]
    vip_cidr: str
    merge_policy: str = "first"
    layouts: tuple[int, ...] = ()
    """Layouts N > 1 to cut the set into (server.shards and previous_shards; xds/shards.py)."""


class Builder:
    """The pure part of a rebuild, kept between rebuilds so that each one costs what changed.

    Each registry's view is asked once which keys changed since the view built last
    (`View.changed_since`: from its table's log, in O(changed), or by comparing the two).
    Only those keys go through merge (re-merging the services they share a name or host
    with), VIP claims, conversion and validation, and into the per-kind indexes; a new
    snapshot is then one byte join per changed kind. The VIP table is recomputed only when
    the set of claims (or of users' own addresses) changes.

    Runs in a worker thread, one build at a time (the debouncer guarantees it). If a build
    raises halfway, the builder is discarded (the pipeline starts a new one), never reused.
    """

    def __init__(self, inputs: BuildInputs) -> None:
        self._inputs = inputs
        self._keep = inputs.keep_when_empty
        self._built: dict[str, View] = {}  # the view each registry was last built from
        self._ranks: dict[str, int] = {}
        self._merge = MergeIndex(inputs.merge_policy)
        self._converted: dict[str, Converted] = {}  # served key -> its conversion
        self._claims: dict[str, datetime] = {}  # key -> create_time, services wanting a VIP
        self._explicit: Counter[str] = Counter()  # users' own addresses
        self._vips: dict[str, str] = {}
        self._vip_problems: dict[str, Problem] = {}
        self._withheld: dict[str, tuple[Problem, ...]] = {}  # key -> conversion problems
        self._served: Counter[str] = Counter()  # registry -> services in the snapshot
        self._served_instances: Counter[str] = Counter()  # registry -> their instances
        self._types = {kind: TypeIndex(kind) for kind in SERVED_KINDS}
        # layout N -> shard -> kind -> index: each resource also sits in its service's shard
        self._parts = {
            n: [{kind: TypeIndex(kind) for kind in SERVED_KINDS} for _ in range(n)]
            for n in inputs.layouts
        }
        self._snapshot: Snapshot | None = None

    def build(self, views: Sequence[View], known: Mapping[str, Known] | None = None) -> BuildResult:
        """The snapshot of `views` (one per registry, in rank order). `known`: per registry,
        the keys its view changed since an earlier view, if protection asked already; used
        when that earlier view is the one built last."""
        merge_index = self._merge
        for rank, view in enumerate(views):
            name = view.registry
            if self._ranks.setdefault(name, rank) != rank:
                raise ValueError(f"registry {name!r} changed rank")
            built = self._built.get(name)
            hint = known.get(name) if known is not None else None
            if hint is not None and built is not None and same_revision(hint[0], built):
                keys = hint[1]
            else:
                keys = view.changed_since(built)
            for key in keys:
                merge_index.put(rank, key, view.candidates(key))
            self._built[name] = view
        changed = merge_index.settle()
        dirty = set(changed)
        if self._claim(changed):
            allocated = allocate(self._claims.items(), self._inputs.vip_cidr, self._explicit.keys())
            dirty.update(k for k, _ in allocated.items() ^ self._vips.items())
            self._vips = allocated
        encoded = 0
        owners: dict[str, str] = {}
        for key in dirty:
            encoded += self._convert(key, owners)
        previous = self._snapshot
        # only the shards whose sets changed are new objects (and join their bytes)
        layouts = {
            n: tuple(
                _commit(indexes, previous.part(n, k) if previous is not None else None, owners)
                for k, indexes in enumerate(parts)
            )
            for n, parts in self._parts.items()
        }
        snapshot = _commit(self._types, previous, owners)
        if snapshot is not previous and layouts:
            snapshot = replace(snapshot, layouts=MappingProxyType(layouts))
        self._snapshot = snapshot
        problems: list[Problem] = merge_index.problems()
        for view in views:
            problems.extend(view.problems)
        for found in self._withheld.values():
            problems.extend(found)
        problems.extend(self._vip_problems.values())
        return BuildResult(
            snapshot,
            tuple(problems),
            encoded,
            len(self._vips),
            capacity(self._inputs.vip_cidr),
            {
                registry: (count, self._served_instances[registry])
                for registry, count in self._served.items()
                if count
            },
            self._withheld_whole(),
        )

    def _withheld_whole(self) -> frozenset[str]:
        """The keys withheld whole: a conversion with problems and no ServiceEntry (a
        WorkloadEntry withheld alone leaves its service served). O(withheld)."""
        return frozenset(
            key
            for key in self._withheld
            if not any(r.kind == "ServiceEntry" for r in self._converted[key].packed)
        )

    def _claim(self, changed: Mapping[str, tuple[Service | None, Service | None]]) -> bool:
        """Update VIP claims and users' addresses from the merged services that changed
        (served or not: a service whose instances drop to zero for a moment keeps its
        address and moves nobody else's); True if the allocation must be redone."""
        redo = False
        claims, explicit = self._claims, self._explicit
        for key, (old, new) in changed.items():
            if old is not None:
                for address in old.addresses:
                    explicit[address] -= 1
                    if not explicit[address]:
                        del explicit[address]
                        redo = True
            if new is not None:
                for address in new.addresses:
                    redo = redo or address not in explicit
                    explicit[address] += 1
            claim = new.create_time if new is not None and needs_vip(new) else None
            if claims.get(key) != claim:
                redo = True
                if claim is None:
                    del claims[key]
                else:
                    claims[key] = claim
        return redo

    def _convert(self, key: str, owners: dict[str, str]) -> int:
        """Bring one served name up to date in the per-kind indexes; returns how many
        resources were encoded. Notes the registry of the service in `owners`."""
        service = self._merge.merged.get(key)
        old = self._converted.get(key)
        if service is not None:
            owners[key] = service.registry
        elif old is not None:
            owners[key] = old.service.registry
        self._vip_problems.pop(key, None)
        if service is None or not is_served(service, self._keep.get(service.registry, False)):
            done = None
        else:
            vip = self._vips.get(key)
            wants = key in self._claims
            if wants and vip is None:
                self._vip_problems[key] = Problem(
                    "", key, f"no free address left in vip.cidr {self._inputs.vip_cidr}", "vip"
                )
            if old is not None and old.vip == vip and old.needs_vip == wants:
                if old.service is service:
                    return 0
                if old.service == service:
                    # equal but new (a union merged again): keep the newest object, so the
                    # next rebuild's check is `is` instead of comparing deeply again
                    self._converted[key] = replace(old, service=service)
                    return 0
            done = convert_service(service, vip, wants, old)
        indexes = [self._types, *(parts[shard_of(key, n)] for n, parts in self._parts.items())]
        if old is not None:
            keep = {(r.kind, r.name) for r in done.packed} if done is not None else set()
            for resource in old.packed:
                if (resource.kind, resource.name) not in keep:
                    for index in indexes:
                        index[resource.kind].remove(resource.name)
            if old.packed:
                self._served[old.service.registry] -= 1
                self._served_instances[old.service.registry] -= len(old.service.instances)
        if done is not None and done.packed:
            self._served[done.service.registry] += 1
            self._served_instances[done.service.registry] += len(done.service.instances)
        self._withheld.pop(key, None)
        if done is None:
            self._converted.pop(key, None)
            return 0
        for resource in done.packed:
            for index in indexes:
                index[resource.kind].put(resource)
        self._converted[key] = done
        if done.problems:
            self._withheld[key] = done.problems
        return len(done.packed)


def _commit(
    indexes: Mapping[str, TypeIndex], previous: Snapshot | None, owners: Mapping[str, str]
) -> Snapshot:
    """The snapshot of one set of per-kind indexes (the whole set, or one shard): `previous`
    itself when none of them changed."""
    sets: dict[str, TypeSet] = {}
    changes: dict[str, SetChange] = {}
    for kind, index in indexes.items():
        sets[kind], change = index.commit()
        if change:
            changes[kind] = change
    if previous is not None and not changes:
        return previous
    return Snapshot(
        snapshot_version(sets),
        MappingProxyType(sets),
        base=previous.version if previous is not None else "",
        changes=MappingProxyType(changes),
        owners=MappingProxyType(owners),
    )


def build(views: Sequence[View], inputs: BuildInputs) -> BuildResult:
    """A one-off build of everything (check-config, tests): a fresh Builder's first build."""
    return Builder(inputs).build(views)
