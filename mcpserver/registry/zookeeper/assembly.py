"""Pure, incremental assembly of a ZooKeeper registry's Services from raw records.

The mirror (mirror.py) copies ZooKeeper's nodes as it finds them and never parses. Here the
raw records of the keys that changed become Services and Problems, and everything else is
taken over from the previous assembly object for object, so a change costs in proportion to
what changed, not to the size of the tree (2,000 interfaces and 20,000 providers is a normal
registry; one provider coming or going must not re-parse them all).

Three kinds of key, each `(root path, child name)`:
- an interface under a Dubbo root: its provider node names and the providers node's ctime;
- an application under a services root: its Curator instances (id, JSON) and its ctime;
- a Dubbo 3 mapping `/ROOT/mapping/<interface>`: its data (application names) and ctime.

Reuse is at two levels: a key whose record is unchanged keeps its whole result; within a key
that changed, a provider node name (or an instance whose bytes are unchanged) keeps its parse
result, and a rebuilt Service equal to the one before keeps the old object. A mapping is
rebuilt when its record changes or one of the applications it names changed.

No I/O, no threads, no event loop: the watcher calls `assemble()` on the loop, tests call it
with hand-made records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from mcpserver.model import Problem, Service
from mcpserver.registry.zookeeper.curator import CuratorInstance, parse_instance
from mcpserver.registry.zookeeper.dubbo import Provider, RecordError, parse_provider
from mcpserver.registry.zookeeper.services import (
    ZkOptions,
    application_service,
    interface_services,
    mapped_service,
)

Key = tuple[str, str]
"""(root path, child name): `("/dubbo", "com.example.Greeter")`, `("/services", "shop")`."""

SUBJECT_CHARS = 200  # a problem names its node; a 9,000-character node name is cut


# ------------------------------------------------------------------ raw records (input)


@dataclass(frozen=True, slots=True)
class InterfaceRecord:
    """`/ROOT/<interface>`: what its providers node holds."""

    providers: tuple[str, ...] = ()  # child node names of <interface>/providers, sorted
    ctime: int = 0  # the providers node's ctime in ms (its create_time); 0: no such node


@dataclass(frozen=True, slots=True)
class AppRecord:
    """`/SERVICES/<application>`: its Curator instances."""

    instances: tuple[tuple[str, bytes], ...] = ()  # (instance id, JSON data), sorted by id
    ctime: int = 0  # the application node's ctime in ms


@dataclass(frozen=True, slots=True)
class MappingRecord:
    """`/ROOT/mapping/<interface>`: the applications that serve the interface."""

    data: bytes = b""  # comma-separated application names, as Dubbo writes them
    ctime: int = 0


@dataclass(frozen=True, slots=True)
class Changes:
    """The keys that changed since the last assembly (the dirty keys), each with its raw
    record now; None: the key is gone from the tree."""

    interfaces: Mapping[Key, InterfaceRecord | None] = field(default_factory=dict)
    apps: Mapping[Key, AppRecord | None] = field(default_factory=dict)
    mappings: Mapping[Key, MappingRecord | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.interfaces or self.apps or self.mappings)


# ------------------------------------------------------------------ results (output)


@dataclass(frozen=True, slots=True)
class InterfaceResult:
    record: InterfaceRecord
    parsed: Mapping[str, Provider | Problem]  # provider node name -> what it parsed to
    services: tuple[Service, ...]
    problems: tuple[Problem, ...]


@dataclass(frozen=True, slots=True)
class AppResult:
    record: AppRecord
    parsed: Mapping[str, tuple[bytes, CuratorInstance | Problem]]  # id -> (data, parse)
    service: Service | None  # None: no usable instance
    problems: tuple[Problem, ...]


@dataclass(frozen=True, slots=True)
class MappedResult:
    record: MappingRecord
    apps: tuple[str, ...]  # the application names the record lists
    sources: tuple[Service, ...]  # the application Services the interface host was built from
    service: Service | None  # None: none of the applications has instances


@dataclass(frozen=True, slots=True)
class Assembly:
    """One registry's Services and Problems, with the per-key results the next assembly
    reuses. Never mutated: the next assembly is a new object."""

    interfaces: Mapping[Key, InterfaceResult] = field(default_factory=dict)
    apps: Mapping[Key, AppResult] = field(default_factory=dict)
    mappings: Mapping[Key, MappedResult] = field(default_factory=dict)
    services: tuple[Service, ...] = ()
    problems: tuple[Problem, ...] = ()


EMPTY = Assembly()


def assemble(options: ZkOptions, changes: Changes, previous: Assembly = EMPTY) -> Assembly:
    """The registry's Services after `changes`, reusing every result of `previous` whose
    inputs did not change. Returns `previous` itself when nothing changed."""
    if not changes:
        return previous
    interfaces = _apply(
        previous.interfaces,
        changes.interfaces,
        lambda key, record, old: _interface(options, key, record, old),
    )
    apps = _apply(
        previous.apps, changes.apps, lambda key, record, old: _app(options, key, record, old)
    )
    mappings = _mappings(options, previous, changes, apps)
    services = [s for result in interfaces.values() for s in result.services]
    # an interface with interface-level providers is more precise than its mapping (Dubbo's
    # register-mode=all writes both): the mapped host yields to it
    direct = {s.name for s in services}
    services += [r.service for r in apps.values() if r.service is not None]
    services += [
        r.service
        for r in mappings.values()
        if r.service is not None and r.service.name not in direct
    ]
    problems = [p for result in interfaces.values() for p in result.problems]
    problems += [p for result in apps.values() for p in result.problems]
    return Assembly(interfaces, apps, mappings, tuple(services), tuple(problems))


R = TypeVar("R")
Rec = TypeVar("Rec", InterfaceRecord, AppRecord)


def _apply(
    previous: Mapping[Key, R],
    changed: Mapping[Key, Rec | None],
    build: Callable[[Key, Rec, R | None], R],
) -> dict[Key, R]:
    """The previous per-key results with the changed keys rebuilt (or dropped)."""
    results = dict(previous)
    for key, record in changed.items():
        if record is None:
            results.pop(key, None)
        else:
            results[key] = build(key, record, results.get(key))
    return results


def _problem(options: ZkOptions, subject: str, err: RecordError) -> Problem:
    return Problem(options.registry, subject, str(err), err.reason)


def _keep_identity(old: Iterable[Service], new: Iterable[Service]) -> tuple[Service, ...]:
    """New services, but the old object wherever it is equal (identity is cheap to check
    downstream; equality of a 200-endpoint Service is not)."""
    before = {s.name: s for s in old}
    return tuple(s if before.get(s.name) != s else before[s.name] for s in new)


def _interface(
    options: ZkOptions, key: Key, record: InterfaceRecord, old: InterfaceResult | None
) -> InterfaceResult:
    if old is not None and old.record == record:
        return old
    seen = old.parsed if old is not None else {}
    parsed: dict[str, Provider | Problem] = {}
    for name in record.providers:
        item = seen.get(name)
        if item is None:
            try:
                item = parse_provider(name)
            except RecordError as err:
                subject = f"{key[0]}/{key[1]}/providers/{name[:SUBJECT_CHARS]}"
                item = _problem(options, subject, err)
        parsed[name] = item
    providers = [p for p in parsed.values() if isinstance(p, Provider)]
    built = interface_services(options, providers, record.ctime) if providers else []
    return InterfaceResult(
        record=record,
        parsed=parsed,
        services=_keep_identity(old.services if old else (), built),
        problems=tuple(p for p in parsed.values() if isinstance(p, Problem)),
    )


def _app(options: ZkOptions, key: Key, record: AppRecord, old: AppResult | None) -> AppResult:
    if old is not None and old.record == record:
        return old
    seen = old.parsed if old is not None else {}
    parsed: dict[str, tuple[bytes, CuratorInstance | Problem]] = {}
    for ident, data in record.instances:
        before = seen.get(ident)
        if before is not None and before[0] == data:
            parsed[ident] = before
            continue
        try:
            item: CuratorInstance | Problem = parse_instance(data, options.default_protocol)
        except RecordError as err:
            subject = f"{key[0]}/{key[1]}/{ident[:SUBJECT_CHARS]}"
            item = _problem(options, subject, err)
        parsed[ident] = (data, item)
    instances = [i for _, i in parsed.values() if isinstance(i, CuratorInstance)]
    service = application_service(options, key[1], instances, record.ctime) if instances else None
    if service is not None and old is not None and old.service == service:
        service = old.service
    return AppResult(
        record=record,
        parsed=parsed,
        service=service,
        problems=tuple(p for _, p in parsed.values() if isinstance(p, Problem)),
    )


def mapping_apps(data: bytes) -> tuple[str, ...]:
    """Dubbo's mapping data: application names, comma-separated."""
    text = data.decode("utf-8", errors="replace")
    return tuple(sorted({name.strip() for name in text.split(",") if name.strip()}))


