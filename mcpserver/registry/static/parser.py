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
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcpserver.convert.naming import render_host
from mcpserver.failure import describe
from mcpserver.model import EPOCH_2000, Instance, Port, Problem, Service, labels_of


class StaticFileError(Exception):
    """The whole file is unusable (not YAML, or no `services` list)."""


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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
    namespace = entry.namespace or options.namespace
    hosts = [entry.host] if entry.host else list(entry.hosts)
    if not hosts:
        hosts = [render_host(options.host_template, entry.name, namespace, options.registry)]
    created = entry.created or EPOCH_2000
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return Service(
        registry=options.registry,
        namespace=namespace,
        name=entry.name,
        hosts=tuple(hosts),
        ports=tuple(Port(p.name, p.number, p.protocol, p.target_port) for p in entry.ports),
        instances=tuple(
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
        addresses=tuple(entry.addresses),
        labels=labels_of(entry.labels),
        export_to=tuple(entry.export_to),
        location=entry.location,
        resolution=entry.resolution,
        endpoints_mode=options.endpoints_mode,
        create_time=created,
    )


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
    them), validates one, and the service table compares the rest in one `is` each."""
    known = known or {}
    texts = texts or {}
    entries = _entries(text, texts, known)
    services: list[Service] = []
    problems: list[Problem] = []
    locations: dict[str, str] = {}
    now_known: dict[str, Service] = {}
    now_texts: dict[str, str] = {}
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
"""One raw entry: what YAML or JSON made of it, its text in the file (None when the file was
parsed whole), and its repr if already known (an unchanged text: `raw` is then None)."""


def _entries(text: str, texts: Mapping[str, str], known: Mapping[str, Service]) -> list[Entry]:
    """The file's entries, each parsed on its own when the file has the plain shape
    (`entry_texts`) and only if its text changed; the whole file parsed at once otherwise."""
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
