"""Registry views -> protection -> merge -> convert -> validate -> pack -> snapshot -> store.

Work is proportional to what changed: each service's packed resources are cached and reused
when the service is unchanged (identity first, then equality), so a rebuild re-encodes only
changed services; joining the full set per type is the one O(all) step, as state of the
world requires.

What istiod holds is protected at every step (README "What mcpserver does when things go
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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2, workload_entry_pb2

from mcpserver.convert.merge import merge
from mcpserver.convert.serviceentry import IstioResource, convert
from mcpserver.convert.validate import (
    validate_name,
    validate_service_entry,
    validate_workload_entry,
)
from mcpserver.convert.vip import allocate, capacity, needs_vip
from mcpserver.metrics import Metrics
from mcpserver.model import Problem, Service
from mcpserver.protection import Hold, ProtectionPolicy, guard, next_deadline
from mcpserver.registry.base import Registry, View, backoff
from mcpserver.xds.resources import PackedResource, pack
from mcpserver.xds.snapshot import Snapshot, build_snapshot
from mcpserver.xds.store import SnapshotStore

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


def convert_service(service: Service, vip: str | None = None, wants_vip: bool = False) -> Converted:
    """Convert, validate and pack one service (with its allocated VIP, if any). A service whose
    ServiceEntry is invalid is withheld whole (its WorkloadEntries would select nothing).
    Nothing raises: a failure of any kind withholds this service alone."""
    try:
        return replace(_convert_service(service, vip), needs_vip=wants_vip)
    except Exception as err:  # one poisoned record must never fail every push
        log.exception("conversion failed registry=%s service=%s", service.registry, service.key)
        message = f"conversion failed: {err!r}"
        problem = Problem(service.registry, f"ServiceEntry {service.key}", message, "conversion")
        return Converted(service, (), (problem,), vip, wants_vip)


def _convert_service(service: Service, vip: str | None) -> Converted:
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
                return Converted(service, (), tuple(problems), vip)
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
    return Converted(service, tuple(packed), tuple(problems), vip)


@dataclass(frozen=True, slots=True)
class BuildResult:
    snapshot: Snapshot
    cache: dict[str, Converted]
    problems: tuple[Problem, ...]
    encoded: int
    vips: dict[str, str]
    vip_capacity: int


@dataclass(frozen=True, slots=True)
class BuildInputs:
    """What a rebuild depends on besides the registry views."""

    keep_when_empty: Mapping[str, bool]
    vip_cidr: str
    merge_policy: str = "first"


def served(service: Service, keep_when_empty: Mapping[str, bool]) -> bool:
    """Services without instances are removed, unless kept or not resolved from endpoints."""
    return (
        bool(service.instances)
        or service.resolution != "STATIC"
        or keep_when_empty.get(service.registry, False)
    )


def build(
    views: Sequence[View], cache: Mapping[str, Converted], inputs: BuildInputs
) -> BuildResult:
    """The pure part of a rebuild: runs in a worker thread, touches no shared state."""
    services, problems = merge([v.services for v in views], inputs.merge_policy)
    for view in views:
        problems.extend(view.problems)
    # Claims come from every listed service, served or not: a service whose instances drop
    # to zero for a moment keeps its address and moves nobody else's. Whether a service
    # needs one is remembered with its cached conversion (the same object needs the same).
    wanting: set[str] = set()
    for s in services:
        done = cache.get(s.key)
        if done.needs_vip if done is not None and done.service is s else needs_vip(s):
            wanting.add(s.key)
    claims = [(s.key, s.create_time) for s in services if s.key in wanting]
    vips = allocate(claims, inputs.vip_cidr, [a for s in services for a in s.addresses])
    services = [s for s in services if served(s, inputs.keep_when_empty)]
    for key in (s.key for s in services if s.key in wanting):
        if key not in vips:
            problems.append(
                Problem("", key, f"no free address left in vip.cidr {inputs.vip_cidr}", "vip")
            )
    fresh: dict[str, Converted] = {}
    encoded = 0
    resources: list[PackedResource] = []
    for service in services:
        vip = vips.get(service.key)
        done = cache.get(service.key)
        if done is None or done.vip != vip:
            done = convert_service(service, vip, service.key in wanting)
            encoded += len(done.packed)
        elif done.service is not service:
            if done.service == service:
                # equal but new (a re-parsed file): keep the newest object, so the next
                # rebuild's identity check hits instead of comparing deeply again
                done = replace(done, service=service)
            else:
                done = convert_service(service, vip, service.key in wanting)
                encoded += len(done.packed)
        fresh[service.key] = done
        resources.extend(done.packed)
        problems.extend(done.problems)
    return BuildResult(
        build_snapshot(resources),
        fresh,
        tuple(problems),
        encoded,
        vips,
        capacity(inputs.vip_cidr),
    )


@dataclass(frozen=True, slots=True)
class PipelineOptions:
    """Settings the pipeline needs, as plain values."""

    keep_when_empty: Mapping[str, bool]
    vip_cidr: str
    merge_policy: str = "first"
    protection: ProtectionPolicy = field(default_factory=ProtectionPolicy)
    serve_partial_after: float | None = None  # None: the first snapshot waits for every registry


@dataclass(frozen=True, slots=True)
class RegistryState:
    """What /debug/registries shows: the registry's own view and any held removal."""

    view: View
    hold: Hold | None


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
        self._cache: dict[str, Converted] = {}
        self._reported: set[Problem] = set()
        self._accepted: dict[str, View] = {}
        self._holds: dict[str, Hold] = {}
        self._confirmed: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._failures = 0
        self._failure_logged = ""
        self._retry: asyncio.TimerHandle | None = None
        self._pool_warned = False
        self.failure = ""  # the last rebuild's error while rebuilds fail
        self.serving = False
        self.problems: tuple[Problem, ...] = ()

    # ------------------------------------------------------------------ reading

    def views(self) -> list[View]:
        return [r.view() for r in self._registries]

    def registry_states(self) -> list[RegistryState]:
        return [RegistryState(v, self._holds.get(v.registry)) for v in self.views()]

    def waiting_for(self) -> list[str]:
        """Registries the first snapshot still waits for (none once it is published)."""
        if self._store.snapshot is not None:
            return []
        return [v.registry for v in self.views() if not v.synced]

    def partial_remaining(self) -> float | None:
        """Seconds until the first snapshot may be served without late registries."""
        after = self._options.serve_partial_after
        if after is None:
            return None
        return max(0.0, self._started + after - time.monotonic())

    def note_waiting(self) -> None:
        """Say (every WAITING_LOG_EVERY seconds, from the app) who the first snapshot waits for."""
        waiting = self.waiting_for()
        if not waiting:
            return
        remaining = self.partial_remaining()
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
        """An operator confirms a held removal: applied at the next rebuild (now)."""
        if registry not in self._holds:
            return False
        log.warning("held removal confirmed by operator registry=%s", registry)
        self._confirmed.add(registry)
        self._trigger()
        return True

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
        self.failure = f"rebuild failed: {err!r}"
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
        started = time.perf_counter()
        inputs = BuildInputs(
            self._options.keep_when_empty, self._options.vip_cidr, self._options.merge_policy
        )
        result = await asyncio.to_thread(build, served_views, self._cache, inputs)
        self._cache = result.cache
        self._report(result.problems + self._hold_problems())
        self._report_vips(result)
        self._metrics.build_seconds.observe(time.perf_counter() - started)
        self._metrics.encoded.inc(result.encoded)
        for kind, type_set in result.snapshot.sets.items():
            self._metrics.resources.labels(kind).set(len(type_set.resources))
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
        mass removal is held."""
        name = view.registry
        now = time.monotonic()
        outcome = guard(
            self._accepted.get(name),
            view,
            self._holds.get(name),
            now,
            self._options.protection,
            name in self._confirmed,
            self._options.keep_when_empty.get(name, False),
        )
        self._confirmed.discard(name)
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        if outcome.hold is None:
            if name in self._holds:
                log.warning("held removal released registry=%s", name)
            self._holds.pop(name, None)
            if view.synced:
                self._accepted[name] = outcome.served
        else:
            if name not in self._holds:
                log.warning("removal held registry=%s: %s", name, outcome.hold.reason)
            self._holds[name] = outcome.hold
            deadline = next_deadline(outcome.hold, self._options.protection)
            if deadline is not None:
                self._timers[name] = asyncio.get_running_loop().call_later(
                    max(0.0, deadline - now) + 0.01, self._trigger
                )
        self._metrics.removal_held.labels(name).set(1 if outcome.hold else 0)
        return outcome.served

    def _hold_problems(self) -> tuple[Problem, ...]:
        return tuple(
            Problem(name, "removal held", hold.reason, "held")
            for name, hold in sorted(self._holds.items())
        )

    def _report_vips(self, result: BuildResult) -> None:
        used = len(result.vips)
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