def _mappings(
    options: ZkOptions, previous: Assembly, changes: Changes, apps: Mapping[Key, AppResult]
) -> dict[Key, MappedResult]:
    results = dict(previous.mappings)
    stale: dict[Key, MappingRecord] = {}
    for key, record in changes.mappings.items():
        if record is None:
            results.pop(key, None)
        else:
            stale[key] = record
    # a mapping is built from its applications' Services: rebuild those naming one that changed
    changed_apps = {key[1] for key in changes.apps}
    if changed_apps:
        for key, result in results.items():
            if key not in stale and not changed_apps.isdisjoint(result.apps):
                stale[key] = result.record
    if not stale:
        return results
    by_name = {key[1]: r.service for key, r in apps.items() if r.service is not None}
    for key, record in stale.items():
        old = results.get(key)
        names = old.apps if old is not None and old.record.data == record.data else None
        names = names if names is not None else mapping_apps(record.data)
        sources = tuple(by_name[name] for name in names if name in by_name)
        if (
            old is not None
            and old.record == record
            and len(old.sources) == len(sources)
            and all(a is b for a, b in zip(old.sources, sources, strict=True))
        ):
            continue
        service = mapped_service(options, key[1], sources, record.ctime)
        if service is not None and old is not None and old.service == service:
            service = old.service
        results[key] = MappedResult(record, names, sources, service)
    return results
