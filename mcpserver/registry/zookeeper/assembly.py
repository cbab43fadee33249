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
result (a `Member`: what the provider contributes to its service), and a rebuilt Service
equal to the one before keeps the old object. Within a listing, a provider whose name differs
from one met before only in its address and per-process fields (pid, timestamp:
dubbo.split_name) takes that one's Member at its own address, without a parse. Provider node
names are not kept: a result keeps a 128-bit digest of its listing and of each name
(`listing_digest`, `name_digest`). A name is a URL of ~400 characters; at 100k providers the
names were a third of the registry's memory, kept only to recognise a listing or a provider
seen before. A mapping is rebuilt when its record changes or one of the applications it
names changed (an index says which).

What is not per key is kept cheap too: the per-key service and problem tuples live in dicts
copied (in C) only when a key of their kind changed. An assembly says which of the
registry's parts it changed (`parts`: an interface key, an application key, the mapped
services), with what each shows now; the watcher hands those to its service table
(registry/table.py), which works out what changed by key. An assembly whose dirty keys all
turn out unchanged is the previous object itself, so the watcher publishes nothing.

No I/O, no threads, no event loop: the watcher calls `assemble()` on the loop, tests call it
with hand-made records.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from mcpserver.model import Problem, Service
from mcpserver.registry.dubbo.application import AppInstance as CuratorInstance
from mcpserver.registry.dubbo.mapping import (
    DubboOptions,
    Member,
    application_service,
    mapped_service,
    member,
    member_services,
    moved,
    unread_params,
)
from mcpserver.registry.table import keep_empty
from mcpserver.registry.zookeeper.curator import parse_instance
from mcpserver.registry.zookeeper.dubbo import RecordError, cut_fields, parse_provider, split_name

Key = tuple[str, str]
"""(root path, child name): `("/dubbo", "com.example.Greeter")`, `("/services", "shop")`."""

Part = tuple[str, ...]
"""A part of the registry's service table: ("interface", root, name), ("application", root,
name) or MAPPED."""
MAPPED: Part = ("mapped",)
PartContents = tuple[tuple[Service, ...], tuple[Problem, ...]]

SUBJECT_CHARS = 200  # a problem names its node; a 9,000-character node name is cut


# ------------------------------------------------------------------ raw records (input)


