"""Registry views -> protection -> merge -> convert -> validate -> pack -> snapshot -> store.

Work is proportional to what changed: each service's packed resources are cached and reused
when the service is unchanged (identity first, then equality), so a rebuild re-encodes only
changed services; joining the full set per type is the one O(all) step, as state of the
world requires.

What istiod holds is protected at every step (docs/operations.md "What mcpserver does when things go
wrong"): the first snapshot waits for every registry (answering istiod from a half-filled
store would delete what it holds: pkg/adsc/adsc.go handleMCP replaces the whole set); a
registry update that removes everything, or most instances at once, is held (protection.py);
a service whose conversion fails is withheld alone, never the whole rebuild; and a rebuild
that fails anyway keeps the last snapshot, says so on /readyz and gRPC health, and is retried
with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType

from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2, workload_entry_pb2

from mcpserver.codec import Record
from mcpserver.convert.merge import MergeIndex
from mcpserver.convert.serviceentry import (
    IstioResource,
    convert,
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
from mcpserver.memory import Memory
from mcpserver.metrics import Metrics
from mcpserver.model import Problem, Service
from mcpserver.protection import Hold, ProtectionPolicy, release_message
from mcpserver.registry.base import Registry, Status, View, backoff
from mcpserver.xds.resources import PackedResource, pack, pack_bytes
from mcpserver.xds.shards import shard_label, shard_of
from mcpserver.xds.snapshot import SetChange, Snapshot, TypeIndex, TypeSet, snapshot_version
from mcpserver.xds.store import SnapshotStore
from mcpserver.xds.typeurls import SERVED_KINDS

log = logging.getLogger("mcpserver.pipeline")

WAITING_LOG_EVERY = 30.0
"""Seconds between warnings while the first snapshot waits for a registry."""


@dataclass(frozen=True, slots=True)
class Converted:
    """One service's outcome: what we serve and what we withheld."""

    service: Service
    packed: tuple[PackedResource, ...]
    problems: tuple[Problem, ...]
    vip: str | None = None
    needs_vip: bool = False
    spans: array[int] | None = field(default=None, repr=False, compare=False)
    """Inline endpoints: where each instance's endpoint bytes lie in the spec's bytes (the
    end of the packed resource), as flat (start, end) pairs in `service.instances` order.
    The next conversion of this service reuses them for every Instance object it still has
    (usually all but the one that changed); 4 bytes per endpoint, nothing copied."""
    body_length: int = 0
    endpoint_context: tuple[str, frozenset[str]] | None = None
    """(registry, port names): what the endpoints' bytes and validation depended on."""
    spec: tuple[tuple[object, ...], bytes, bytes, tuple[str, ...]] | None = field(
        default=None, repr=False, compare=False
    )
    """Inline services: (what the spec without endpoints is made of, the bytes before and
    after the endpoints, its errors), reused while those fields are unchanged."""


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
    spec_key = (
        subject.namespace,
        subject.name,
        subject.hosts,
        subject.addresses,
        subject.ports,
        subject.location,
        subject.resolution,
        subject.export_to,
    )
    if previous is not None and previous.spec is not None and previous.spec[0] == spec_key:
        _, head, tail, spec_errors = previous.spec  # only endpoints changed, as usual
    else:
        bare, head, tail = inline_parts(subject)
        spec_errors = tuple(validate_name(subject.namespace, subject.name)) + tuple(
            validate_service_entry(bare, subject.namespace)
        )
    errors = list(spec_errors)
    names = frozenset(p.name for p in subject.ports)
    context = (subject.registry, names)
    # the previous conversion's endpoints, by the id of their (still living) Instance
    old_index: dict[int, int] = {}
    old_body = b""
    spans = array("I")
    if previous is not None and previous.spans is not None and previous.endpoint_context == context:
        old_index = {id(i): n for n, i in enumerate(previous.service.instances)}
        framed = previous.packed[0].framed
        old_body = framed[len(framed) - previous.body_length :]
        spans = previous.spans
    parts: list[bytes] = []
    for instance in subject.instances:
        n = old_index.get(id(instance))
        if n is not None:
            parts.append(old_body[spans[2 * n] : spans[2 * n + 1]])
            continue
        message = inline_endpoint(instance, subject.registry)
        parts.append(message.SerializeToString(deterministic=True))
        errors += validate_workload_entry(message, set(names), allow_fqdn=False)
    if errors:
        problem = Problem(
            service.registry, f"ServiceEntry {subject.key}", "; ".join(errors), "invalid"
        )
        return Converted(service, (), (problem,), vip, wants_vip)
    body, body_spans = join_inline(head, parts, tail)
    packed = pack_bytes(
        "ServiceEntry",
        subject.namespace,
        subject.name,
        body,
        subject.create_time,
        resource_labels(subject),
        subject.annotations,
    )
    return Converted(
        service,
        (packed,),
        (),
        vip,
        wants_vip,
        body_spans,
        len(body),
        context,
        (spec_key, head, tail, spec_errors),
    )


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


