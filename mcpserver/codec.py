"""What protection remembers of a registry, as JSON: for a peer (GET /debug/accepted) and for
the state directory, one format for both.

A replica that starts takes its peers' (or its own last run's) accepted views as its own
reference, so it must get back exactly the Services the other side accepted: equal values
convert to the same bytes, and only then do replicas serve byte-identical resources. Every
field of `model.Service` and `model.Instance` is written; a field at its default is left
out (most are), and equal Services in several views (checkpoints share nearly all of
theirs) are written once and named by their index.

Times cross processes and restarts, so they are wall-clock seconds here (the caller turns
its monotonic times into these and back). Decoding trusts nothing: anything malformed is a
`CodecError` naming where, never a half-read record.

Pure: no I/O (peers.py and statefiles.py do that).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from mcpserver.model import EPOCH_2000, Instance, Port, Service

FORMAT: Final = 1
"""The format's version; a reader refuses any other."""


class CodecError(ValueError):
    """A document that is not what this module writes."""


@dataclass(frozen=True, slots=True)
class Point:
    """One accepted view: when (wall clock), its services, and where it came from."""

    at: float
    services: tuple[Service, ...]
    origin: str = ""


@dataclass(frozen=True, slots=True)
class HeldRecord:
    """A hold: since when (wall clock), why, what holds it, and its reference view."""

    since: float
    reason: str
    cause: str
    reference: Point


@dataclass(frozen=True, slots=True)
class GraceRecord:
    """A recovery grace in effect: from when until when (wall clock), and why."""

    since: float
    until: float
    why: str


@dataclass(frozen=True, slots=True)
class Record:
    """What protection remembers of one registry (memory.Kept, in wall-clock time)."""

    checkpoints: tuple[Point, ...]
    hold: HeldRecord | None = None
    grace: GraceRecord | None = None


@dataclass(frozen=True, slots=True)
class Document:
    """What one replica remembers of its registries, when, and whether it has served a
    first snapshot (a replica that has not is no one's reference)."""

    replica: str
    written: float
    primed: bool
    records: Mapping[str, Record]


# ------------------------------------------------------------------ encoding


def encode_document(document: Document) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "replica": document.replica,
        "written": document.written,
        "primed": document.primed,
        "registries": encode_records(document.records),
    }


def encode_records(records: Mapping[str, Record]) -> dict[str, Any]:
    """{registry: record} as a JSON-ready mapping (without the document's envelope)."""
    return {name: _encode_record(record) for name, record in records.items()}


def _encode_record(record: Record) -> dict[str, Any]:
    # equal Services are written once. Most are the very same object in every checkpoint,
    # so each object is hashed by value once and then found by id() (every one stays alive
    # in `record` for this call): hashing 10k Services per checkpoint cost more than
    # encoding them
    by_value: dict[Service, int] = {}
    seen: dict[int, int] = {}
    services: list[dict[str, Any]] = []

    def point(p: Point) -> dict[str, Any]:
        indexes = []
        for service in p.services:
            index = seen.get(id(service))
            if index is None:
                index = by_value.get(service)
                if index is None:
                    index = by_value[service] = len(services)
                    services.append(encode_service(service))
                seen[id(service)] = index
            indexes.append(index)
        out: dict[str, Any] = {"at": p.at, "services": indexes}
        if p.origin:
            out["origin"] = p.origin
        return out

    encoded: dict[str, Any] = {"checkpoints": [point(p) for p in record.checkpoints]}
    if record.hold is not None:
        hold = record.hold
        encoded["hold"] = {
            "since": hold.since,
            "reason": hold.reason,
            "cause": hold.cause,
            "reference": point(hold.reference),
        }
    if record.grace is not None:
        grace = record.grace
        encoded["grace"] = {"since": grace.since, "until": grace.until, "why": grace.why}
    encoded["services"] = services
    return encoded


def _pairs(items: Iterable[tuple[str, Any]]) -> list[list[Any]]:
    return [[key, value] for key, value in items]


def encode_service(service: Service) -> dict[str, Any]:
    out: dict[str, Any] = {
        "registry": service.registry,
        "namespace": service.namespace,
        "name": service.name,
        "hosts": list(service.hosts),
        "ports": [[p.name, p.number, p.protocol, p.target_port] for p in service.ports],
        "instances": [_encode_instance(i) for i in service.instances],
    }
    optional: dict[str, Any] = {
        "addresses": list(service.addresses),
        "labels": _pairs(service.labels),
        "annotations": _pairs(service.annotations),
        "export_to": list(service.export_to),
    }
    out.update((k, v) for k, v in optional.items() if v)
    if service.location != "MESH_INTERNAL":
        out["location"] = service.location
    if service.resolution != "STATIC":
        out["resolution"] = service.resolution
    if service.endpoints_mode != "inline":
        out["endpoints_mode"] = service.endpoints_mode
    if service.create_time != EPOCH_2000:
        out["create_time"] = service.create_time.isoformat()
    return out


def _encode_instance(instance: Instance) -> dict[str, Any]:
    out: dict[str, Any] = {"address": instance.address}
    if instance.ports:
        out["ports"] = _pairs(instance.ports)
    if instance.labels:
        out["labels"] = _pairs(instance.labels)
    for name in ("weight", "locality", "network", "service_account"):
        value = getattr(instance, name)
        if value:
            out[name] = value
    return out


# ------------------------------------------------------------------ decoding


def decode_document(data: object) -> Document:
    """The inverse of encode_document; CodecError if it is not one (or another format)."""
    top = _mapping(data, "document")
    if top.get("format") != FORMAT:
        raise CodecError(f"format {top.get('format')!r}, expected {FORMAT}")
    primed = top.get("primed")
    if not isinstance(primed, bool):
        raise CodecError("primed: expected true or false")
    return Document(
        _text(top.get("replica"), "replica"),
        _number(top.get("written"), "written"),
        primed,
        decode_records(top.get("registries")),
    )


