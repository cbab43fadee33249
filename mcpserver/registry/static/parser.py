"""Pure parsing of the static registry file format (design.md section 1).

Each service entry is checked on its own: a malformed entry is skipped with one problem per
bad field, the others still flow. Entries that are well-formed but break Istio's rules (a bad
host, a duplicate port name, a non-IP address) are passed on; validation withholds them later
with Istio's own wording. Every number is bounded as Istio's fields bound it (ports 1-65535,
uint32 weights), so nothing that parses can make conversion fail.

The file as a whole is strict: an empty file, a missing `services` key or an unknown top-level
key (`service:`) is an error that keeps the last good set, never "zero services". Only an
explicit `services: []` means "no services" (and protection against mass removal holds it).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcpserver.convert.naming import render_host
from mcpserver.failure import describe
from mcpserver.model import EPOCH_2000, Instance, Labels, Port, Problem, Service, labels_of


class StaticFileError(Exception):
    """The whole file is unusable (not YAML, or no `services` list)."""


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


PortNumber = Annotated[int, Field(ge=1, le=65535)]
UINT32_MAX = 2**32 - 1  # ServiceEntry endpoint weight is a uint32 (networking/v1alpha3)


class StaticPort(_Entry):
    name: str
    number: PortNumber
    protocol: str = "TCP"
    target_port: int = Field(default=0, ge=0, le=65535)


class StaticInstance(_Entry):
    address: str
    ports: dict[str, PortNumber] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    weight: int = Field(default=0, ge=0, le=UINT32_MAX)
    locality: str = ""
    network: str = ""
    service_account: str = ""


class StaticService(_Entry):
    name: str
    namespace: str | None = None
    host: str | None = None
    hosts: list[str] = Field(default_factory=list)
    addresses: list[str] = Field(default_factory=list)
    ports: list[StaticPort]
    instances: list[StaticInstance] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    export_to: list[str] = Field(default_factory=list)
    location: Literal["MESH_INTERNAL", "MESH_EXTERNAL"] = "MESH_INTERNAL"
    resolution: Literal["STATIC", "DNS", "DNS_ROUND_ROBIN", "NONE"] = "STATIC"
    created: datetime | None = None


@dataclass(frozen=True, slots=True)
class StaticOptions:
    registry: str
    namespace: str
    host_template: str
    endpoints_mode: str


def field_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's ('ports', 0, 'number') as ports[0].number."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(entry)"


def entry_errors(error: ValidationError) -> list[str]:
    """Every bad field of one entry, with its path."""
    return [f"{field_path(e['loc'])}: {e['msg']}" for e in error.errors()]


def to_service(entry: StaticService, options: StaticOptions) -> Service:
    return _service(
        options,
        entry.name,
        entry.namespace,
        entry.host,
        entry.hosts,
        entry.addresses,
        tuple(Port(p.name, p.number, p.protocol, p.target_port) for p in entry.ports),
        tuple(
            Instance(
                address=i.address,
                ports=tuple(sorted(i.ports.items())),
                labels=labels_of(i.labels),
                weight=i.weight,
                locality=i.locality,
                network=i.network,
                service_account=i.service_account,
            )
            for i in entry.instances
        ),
        entry.labels,
        entry.export_to,
        entry.location,
        entry.resolution,
        entry.created,
    )


def _service(
    options: StaticOptions,
    name: str,
    namespace: str | None,
    host: str | None,
    hosts: list[str],
    addresses: list[str],
    ports: tuple[Port, ...],
    instances: tuple[Instance, ...],
    labels: dict[str, str],
    export_to: list[str],
    location: str,
    resolution: str,
    created: datetime | None,
) -> Service:
    """The Service of one entry's values, with the file's defaults filled in."""
    namespace = namespace or options.namespace
    hosts = [host] if host else list(hosts)
    if not hosts:
        hosts = [render_host(options.host_template, name, namespace, options.registry)]
    created = created or EPOCH_2000
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return Service(  # by position (_SERVICE_ORDER): 14 keywords cost 1 us more per entry
        options.registry,
        namespace,
        name,
        tuple(hosts),
        ports,
        instances,
        tuple(addresses),
        labels_of(labels),
        (),  # annotations
        tuple(export_to),
        location,
        resolution,
        options.endpoints_mode,
        created,
    )


_SERVICE_ORDER = (
    *("registry", "namespace", "name", "hosts", "ports", "instances", "addresses", "labels"),
    *("annotations", "export_to", "location", "resolution", "endpoints_mode", "create_time"),
)
if tuple(f.name for f in fields(Service) if f.init)[: len(_SERVICE_ORDER)] != _SERVICE_ORDER:
    raise ImportError("mcpserver.model.Service's fields moved: update _service's arguments")


_SERVICE_KEYS = frozenset(StaticService.model_fields) - {"created"}
_PORT_KEYS = frozenset(StaticPort.model_fields)
_INSTANCE_KEYS = frozenset(StaticInstance.model_fields)
_LOCATIONS = frozenset(["MESH_INTERNAL", "MESH_EXTERNAL"])
_RESOLUTIONS = frozenset(["STATIC", "DNS", "DNS_ROUND_ROBIN", "NONE"])
_NO_LIST: list[str] = []
_NO_MAP: dict[str, str] = {}


def direct_service(
    raw: object, options: StaticOptions, shared: dict[object, Labels] | None = None
) -> Service | None:
    """to_service(StaticService.model_validate(raw), options) for an entry of the plain
    shape: each field of the type it is declared with exactly (str, int but not bool, list,
    dict), numbers within their bounds, no `created` (dates are pydantic's to read). None
    for anything else, which goes through pydantic (what it converts or refuses, and how it
    says why, stays its own). pydantic's validation of every entry was the larger part of
    parsing a 10k-service JSON file; tests/unit/test_static_parser.py holds the two paths
    equal over generated entries. `shared`: label sets already read (`_labels`), kept
    across the entries of one file."""
    if type(raw) is not dict or not raw.keys() <= _SERVICE_KEYS:
        return None
    get = raw.get
    name, namespace, host = get("name"), get("namespace"), get("host")
    hosts, addresses = get("hosts", _NO_LIST), get("addresses", _NO_LIST)
    labels, export_to = get("labels", _NO_MAP), get("export_to", _NO_LIST)
    location, resolution = get("location", "MESH_INTERNAL"), get("resolution", "STATIC")
    if (
        type(name) is not str
        or not (namespace is None or type(namespace) is str)
        or not (host is None or type(host) is str)
        or not (_texts(hosts) and _texts(addresses) and _texts(export_to))
        or not _text_map(labels)
        or type(location) is not str
        or location not in _LOCATIONS
        or type(resolution) is not str
        or resolution not in _RESOLUTIONS
    ):
        return None
    ports = _ports(get("ports"))
    instances = _instances(get("instances", _NO_LIST), {} if shared is None else shared)
    if ports is None or instances is None:
        return None
    return _service(
        options,
        name,
        namespace,
        host,
        hosts,
        addresses,
        ports,
        instances,
        labels,
        export_to,
        location,
        resolution,
        None,
    )


# `not value or`: most entries leave these out (an empty default), and a generator for
# all() costs more than the rest of the check
def _texts(value: object) -> bool:
    return type(value) is list and (not value or all(type(item) is str for item in value))


def _text_map(value: object) -> bool:
    return type(value) is dict and (
        not value or all(type(k) is str and type(v) is str for k, v in value.items())
    )


def _port_map(value: object) -> bool:
    return type(value) is dict and all(
        type(k) is str and type(v) is int and 1 <= v <= 65535 for k, v in value.items()
    )


def _ports(value: object) -> tuple[Port, ...] | None:
    if type(value) is not list:
        return None
    ports = []
    for port in value:
        if type(port) is not dict or not port.keys() <= _PORT_KEYS:
            return None
        name, number = port.get("name"), port.get("number")
        protocol, target = port.get("protocol", "TCP"), port.get("target_port", 0)
        if (
            type(name) is not str
            or type(number) is not int
            or not 1 <= number <= 65535
            or type(protocol) is not str
            or type(target) is not int
            or not 0 <= target <= 65535
        ):
            return None
        ports.append(Port(name, number, protocol, target))
    return tuple(ports)


def _instances(value: object, shared: dict[object, Labels]) -> tuple[Instance, ...] | None:
    if type(value) is not list:
        return None
    instances = []
    plain = _plain_instance
    for item in value:
        if type(item) is not dict:
            return None
        get = item.get
        address, labels = get("address"), _labels(get("labels", _NO_MAP), shared)
        if type(address) is not str or labels is None:
            return None
        if len(item) == 1 + ("labels" in item):  # the usual shape: an address and labels
            instances.append(plain(address, labels))
            continue
        if not item.keys() <= _INSTANCE_KEYS:
            return None
        ports, weight = get("ports", _NO_MAP), get("weight", 0)
        locality, network = get("locality", ""), get("network", "")
        account = get("service_account", "")
        if (
            not _port_map(ports)
            or type(weight) is not int
            or not 0 <= weight <= UINT32_MAX
            or type(locality) is not str
            or type(network) is not str
            or type(account) is not str
        ):
            return None
        ports = tuple(sorted(ports.items())) if ports else ()
        instances.append(Instance(address, ports, labels, weight, locality, network, account))
    return tuple(instances)


def _plain_maker() -> Callable[[str, Labels], Instance]:
    """Instance(address, (), labels) for the usual instance, at half the cost: a frozen
    dataclass's __init__ sets each of its seven fields through object.__setattr__, and a
    10k-service file has 100k instances. This sets the slots through their descriptors,
    each field as __init__ would (the others to their defaults). Instance(...) itself if
    its fields are not the ones this knows, or it gains a __post_init__ or a default
    factory."""
    known = ("address", "ports", "labels", "weight", "locality", "network", "service_account")
    declared = fields(Instance)
    if (
        tuple(f.name for f in declared) != known
        or hasattr(Instance, "__post_init__")
        or any(f.default is MISSING for f in declared[1:])
    ):
        return lambda address, labels: Instance(address, (), labels)
    set_address, set_ports, set_labels, set_weight, set_locality, set_network, set_account = (
        getattr(Instance, name).__set__ for name in known
    )
    weight, locality, network, account = (f.default for f in declared[3:])
    new = object.__new__

    def plain(address: str, labels: Labels) -> Instance:
        instance: Instance = new(Instance)
        set_address(instance, address)
        set_ports(instance, ())
        set_labels(instance, labels)
        set_weight(instance, weight)
        set_locality(instance, locality)
        set_network(instance, network)
        set_account(instance, account)
        return instance

    return plain


_plain_instance = _plain_maker()


def _labels(value: object, shared: dict[object, Labels]) -> Labels | None:
    """An instance's labels, sorted, the same tuple for every instance with the same labels
    (written in the same order) in the file: one check per label set, one tuple in memory.
    None if not a map of strings."""
    if type(value) is not dict:
        return None
    if not value:
        return ()
    try:
        return shared[tuple(value.items())]
    except KeyError:
        pass
    except TypeError:  # an unhashable value: not a string
        return None
    if not _text_map(value):
        return None
    items = tuple(value.items())
    labels = shared[items] = tuple(sorted(items))
    return labels


@dataclass(frozen=True, slots=True)
class StaticFile:
    """A parsed file: its services, the entries skipped, and where each service came from."""

    services: tuple[Service, ...]
    problems: tuple[Problem, ...]
    locations: dict[str, str]  # service key -> "services[3] (name)"
    known: Mapping[str, Service] = field(default_factory=dict)  # entry repr -> its Service
    texts: Mapping[str, str] = field(default_factory=dict)
    """An entry's text in the file (see `entry_texts`) -> its repr, for the valid entries:
    what the next parse of the file needs not parse again."""


def _entry_key(raw: object) -> str:
    """A text of one raw entry such that equal keys mean equal entries: its repr, which for
    what JSON and YAML load (dicts, lists, strings, numbers, booleans, None, dates) names
    each value with its type (1, 1.0, '1' and True differ). Not canonical (keys in file
    order): an entry whose keys were reordered is just validated again. A fifth of the cost
    of json.dumps(sort_keys=True), which was a fifth of parsing a 10k-service file."""
    return repr(raw)


def parse_static(
    text: str,
    options: StaticOptions,
    known: Mapping[str, Service] | None = None,
    texts: Mapping[str, str] | None = None,
) -> StaticFile:
    """Services and per-entry problems from the file's text; StaticFileError if unusable.

    `known` and `texts` are the previous parse's: an entry whose text did not change is
    neither parsed nor validated again and keeps its Service object, so an edit of one
    service in a YAML file of 10k parses one entry (not 10k: libyaml takes about 12 s for
    them), validates one, and the service table compares the rest in one `is` each.

    A JSON file of the plain shape is read one entry at a time, each made a Service before
    the next is read (`json_stream`): what json makes of an entry (its dicts, lists and
    strings: ~73 MiB at 10k services x 10) is freed as soon as it is read, and the next
    entry's reuses its memory, instead of the whole file's being built, held and freed at
    once. Anything else is cut or parsed as `_entries` says."""
    known = known or {}
    if _JSON_HEAD.match(text):
        try:
            return _parse_entries(json_stream(text), options, known)
        except _NotPlainError:
            pass  # parsed whole (`_entries`), which also says what is wrong with it
    return _parse_entries(_entries(text, texts or {}, known), options, known)


def _parse_entries(
    entries: Iterable[Entry], options: StaticOptions, known: Mapping[str, Service]
) -> StaticFile:
    services: list[Service] = []
    problems: list[Problem] = []
    locations: dict[str, str] = {}
    now_known: dict[str, Service] = {}
    now_texts: dict[str, str] = {}
    shared: dict[object, Labels] = {}
    for index, (raw, source, unchanged) in enumerate(entries):
        key = unchanged if unchanged is not None else _entry_key(raw)
        service = known.get(key) or now_known.get(key)
        if service is not None:
            if source is not None:
                now_texts[source] = key
            now_known[key] = service
            services.append(service)
            locations.setdefault(service.key, f"services[{index}] ({service.name})")
            continue
        label = raw.get("name", f"#{index}") if isinstance(raw, dict) else f"#{index}"
        subject = f"services[{index}] ({label})"
        service = direct_service(raw, options, shared)
        if service is None:
            try:
                entry = StaticService.model_validate(raw)
            except ValidationError as err:
                problems.extend(
                    Problem(options.registry, subject, message, "malformed")
                    for message in entry_errors(err)
                )
                continue
            service = to_service(entry, options)
        if source is not None:
            now_texts[source] = key
        now_known[key] = service
        services.append(service)
        locations.setdefault(service.key, subject)
    return StaticFile(tuple(services), tuple(problems), locations, now_known, now_texts)


Entry = tuple[object, str | None, str | None]
"""One raw entry: what YAML or JSON made of it, its YAML text in the file (None when the file
was parsed whole or is JSON), and its key if already known (an unchanged YAML text: `raw` is
then None) or made from its JSON text."""


def _entries(text: str, texts: Mapping[str, str], known: Mapping[str, Service]) -> list[Entry]:
    """The file's entries, each parsed on its own when the YAML file has the plain shape
    (`entry_texts`), only if its text changed; the whole file parsed at once otherwise (a
    JSON file whose shape `json_stream` does not take)."""
    pieces = None if text.lstrip().startswith("{") else entry_texts(text)
    if pieces is not None:
        entries: list[Entry] = []
        for piece in pieces:
            key = texts.get(piece)
            if key is not None and key in known:
                entries.append((None, piece, key))
                continue
            raw = _load_entry(piece)
            if raw is _NOT_ONE:
                break  # a shape the cut does not understand: parse the whole file
            entries.append((raw, piece, None))
        else:
            return entries
    data = _load(text)
    if data is None:
        raise StaticFileError("the file is empty (write `services: []` to serve no services)")
    if not isinstance(data, dict):
        raise StaticFileError("expected a mapping with a `services` list")
    unknown = sorted(str(k) for k in data if k != "services")
    if unknown:
        raise StaticFileError(f"unknown top-level key {', '.join(map(repr, unknown))}")
    if "services" not in data:
        raise StaticFileError("no `services` key (write `services: []` to serve no services)")
    if not isinstance(data["services"], list):
        raise StaticFileError("`services` must be a list")
    return [(raw, None, None) for raw in data["services"]]


# JSON's whitespace is these four (RFC 8259), not all that \s matches
_JSON_HEAD = re.compile(r'[ \t\n\r]*\{[ \t\n\r]*"services"[ \t\n\r]*:[ \t\n\r]*\[[ \t\n\r]*')
_JSON_NEXT = re.compile(r"[ \t\n\r]*(,|\])[ \t\n\r]*")
_JSON_END = re.compile(r"[ \t\n\r]*\}[ \t\n\r]*\Z")
_JSON = json.JSONDecoder()
JSON_KEY = "json:"
"""What starts the key of an entry read from its JSON text: no repr starts so."""


class _NotPlainError(Exception):
    """The JSON file is not of the plain shape (`json_stream`)."""


def json_stream(text: str) -> Iterator[Entry]:
    """A JSON file of the plain shape (`{"services": [...]}`, nothing else) read entry by
    entry, each keyed by its own text (JSON_KEY + the text: equal texts are equal entries)
    instead of its repr: at 10k services the repr of every entry cost more than parsing the
    file. Each entry is read when the previous one has been taken. _NotPlainError, when it
    comes to it, for anything else (other keys, a broken file): the caller parses the file
    whole, which also says what is wrong with it."""
    head = _JSON_HEAD.match(text)
    if head is None:
        raise _NotPlainError
    at = head.end()
    if text.startswith("]", at):
        at += 1
    else:
        while True:
            try:
                raw, end = _JSON.raw_decode(text, at)
            except json.JSONDecodeError:
                raise _NotPlainError from None
            yield raw, None, JSON_KEY + text[at:end]
            del raw  # not held while the caller reads the next entry
            step = _JSON_NEXT.match(text, end)
            if step is None:
                raise _NotPlainError
            at = step.end()
            if step.group(1) == "]":
                break
    if not _JSON_END.match(text, at):
        raise _NotPlainError


def json_entries(text: str) -> list[Entry] | None:
    """Every entry of `json_stream`, or None for a file not of the plain shape."""
    try:
        return list(json_stream(text))
    except _NotPlainError:
        return None


_NOT_ONE: object = object()
_HEAD = re.compile(r"\A(?:[ \t]*(?:#[^\n]*)?\r?\n)*services:[ \t]*(?:#[^\n]*)?\r?\n")
_FIRST_ITEM = re.compile(r"^( *)-(?=[ \r\n]|\Z)", re.MULTILINE)
_STRUCTURE = re.compile(r"^(?:---|\.\.\.|%| *\t)", re.MULTILINE)


def entry_texts(text: str) -> list[str] | None:
    """The file cut into one text per entry, when it has the plain shape every generator and
    most hands write: a `services:` key alone on its line, then a block sequence whose items
    all start at one indentation (`- ` at the start of a line), comments and blank lines
    anywhere. Each text is a complete YAML document of one item. None for anything else
    (flow style, other top-level keys, several documents, tabs, no items): the caller
    parses the file whole, which also says what is wrong with it.

    Safe by construction for what it accepts: inside an entry, YAML puts every line of a
    value (block scalars, plain and quoted multi-line strings) deeper than the entry's own
    keys, so a line starting `- ` at the items' indentation begins the next entry. An entry
    text that does not parse as exactly one mapping (an anchor used across entries, a cut
    in the wrong place) makes the caller parse the file whole. Regular expressions over the
    whole text (C), not a Python loop over its lines: a 10k-service file has 470k of them."""
    head = _HEAD.match(text)
    if head is None or _STRUCTURE.search(text):
        return None
    first = _FIRST_ITEM.search(text, head.end())
    if first is None or not all(map(_blank, text[head.end() : first.start()].splitlines())):
        return None
    indent = len(first.group(1))
    # a line shallower than the items, or at their depth but not an item: another key, or
    # another structure
    shallower = f" {{0,{indent - 1}}}[^ \\r\\n#]|" if indent else ""
    stray = re.compile(f"^(?:{shallower} {{{indent}}}[^ \\r\\n#-])", re.MULTILINE)
    if stray.search(text, first.start()):
        return None
    item = re.compile(f"^ {{{indent}}}-(?=[ \\r\\n]|\\Z)", re.MULTILINE)
    bounds = [m.start() for m in item.finditer(text, first.start())]
    bounds.append(len(text))
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def _blank(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _load_entry(piece: str) -> object:
    """One entry's text as YAML: its mapping, or _NOT_ONE if it is not one mapping item."""
    try:
        data = yaml.load(piece, Loader=_LOADER)  # noqa: S506  _LOADER is a safe loader
    except yaml.YAMLError:
        return _NOT_ONE
    if not isinstance(data, list) or len(data) != 1:
        return _NOT_ONE
    return data[0]


# libyaml's C loader when PyYAML has it: several times faster than the pure-Python one.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load(text: str) -> object:
    """The file's data. JSON (a subset of YAML, same schema) is read with the json module:
    at 10k services it parses 20x faster than even libyaml, so large generated files should
    be JSON. Anything else, or JSON that does not parse, is read as YAML."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass  # YAML flow style, or broken: the YAML parser says which
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506  _LOADER is a safe loader
    except yaml.YAMLError as err:
        raise StaticFileError(describe(err)) from None