def served(service: Service, keep_when_empty: Mapping[str, bool]) -> bool:
    """Services without instances are removed, unless kept or not resolved from endpoints."""
    return (
        bool(service.instances)
        or service.resolution != "STATIC"
        or keep_when_empty.get(service.registry, False)
    )


EMPTY_VIEW = View("")


class Builder:
    """The pure part of a rebuild, kept between rebuilds so that each one costs what changed.

    A registry's view is compared with the one built before by object identity (registries
    reuse the Service objects they did not change): from the deltas registries publish, in
    O(changed), or else by comparing ids in C (View.changes_since). Only the services that
    differ go through merge (re-merging the services
    they share a name or host with), VIP claims, conversion and validation, and into the
    per-kind indexes; a new snapshot is then one byte join per changed kind. The VIP table is
    recomputed only when the set of claims (or of users' own addresses) changes.

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

    def build(self, views: Sequence[View]) -> BuildResult:
        merge_index = self._merge
        for rank, view in enumerate(views):
            name = view.registry
            if self._ranks.setdefault(name, rank) != rank:
                raise ValueError(f"registry {name!r} changed rank")
            removed, added = view.changes_since(self._built.get(name, EMPTY_VIEW))
            for service in removed.values():
                merge_index.remove(rank, service)
            for service in added.values():
                merge_index.add(rank, service)
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
        if service is None or not served(service, self._keep):
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
                    # equal but new (a re-parsed file): keep the newest object, so the next
                    # rebuild's identity check hits instead of comparing deeply again
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


@dataclass(frozen=True, slots=True)
class PipelineOptions:
    """Settings the pipeline needs, as plain values: built once from the settings
    (`app.pipeline_options`), which hold every default."""

    keep_when_empty: Mapping[str, bool]
    vip_cidr: str
    merge_policy: str
    protection: ProtectionPolicy
    serve_partial_after: float | None  # None: the first snapshot waits for every registry
    layouts: tuple[int, ...]  # shard layouts N > 1 to serve (xds/shards.py)
    recovery_grace: Mapping[str, float]
    """Seconds each registry (by name) holds removals after its source came back."""


@dataclass(frozen=True, slots=True)
class RegistryState:
    """What /debug/registries shows: the registry's own view and any held removal, and
    what the snapshot serves of it: (services, instances)."""

    view: View
    hold: Hold | None
    served: tuple[int, int] = (0, 0)
    origin: str = ""
    """Where a hold's reference came from: "" this replica's own view, else a peer or the
    state directory."""


class Pipeline:
    """Owns the conversion cache and the protection state; one rebuild at a time (the
    debouncer guarantees it)."""

    def __init__(
        self,
        registries: Sequence[Registry],
        store: SnapshotStore,
        metrics: Metrics,
        options: PipelineOptions,
        trigger: Callable[[], None] = lambda: None,
        on_serving: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self._registries = registries
        self._store = store
        self._metrics = metrics
        self._options = options
        self._trigger = trigger
        self._on_serving = on_serving
        self._started = time.monotonic()
        self._builder: Builder | None = None
        self._reported: set[Problem] = set()
        self._memory = Memory(options.protection, options.keep_when_empty, options.recovery_grace)
        self._confirmed: set[str] = set()
        self._withheld: frozenset[str] = frozenset()  # the last build's (BuildResult.withheld)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._failures = 0
        self._failure_logged = ""
        self._retry: asyncio.TimerHandle | None = None
        self._pool_warned = False
        self._waiting_logged = self._started  # when the first snapshot's wait was last said
        self.failure = ""  # the last rebuild's error while rebuilds fail
        self.serving = False
        self.problems: tuple[Problem, ...] = ()
        self.served: Mapping[str, tuple[int, int]] = {}  # registry -> (services, instances)
        for registry in registries:
            self._count_status(registry.view())
            metrics.registry_services.labels(registry.name).set(0)  # nothing served yet
        self.taking_over = False
        """The first snapshot waits: what peers (or the state directory) remember is
        still being read (bounded by the app: peers.wait)."""
        self.on_decided: Callable[[], None] | None = None
        """Called after each rebuild's protection decisions (the state directory's
        writer looks at `revisions` then)."""

    # ------------------------------------------------------------------ reading

    def views(self) -> list[View]:
        return [r.view() for r in self._registries]

    def registry_states(self) -> list[RegistryState]:
        memory = self._memory
        return [
            RegistryState(
                v,
                memory.hold(v.registry),
                self.served.get(v.registry, (0, 0)),
                memory.origin(v.registry),
            )
            for v in self.views()
        ]

    def waiting_for(self) -> list[str]:
        """Registries the first snapshot still waits for (none once it is published), and
        "peers" while what they remember is being read."""
        if self._store.snapshot is not None:
            return []
        waiting = [v.registry for v in self.views() if not v.synced]
        return [*waiting, "peers"] if self.taking_over else waiting

    def remembered(self, only: Collection[str] | None = None) -> dict[str, Record]:
        """What protection remembers of each registry (`only` these), in wall-clock time
        (for peers and the state directory)."""
        return self._memory.export(time.monotonic(), time.time(), only)

    def revisions(self) -> dict[str, int]:
        """Per registry, a number that changes when what `remembered` gives does."""
        return self._memory.revisions()

    def take_over(self, records: Mapping[str, tuple[str, str, Record]]) -> None:
        """Before the first snapshot: take what another replica (or the last run)
        remembers of each registry as this one's own. `records`: registry -> (origin, the
        phrase reasons use for it, record); registries not configured here are ignored.
        Then the first snapshot may be built."""
        names = {r.name for r in self._registries}
        now, wall = time.monotonic(), time.time()
        for name, (origin, phrase, record) in records.items():
            if name in names and self._store.snapshot is None:
                self._memory.adopt(name, record, origin, phrase, now, wall)
        self.taking_over = False
        self._trigger()

    def partial_remaining(self) -> float | None:
        """Seconds until the first snapshot may be served without late registries."""
        after = self._options.serve_partial_after
        if after is None:
            return None
        return max(0.0, self._started + after - time.monotonic())

    def note_waiting(self) -> None:
        """Say who the first snapshot waits for: at most once per WAITING_LOG_EVERY seconds
        however often it is called, and not once startup.serve_partial_after has passed
        (the rebuild then says it serves without them)."""
        waiting = self.waiting_for()
        remaining = self.partial_remaining()
        now = time.monotonic()
        if not waiting or remaining == 0.0 or now - self._waiting_logged < WAITING_LOG_EVERY:
            return
        self._waiting_logged = now
        then = (
            "istiod gets nothing until they list (set startup.serve_partial_after to serve "
            "without them)"
            if remaining is None
            else f"serving without them in {remaining:.0f}s (startup.serve_partial_after)"
        )
        log.warning(
            "first snapshot waits for registries=%s (%s); %s",
            ",".join(waiting),
            "; ".join(
                f"{v.registry}: {v.status.value} {v.detail}".strip()
                for v in self.views()
                if v.registry in waiting
            ),
            then,
        )

    # ------------------------------------------------------------- operator acts

    def confirm(self, registry: str) -> bool:
        """An operator confirms a held removal: applied at the next rebuild (now), or at the
        first complete listing after it; the hold's end is logged when it is applied."""
        if self._memory.hold(registry) is None:
            return False
        log.info("held removal confirmation received registry=%s; applying it", registry)
        self._confirmed.add(registry)
        self._trigger()
        return True

    def count_status(self, registry: str) -> None:
        """Set `mcpserver_registry_status` of one registry: the status it reports, except
        degraded while a removal of it is held (what /debug/registries and the status page
        say). The pipeline is its only writer: the registry on each change (through the
        app), and each rebuild as holds start and end."""
        view = next((r.view() for r in self._registries if r.name == registry), None)
        if view is not None:
            self._count_status(view)

    def _count_status(self, view: View) -> None:
        name = view.registry
        status = Status.DEGRADED if self._memory.hold(name) is not None else view.status
        for each in Status:
            self._metrics.registry_up.labels(name, each.value).set(each is status)

    # ------------------------------------------------------------------ rebuild

    async def rebuild(self) -> None:
        """One rebuild; never raises (a failure keeps the last snapshot and retries)."""
        try:
            await self._rebuild()
        except Exception as err:
            self._failed(err)
            return
        if self.failure:
            log.info("rebuild recovered after %d failures", self._failures)
        self.failure, self._failures, self._failure_logged = "", 0, ""
        await self._set_serving(self._store.snapshot is not None)

    def _failed(self, err: Exception) -> None:
        self._failures += 1
        self.failure = f"rebuild failed: {describe(err)}"
        self._metrics.build_failures.inc()
        if self.failure != self._failure_logged:  # once per distinct error
            self._failure_logged = self.failure
            log.error("rebuild failed; keeping the previous snapshot", exc_info=True)
        delay = backoff(self._failures - 1, first=0.5, cap=30.0)
        if self._retry is not None:
            self._retry.cancel()
        self._retry = asyncio.get_running_loop().call_later(delay, self._trigger)
        asyncio.get_running_loop().create_task(self._set_serving(False))

    async def _set_serving(self, serving: bool) -> None:
        if serving != self.serving:
            self.serving = serving
            if self._on_serving is not None:
                await self._on_serving(serving)

    async def _rebuild(self) -> None:
        views = self.views()
        if self._store.snapshot is None and self.taking_over:
            log.debug("holding first snapshot; reading what peers remember")
            return
        if self._store.snapshot is None:
            waiting = [v.registry for v in views if not v.synced]
            remaining = self.partial_remaining()
            if waiting and (remaining is None or remaining > 0):
                log.debug("holding first snapshot; waiting for registries=%s", ",".join(waiting))
                return
            if waiting:
                log.warning(
                    "startup.serve_partial_after passed: serving without registries=%s; istiod "
                    "gets none of their services and deletes any it held from an earlier run",
                    ",".join(waiting),
                )
        served_views = [self._protect(view) for view in views]
        if self.on_decided is not None:
            self.on_decided()
        started = time.perf_counter()
        inputs = BuildInputs(
            self._options.keep_when_empty,
            self._options.vip_cidr,
            self._options.merge_policy,
            self._options.layouts,
        )
        builder = self._builder or Builder(inputs)
        self._builder = None  # a build that raises leaves it half-updated: never reused
        result = await asyncio.to_thread(builder.build, served_views)
        self._builder = builder
        self._withheld = result.withheld
        self._report(result.problems + self._hold_problems())
        self._report_vips(result)
        self._metrics.build_seconds.observe(time.perf_counter() - started)
        self._metrics.encoded.inc(result.encoded)
        self.served = result.served
        for registry in self._registries:
            services, _ = self.served.get(registry.name, (0, 0))
            self._metrics.registry_services.labels(registry.name).set(services)
        for kind, type_set in result.snapshot.sets.items():
            self._metrics.resources.labels(kind).set(len(type_set.resources))
        for n, parts in result.snapshot.layouts.items():
            for k, part in enumerate(parts):
                for kind, type_set in part.sets.items():
                    self._metrics.shard_resources.labels(shard_label(n, k), kind).set(
                        len(type_set.resources)
                    )
        current = self._store.snapshot
        if current is not None and current.version == result.snapshot.version:
            return
        self._metrics.builds.inc()
        self._store.publish(result.snapshot)
        log.debug(  # the INFO line saying what changed comes from mcpserver.snapshot
            "snapshot published version=%s %s encoded=%d",
            result.snapshot.version,
            " ".join(f"{k}={len(s.resources)}" for k, s in result.snapshot.sets.items()),
            result.encoded,
        )

    def _protect(self, view: View) -> View:
        """The view to serve for one registry: its own, or the last accepted one while a
        mass removal is held (memory.py keeps what protection remembers)."""
        name = view.registry
        now = time.monotonic()
        held = self._memory.hold(name)
        outcome = self._memory.decide(view, now, name in self._confirmed, self._withheld)
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        if outcome.hold is None:
            # a confirmation lasts until the hold ends (not past an incomplete listing)
            self._confirmed.discard(name)
            if held is not None and outcome.released is not None:
                policy = self._options.protection
                log.warning(release_message(name, held, outcome.released, now, policy))
        elif held is None:
            log.warning("removal held registry=%s: %s", name, outcome.hold.reason)
        if outcome.deadline is not None:
            self._timers[name] = asyncio.get_running_loop().call_later(
                max(0.0, outcome.deadline - now) + 0.01, self._trigger
            )
        self._metrics.removal_held.labels(name).set(1 if outcome.hold else 0)
        self._count_status(view)
        return outcome.served

    def _hold_problems(self) -> tuple[Problem, ...]:
        return tuple(
            Problem(name, "removal held", hold.reason, "held")
            for name, hold in sorted(self._memory.holds().items())
        )

    def _report_vips(self, result: BuildResult) -> None:
        used = result.vips
        self._metrics.vips.set(used)
        if result.vip_capacity and used > result.vip_capacity / 2:
            if not self._pool_warned:
                self._pool_warned = True
                log.warning(
                    "vip.cidr %s is more than half used (%d of %d): collisions grow; use a "
                    "larger block",
                    self._options.vip_cidr,
                    used,
                    result.vip_capacity,
                )
        else:
            self._pool_warned = False

    def _report(self, problems: tuple[Problem, ...]) -> None:
        """Log each withheld resource once, when first seen; count them per registry."""
        now = set(problems)
        for problem in sorted(now - self._reported, key=lambda p: (p.registry, p.subject)):
            if problem.reason in ("malformed", "held"):
                continue  # the registry (or protection) logged it already
            log.warning(
                "withheld registry=%s subject=%s: %s",
                problem.registry,
                problem.subject,
                problem.message,
            )
            self._metrics.rejected.labels(problem.registry).inc()
        self._reported = now
        self.problems = tuple(sorted(now, key=lambda p: (p.registry, p.subject, p.message)))
        per_registry: dict[str, int] = {r.name: 0 for r in self._registries}
        for problem in now:
            if problem.reason not in ("malformed", "held"):
                per_registry[problem.registry] = per_registry.get(problem.registry, 0) + 1
        for registry, count in per_registry.items():
            self._metrics.invalid.labels(registry).set(count)