def decode_records(data: object) -> dict[str, Record]:
    """The inverse of encode_records; CodecError naming the registry and field."""
    registries = _mapping(data, "registries")
    decoded = {}
    for name, record in registries.items():
        try:
            decoded[str(name)] = _decode_record(record)
        except CodecError as err:
            raise CodecError(f"registry {name}: {err}") from None
    return decoded


def _decode_record(data: object) -> Record:
    record = _mapping(data, "record")
    services = tuple(
        _at(f"services[{n}]", decode_service, item)
        for n, item in enumerate(_list(record.get("services", []), "services"))
    )

    def point(raw: object, where: str) -> Point:
        entry = _mapping(raw, where)
        picked = []
        for index in _list(entry.get("services"), f"{where}.services"):
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise CodecError(f"{where}.services: {index!r} is not an index")
            if index >= len(services):
                raise CodecError(f"{where}.services: index {index} out of range")
            picked.append(services[index])
        return Point(
            _number(entry.get("at"), f"{where}.at"),
            tuple(picked),
            _text(entry.get("origin", ""), f"{where}.origin"),
        )

    checkpoints = tuple(
        point(raw, f"checkpoints[{n}]")
        for n, raw in enumerate(_list(record.get("checkpoints"), "checkpoints"))
    )
    if not checkpoints:
        raise CodecError("checkpoints: empty")
    hold = None
    if record.get("hold") is not None:
        raw_hold = _mapping(record["hold"], "hold")
        hold = HeldRecord(
            _number(raw_hold.get("since"), "hold.since"),
            _text(raw_hold.get("reason"), "hold.reason"),
            _text(raw_hold.get("cause"), "hold.cause"),
            point(raw_hold.get("reference"), "hold.reference"),
        )
    grace = None
    if record.get("grace") is not None:
        raw_grace = _mapping(record["grace"], "grace")
        grace = GraceRecord(
            _number(raw_grace.get("since"), "grace.since"),
            _number(raw_grace.get("until"), "grace.until"),
            _text(raw_grace.get("why"), "grace.why"),
        )
    return Record(checkpoints, hold, grace)


def decode_service(data: object) -> Service:
    s = _mapping(data, "service")
    created = s.get("create_time")
    create_time = EPOCH_2000
    if created is not None:
        try:
            create_time = datetime.fromisoformat(_text(created, "create_time"))
        except ValueError as err:
            raise CodecError(f"create_time: {err}") from None
    return Service(
        registry=_text(s.get("registry"), "registry"),
        namespace=_text(s.get("namespace"), "namespace"),
        name=_text(s.get("name"), "name"),
        hosts=_texts(s.get("hosts"), "hosts"),
        ports=tuple(
            _at(f"ports[{n}]", _decode_port, item)
            for n, item in enumerate(_list(s.get("ports"), "ports"))
        ),
        instances=tuple(
            _at(f"instances[{n}]", _decode_instance, item)
            for n, item in enumerate(_list(s.get("instances"), "instances"))
        ),
        addresses=_texts(s.get("addresses", []), "addresses"),
        labels=_labels(s.get("labels", []), "labels"),
        annotations=_labels(s.get("annotations", []), "annotations"),
        export_to=_texts(s.get("export_to", []), "export_to"),
        location=_text(s.get("location", "MESH_INTERNAL"), "location"),
        resolution=_text(s.get("resolution", "STATIC"), "resolution"),
        endpoints_mode=_text(s.get("endpoints_mode", "inline"), "endpoints_mode"),
        create_time=create_time,
    )


def _decode_port(data: object) -> Port:
    items = _list(data, "port")
    if len(items) != 4:
        raise CodecError(f"expected [name, number, protocol, target_port], got {items!r}")
    name, number, protocol, target = items
    return Port(
        _text(name, "name"),
        _int(number, "number"),
        _text(protocol, "protocol"),
        _int(target, "target_port"),
    )


def _decode_instance(data: object) -> Instance:
    i = _mapping(data, "instance")
    ports = []
    for pair in _list(i.get("ports", []), "ports"):
        name, number = _pair(pair, "ports")
        ports.append((_text(name, "ports"), _int(number, "ports")))
    return Instance(
        address=_text(i.get("address"), "address"),
        ports=tuple(ports),
        labels=_labels(i.get("labels", []), "labels"),
        weight=_int(i.get("weight", 0), "weight"),
        locality=_text(i.get("locality", ""), "locality"),
        network=_text(i.get("network", ""), "network"),
        service_account=_text(i.get("service_account", ""), "service_account"),
    )


def _at(where: str, decode: Any, item: object) -> Any:
    try:
        return decode(item)
    except CodecError as err:
        raise CodecError(f"{where}: {err}") from None


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CodecError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _list(value: object, where: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise CodecError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise CodecError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _texts(value: object, where: str) -> tuple[str, ...]:
    return tuple(_text(item, where) for item in _list(value, where))


def _int(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise CodecError(f"{where}: expected an integer, got {value!r}")
    return value


def _number(value: object, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise CodecError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _pair(value: object, where: str) -> tuple[Any, Any]:
    items = _list(value, where)
    if len(items) != 2:
        raise CodecError(f"{where}: expected [key, value], got {items!r}")
    return items[0], items[1]


def _labels(value: object, where: str) -> tuple[tuple[str, str], ...]:
    out = []
    for pair in _list(value, where):
        key, item = _pair(pair, where)
        out.append((_text(key, where), _text(item, where)))
    return tuple(out)