@dataclass(frozen=True, slots=True)
class InterfaceRecord:
    """`/ROOT/<interface>`: what its providers node holds."""

    providers: tuple[str, ...] = ()  # child node names of <interface>/providers, sorted
    ctime: int = 0  # the providers node's ctime in ms (its create_time); 0: no such node
    # listing_digest(providers) where the reader made it already (b"": not made); derived
    # from the providers, so not compared
    listing: bytes = field(default=b"", compare=False)


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
    listing: bytes  # listing_digest() of the record's providers
    ctime: int  # the record's
    parsed: Mapping[bytes, Member | Problem]  # name_digest() of a provider -> its parse
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
    reuses. Never mutated: the next assembly is a new object (only an assembly handed over
    to the next one, see `assemble()`, has its tables taken over and changed).

    Besides the per-key results it keeps the non-empty service and problem tuples per key
    and the indexes below, and says which table parts it changed (`parts`)."""

    interfaces: Mapping[Key, InterfaceResult] = field(default_factory=dict)
    apps: Mapping[Key, AppResult] = field(default_factory=dict)
    mappings: Mapping[Key, MappedResult] = field(default_factory=dict)
    # interface key -> its services / problems, only the non-empty ones
    interface_services: Mapping[Key, tuple[Service, ...]] = field(default_factory=dict)
    interface_problems: Mapping[Key, tuple[Problem, ...]] = field(default_factory=dict)
    # name of an interface-level service -> how many interface keys make one by that name
    direct: Mapping[str, int] = field(default_factory=dict)
    # application key -> its service (if any) / problems (if any)
    app_services: Mapping[Key, Service] = field(default_factory=dict)
    app_problems: Mapping[Key, tuple[Problem, ...]] = field(default_factory=dict)
    # application name -> its keys, sorted (one per services root that has it)
    app_keys: Mapping[str, tuple[Key, ...]] = field(default_factory=dict)
    # mapping key -> its service (if any)
    mapped_services: Mapping[Key, Service] = field(default_factory=dict)
    # application name -> the mapping keys whose record names it
    mapped_by_app: Mapping[str, frozenset[Key]] = field(default_factory=dict)
    # the mapped services not shadowed by an interface-level service of the same name
    shown_mapped: tuple[Service, ...] = ()
    # the table parts this assembly changed, with what each shows now
    parts: Mapping[Part, PartContents] = field(default_factory=dict)

    @property
    def services(self) -> tuple[Service, ...]:
        """Every Service (O(all): for tests and tools; the watcher reads `parts`)."""
        return tuple(
            itertools.chain(
                itertools.chain.from_iterable(self.interface_services.values()),
                self.app_services.values(),
                self.shown_mapped,
            )
        )

    @property
    def problems(self) -> tuple[Problem, ...]:
        """Every Problem (O(all), as `services`)."""
        return tuple(
            itertools.chain(
                itertools.chain.from_iterable(self.interface_problems.values()),
                itertools.chain.from_iterable(self.app_problems.values()),
            )
        )


EMPTY = Assembly()


def assemble(
    options: DubboOptions, changes: Changes, previous: Assembly = EMPTY, handover: bool = False
) -> Assembly:
    """The registry's Services after `changes`, reusing every result of `previous` whose
    inputs did not change. Returns `previous` itself when nothing changed (also when the
    dirty keys' records turn out to be the same: nothing new to publish).

    `handover`: the caller will not use `previous` again (the watcher keeps only its latest
    assembly), so its tables are updated in place and handed to the result instead of
    copied; the result is the same. Copying them (and freeing the copies) was a quarter of
    the loop's time at 10k interfaces under churn."""
    if not changes:
        return previous
    parts: dict[Part, PartContents] = {}
    interfaces = _Interfaces(previous, handover, parts)
    cut = cut_fields(unread_params(options))
    for key, record in changes.interfaces.items():
        old = previous.interfaces.get(key)
        result = None if record is None else _interface(options, key, record, old, cut)
        interfaces.set(key, result)
    apps = _Apps(previous, handover, parts)
    for key, app_record in changes.apps.items():
        app_old = previous.apps.get(key)
        apps.set(key, None if app_record is None else _app(options, key, app_record, app_old))
    mappings = _Mappings(previous, apps, handover)
    mappings.update(options, changes, apps.changed_names)
    if not (interfaces.changed or apps.changed or mappings.changed):
        return previous
    shown_mapped = previous.shown_mapped
    if mappings.changed or interfaces.direct_changed:
        # an interface with interface-level providers is more precise than its mapping
        # (Dubbo's register-mode=all writes both): the mapped host yields to it
        direct = interfaces.direct
        shown_mapped = tuple([s for s in mappings.services.values() if s.name not in direct])
        if shown_mapped != previous.shown_mapped:
            parts[MAPPED] = (shown_mapped, ())
    return Assembly(
        interfaces=interfaces.results,
        apps=apps.results,
        mappings=mappings.results,
        interface_services=interfaces.services,
        interface_problems=interfaces.problems,
        direct=interfaces.direct,
        app_services=apps.services,
        app_problems=apps.problems,
        app_keys=apps.keys,
        mapped_services=mappings.services,
        mapped_by_app=mappings.by_app,
        shown_mapped=shown_mapped,
        parts=parts,
    )


R = TypeVar("R")
V = TypeVar("V")


class _Owned(dict[R, V]):
    """A table an assembly made with `handover` owns alone: the next handover may change it
    in place. Any other table (EMPTY's, a pure assembly's) may be shared, so it is copied
    before it changes."""


class _CopyOnWrite(Generic[R, V]):
    """A table of the previous assembly, copied (in C, once) at its first change; or, when
    it is handed over and owned, changed in place."""

    def __init__(self, previous: Mapping[R, V], handover: bool) -> None:
        self.value = previous
        self._handover = handover
        self._copied: dict[R, V] | None = None
        if isinstance(previous, _Owned):
            if handover:
                self._copied = previous
            else:  # a pure assembly must not share a table a later handover may change
                self._copied = dict(previous)
                self.value = self._copied

    def put(self, key: R, value: V | None) -> None:
        """Set `key` to `value`; None removes it."""
        if self._copied is None:
            if value is None and key not in self.value:
                return
            self._copied = _Owned(self.value) if self._handover else dict(self.value)
            self.value = self._copied
        if value is None:
            self._copied.pop(key, None)
        else:
            self._copied[key] = value


class _Interfaces:
    """The interface results of the assembly being made, and what follows from them."""

    def __init__(self, previous: Assembly, handover: bool, parts: dict[Part, PartContents]) -> None:
        self._parts = parts
        self._results = _CopyOnWrite(previous.interfaces, handover)
        self._services = _CopyOnWrite(previous.interface_services, handover)
        self._problems = _CopyOnWrite(previous.interface_problems, handover)
        self._direct = _CopyOnWrite(previous.direct, handover)
        self.changed = False
        self.direct_changed = False  # a name became, or stopped being, interface-level

    @property
    def results(self) -> Mapping[Key, InterfaceResult]:
        return self._results.value

    @property
    def services(self) -> Mapping[Key, tuple[Service, ...]]:
        return self._services.value

    @property
    def problems(self) -> Mapping[Key, tuple[Problem, ...]]:
        return self._problems.value

    @property
    def direct(self) -> Mapping[str, int]:
        return self._direct.value

    def set(self, key: Key, result: InterfaceResult | None) -> None:
        old = self._results.value.get(key)
        if result is old:
            return
        self.changed = True
        self._results.put(key, result)
        services = result.services if result is not None else ()
        problems = result.problems if result is not None else ()
        self._parts[("interface", *key)] = (services, problems)
        self._services.put(key, services or None)
        self._problems.put(key, problems or None)
        before = {s.name for s in old.services} if old is not None else set()
        after = {s.name for s in services}
        for name in before - after:
            count = self._direct.value[name] - 1
            self._direct.put(name, count or None)
            self.direct_changed = self.direct_changed or not count
        for name in after - before:
            count = self._direct.value.get(name, 0) + 1
            self._direct.put(name, count)
            self.direct_changed = self.direct_changed or count == 1


class _Apps:
    """The application results of the assembly being made."""

    def __init__(self, previous: Assembly, handover: bool, parts: dict[Part, PartContents]) -> None:
        self._parts = parts
        self._results = _CopyOnWrite(previous.apps, handover)
        self._services = _CopyOnWrite(previous.app_services, handover)
        self._problems = _CopyOnWrite(previous.app_problems, handover)
        self._keys = _CopyOnWrite(previous.app_keys, handover)
        self.changed = False
        self.changed_names: set[str] = set()  # applications whose service changed

    @property
    def results(self) -> Mapping[Key, AppResult]:
        return self._results.value

    @property
    def services(self) -> Mapping[Key, Service]:
        return self._services.value

    @property
    def problems(self) -> Mapping[Key, tuple[Problem, ...]]:
        return self._problems.value

    @property
    def keys(self) -> Mapping[str, tuple[Key, ...]]:
        return self._keys.value

    def set(self, key: Key, result: AppResult | None) -> None:
        old = self._results.value.get(key)
        if result is old:
            return
        self.changed = True
        self._results.put(key, result)
        self._services.put(key, result.service if result is not None else None)
        self._problems.put(key, (result.problems if result is not None else ()) or None)
        if (old is None) != (result is None):  # the key came or went
            keys = set(self._keys.value.get(key[1], ()))
            keys.symmetric_difference_update({key})
            self._keys.put(key[1], tuple(sorted(keys)) or None)
        before = old.service if old is not None else None
        after = result.service if result is not None else None
        problems = result.problems if result is not None else ()
        self._parts[("application", *key)] = ((after,) if after else (), problems)
        if before is not after:
            self.changed_names.add(key[1])

    def service(self, name: str) -> Service | None:
        """The service of the application `name`: of the first services root (by path)
        that has one by that name with instances."""
        for key in self._keys.value.get(name, ()):
            service = self._services.value.get(key)
            if service is not None:
                return service
        return None


class _Mappings:
    """The Dubbo 3 mapping results of the assembly being made."""

    def __init__(self, previous: Assembly, apps: _Apps, handover: bool) -> None:
        self._apps = apps
        self._results = _CopyOnWrite(previous.mappings, handover)
        self._services = _CopyOnWrite(previous.mapped_services, handover)
        self._by_app = _CopyOnWrite(previous.mapped_by_app, handover)
        self.changed = False

    @property
    def results(self) -> Mapping[Key, MappedResult]:
        return self._results.value

    @property
    def services(self) -> Mapping[Key, Service]:
        return self._services.value

    @property
    def by_app(self) -> Mapping[str, frozenset[Key]]:
        return self._by_app.value

    def update(self, options: DubboOptions, changes: Changes, changed_apps: set[str]) -> None:
        stale: dict[Key, MappingRecord] = {}
        for key, record in changes.mappings.items():
            if record is None:
                self._set(key, None)
            else:
                stale[key] = record
        # a mapping is built from its applications' Services: rebuild those naming one
        # whose service changed
        for name in changed_apps:
            for key in self._by_app.value.get(name, ()):
                result = self._results.value.get(key)
                if key not in stale and result is not None:
                    stale[key] = result.record
        for key, record in stale.items():
            old = self._results.value.get(key)
            names = old.apps if old is not None and old.record.data == record.data else None
            names = names if names is not None else mapping_apps(record.data)
            sources = tuple(s for name in names if (s := self._apps.service(name)) is not None)
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
            self._set(key, MappedResult(record, names, sources, service))

    def _set(self, key: Key, result: MappedResult | None) -> None:
        old = self._results.value.get(key)
        if old is None and result is None:
            return
        self.changed = True
        self._results.put(key, result)
        self._services.put(key, result.service if result is not None else None)
        before = set(old.apps) if old is not None else set()
        after = set(result.apps) if result is not None else set()
        for name in before ^ after:
            keys = set(self._by_app.value.get(name, frozenset()))
            keys.symmetric_difference_update({key})
            self._by_app.put(name, frozenset(keys) or None)


def _problem(options: DubboOptions, subject: str, err: RecordError) -> Problem:
    return Problem(options.registry, subject, str(err), err.reason)


def _keep_identity(old: Iterable[Service], new: Iterable[Service]) -> tuple[Service, ...]:
    """New services, but the old object wherever it is equal (identity is cheap to check
    downstream; equality of a 200-endpoint Service is not)."""
    before = {s.name: s for s in old}
    return tuple(_same_or_new(before.get(s.name), s) for s in new)


def _same_or_new(old: Service | None, new: Service) -> Service:
    # most changes add or remove a provider: a different count settles it without the deep
    # comparison (which was a fifth of the loop's time under churn)
    if old is None or len(old.instances) != len(new.instances) or old != new:
        return new
    return old


def listing_digest(providers: tuple[str, ...]) -> bytes:
    """What tells one listing of provider node names (sorted) from another: a 128-bit
    BLAKE2b digest of the names, `/`-separated (no node name contains one)."""
    text = "/".join(providers).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(text, digest_size=16).digest()


def name_digest(name: str) -> bytes:
    """What a provider's parse is kept by: a 128-bit BLAKE2b digest of its node name."""
    return hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _interface(
    options: DubboOptions,
    key: Key,
    record: InterfaceRecord,
    old: InterfaceResult | None,
    cut: re.Pattern[str] | None,
) -> InterfaceResult:
    """`cut`: `cut_fields(unread_params(options))`, made once per assembly."""
    listing = record.listing or listing_digest(record.providers)
    if old is not None and old.listing == listing and old.ctime == record.ctime:
        return old
    seen = old.parsed if old is not None else {}
    parsed: dict[bytes, Member | Problem] = {}
    shapes: dict[str, Member | None] = {}
    for name in record.providers:
        digest = name_digest(name)
        item = seen.get(digest)
        if item is None:
            item = _member(options, key, name, cut, shapes)
        parsed[digest] = item
    members: list[Member] = []
    problems: list[Problem] = []
    for item in parsed.values():
        if isinstance(item, Member):
            members.append(item)
        else:
            problems.append(item)
    built = member_services(options, members, record.ctime) if members else []
    if options.keep_when_empty and old is not None:
        # the interface is still registered (its providers node is there): a host whose
        # last provider left stays, without endpoints, until the interface goes
        built = keep_empty(old.services, built)
    return InterfaceResult(
        listing=listing,
        ctime=record.ctime,
        parsed=parsed,
        services=_keep_identity(old.services if old else (), built),
        problems=tuple(problems),
    )


def _member(
    options: DubboOptions,
    key: Key,
    name: str,
    cut: re.Pattern[str] | None,
    shapes: dict[str, Member | None],
) -> Member | Problem:
    """A provider node's Member, or its Problem. The providers of an interface usually
    differ only in their address and the fields `cut` names (pid, timestamp): a name of a
    shape met before in this listing (dubbo.split_name) is the Member of the first one,
    moved to its own address, instead of a parse and a mapping of its own (they were
    three quarters of the assembly's time). `shapes`: shape -> the Member of the first
    name of that shape, or None where that name made a Problem (each such name is parsed,
    so that its Problem names it)."""
    split = split_name(name, cut)
    if split is not None:
        like = shapes.get(split[1])
        if like is not None:
            return moved(like, split[0])
    try:
        one = member(options, parse_provider(name))
    except RecordError as err:
        subject = f"{key[0]}/{key[1]}/providers/{name[:SUBJECT_CHARS]}"
        if split is not None:
            shapes[split[1]] = None
        return _problem(options, subject, err)
    if split is not None:
        # the address is the name's own (the shape's form says so): checked anyway, a
        # shape that keeps no Member is parsed name by name
        shapes[split[1]] = one if one.instance.address == split[0] else None
    return one


def _app(options: DubboOptions, key: Key, record: AppRecord, old: AppResult | None) -> AppResult:
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
    if service is None and options.keep_when_empty and old is not None and old.service:
        service = keep_empty((old.service,), ())[0]  # the application is still registered
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
