"""Registry views -> merge -> convert -> validate -> pack -> snapshot -> store.

Work is proportional to what changed: each service's packed resources are cached and reused
when the service is unchanged (identity first, then equality), so a rebuild re-encodes only
changed services; joining the full set per type is the one O(all) step, as state of the
world requires. The first snapshot is held back until every registry has listed completely,
or the startup wait runs out: answering istiod from a half-filled store would delete what it
holds (pkg/adsc/adsc.go handleMCP replaces the whole set).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from mcpserver.convert.merge import merge
from mcpserver.convert.serviceentry import IstioResource, convert
from mcpserver.convert.validate import (
    validate_name,
    validate_service_entry,
    validate_workload_entry,
)
from mcpserver.convert.vip import allocate, needs_vip
from mcpserver.metrics import Metrics
from mcpserver.model import Problem, Service
from mcpserver.registry.base import Registry, Status, View
from mcpserver.xds.resources import PackedResource, pack
from mcpserver.xds.snapshot import Snapshot, build_snapshot
from mcpserver.xds.store import SnapshotStore

log = logging.getLogger("mcpserver.pipeline")


@dataclass(frozen=True, slots=True)
class Converted:
    """One service's outcome: what we serve and what we withheld."""

    service: Service
    packed: tuple[PackedResource, ...]
    problems: tuple[Problem, ...]
    vip: str | None = None


def check(resource: IstioResource) -> list[str]:
    """Istio's validation errors for one resource."""
    errors = validate_name(resource.namespace, resource.name)
    if resource.kind == "ServiceEntry":
        errors += validate_service_entry(resource.spec, resource.namespace)  # type: ignore[arg-type]
    else:
        errors += validate_workload_entry(resource.spec, None, allow_fqdn=True)  # type: ignore[arg-type]
    return errors


def convert_service(service: Service, vip: str | None = None) -> Converted:
    """Convert, validate and pack one service (with its allocated VIP, if any). A service whose
    ServiceEntry is invalid is withheld whole (its WorkloadEntries would select nothing)."""
    packed: list[PackedResource] = []
    problems: list[Problem] = []
    subject = replace(service, addresses=(vip,)) if vip else service
    for resource in convert(subject):
        errors = check(resource)
        if errors:
            problems.append(
                Problem(service.registry, f"{resource.kind} {resource.key}", "; ".join(errors))
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


@dataclass(frozen=True, slots=True)
class BuildInputs:
    """What a rebuild depends on besides the registry views."""

    keep_when_empty: Mapping[str, bool]
    vip_cidr: str
    vips: Mapping[str, str]
    merge_policy: str = "first"


def build(
    views: Sequence[View], cache: Mapping[str, Converted], inputs: BuildInputs
) -> BuildResult:
    """The pure part of a rebuild: runs in a worker thread, touches no shared state."""
    services, problems = merge([v.services for v in views], inputs.merge_policy)
    for view in views:
        problems.extend(view.problems)
    services = [
        s
        for s in services
        if s.instances or s.resolution != "STATIC" or inputs.keep_when_empty.get(s.registry, False)
    ]
    wanting = [s.key for s in services if needs_vip(s)]
    vips = allocate(wanting, inputs.vips, inputs.vip_cidr)
    for key in wanting:
        if key not in vips:
            problems.append(Problem("", key, f"no free address left in vip.cidr {inputs.vip_cidr}"))
    fresh: dict[str, Converted] = {}
    encoded = 0
    resources: list[PackedResource] = []
    for service in services:
        vip = vips.get(service.key)
        done = cache.get(service.key)
        if (
            done is None
            or done.vip != vip
            or (done.service is not service and done.service != service)
        ):
            done = convert_service(service, vip)
            encoded += len(done.packed)
        fresh[service.key] = done
        resources.extend(done.packed)
        problems.extend(done.problems)
    return BuildResult(build_snapshot(resources), fresh, tuple(problems), encoded, vips)


class Pipeline:
    """Owns the conversion cache; one rebuild at a time (the debouncer guarantees it)."""

    def __init__(
        self,
        registries: Sequence[Registry],
        store: SnapshotStore,
        metrics: Metrics,
        startup_wait: float,
        keep_when_empty: Mapping[str, bool],
        vip_cidr: str,
        merge_policy: str = "first",
        on_primed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._registries = registries
        self._store = store
        self._metrics = metrics
        self._deadline = time.monotonic() + startup_wait
        self._keep = dict(keep_when_empty)
        self._vip_cidr = vip_cidr
        self._merge_policy = merge_policy
        self._vips: dict[str, str] = {}
        self._on_primed = on_primed
        self._cache: dict[str, Converted] = {}
        self._reported: set[Problem] = set()
        self.problems: tuple[Problem, ...] = ()

    def startup_remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def views(self) -> list[View]:
        return [r.view() for r in self._registries]

    def _report_registries(self, views: Sequence[View]) -> None:
        for view in views:
            for status in Status:
                self._metrics.registry_up.labels(view.registry, status.value).set(
                    status is view.status
                )
            self._metrics.registry_services.labels(view.registry).set(len(view.services))

    async def rebuild(self) -> None:
        views = self.views()
        self._report_registries(views)
        if self._store.snapshot is None:
            waiting = [v.registry for v in views if not v.synced]
            if waiting and self.startup_remaining() > 0:
                log.info("holding first snapshot; waiting for registries=%s", ",".join(waiting))
                return
            if waiting:
                log.warning(
                    "startup wait over; serving without complete registries=%s", ",".join(waiting)
                )
        started = time.perf_counter()
        inputs = BuildInputs(self._keep, self._vip_cidr, self._vips, self._merge_policy)
        result = await asyncio.to_thread(build, views, self._cache, inputs)
        self._cache = result.cache
        self._vips = result.vips
        self._report(result.problems)
        self._metrics.build_seconds.observe(time.perf_counter() - started)
        self._metrics.encoded.inc(result.encoded)
        for kind, type_set in result.snapshot.sets.items():
            self._metrics.resources.labels(kind).set(len(type_set.resources))
        current = self._store.snapshot
        if current is not None and current.version == result.snapshot.version:
            return
        self._metrics.builds.inc()
        self._store.publish(result.snapshot)
        log.info(
            "snapshot published version=%s %s encoded=%d",
            result.snapshot.version,
            " ".join(f"{k}={len(s.resources)}" for k, s in result.snapshot.sets.items()),
            result.encoded,
        )
        if current is None and self._on_primed is not None:
            await self._on_primed()

    def _report(self, problems: tuple[Problem, ...]) -> None:
        """Log each problem once, when first seen; count withheld resources per registry."""
        now = set(problems)
        for problem in sorted(now - self._reported, key=lambda p: (p.registry, p.subject)):
            log.warning(
                "withheld registry=%s subject=%s: %s",
                problem.registry,
                problem.subject,
                problem.message,
            )
            self._metrics.rejected.labels(problem.registry).inc()
        self._reported = now
        self.problems = tuple(sorted(now, key=lambda p: (p.registry, p.subject)))
        per_registry: dict[str, int] = {r.name: 0 for r in self._registries}
        for problem in now:
            per_registry[problem.registry] = per_registry.get(problem.registry, 0) + 1
        for registry, count in per_registry.items():
            self._metrics.invalid.labels(registry).set(count)
