"""Inline-endpoint ServiceEntries written and checked straight from the Service, without
building messages.

A ServiceEntry's inline endpoints are most of what a cold start converts (100k of them at
10k services), and building each as a WorkloadEntry message, serializing it and reading the
message back to validate it cost about a third of converting the whole estate; the spec
without its endpoints, built, serialized and validated the same way, another quarter. Most
endpoints are an address and labels, the labels shared by many, and most services share
their ports: so the bytes are written by hand (what protobuf's deterministic serializer
writes, field by field), what services or endpoints share is written and checked once per
value, and the rest is checked as validate_service_entry and validate_workload_entry check
it (with their own helpers, from validate.py).

Only the common shape goes this way; anything else (no address, a unix address, labels that
fail Istio's checks, values that do not fit their fields or encode as UTF-8, a resolution
other than STATIC) returns None and the caller builds the messages as before, so that
errors, their order and exceptions stay exactly the message path's.
tests/unit/test_inline.py holds both paths equal.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from functools import lru_cache
from socket import AF_INET, inet_pton

from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2

from mcpserver.convert.serviceentry import ENDPOINTS_TAG, REGISTRY_LABEL
from mcpserver.convert.validate import (
    UNIX_PREFIX,
    check_endpoint_ports,
    check_export_to,
    check_hosts,
    check_labels,
    check_service_ports,
    check_several_hosts,
    check_subnet,
    is_ip,
    validate_name,
)
from mcpserver.model import Instance, Labels, Port, Service
from mcpserver.wire import encode_varint, field, string_map, uint_map

UINT32_MAX = 2**32 - 1
# WorkloadEntry's fields (networking/v1alpha3/workload_entry.proto), tagged
_ADDRESS = b"\x0a"  # 1, string
_PORTS = b"\x12"  # 2, map<string, uint32>
_LABELS = b"\x1a"  # 3, map<string, string>
_NETWORK = b"\x22"  # 4
_LOCALITY = b"\x2a"  # 5
_WEIGHT = b"\x30"  # 6, uint32 varint
_SERVICE_ACCOUNT = b"\x3a"  # 7


def inline_endpoint_bytes(instance: Instance, registry: str) -> bytes | None:
    """serviceentry.inline_endpoint(instance, registry) serialized deterministically, or
    None where a value does not fit its field or is not encodable (the message then raises
    or encodes it as it always did)."""
    weight = instance.weight
    if not 0 <= weight <= UINT32_MAX:
        return None
    try:
        parts = [field(_ADDRESS, instance.address.encode())] if instance.address else []
        if instance.ports:
            if not all(0 <= number <= UINT32_MAX for _, number in instance.ports):
                return None
            parts += uint_map(_PORTS, instance.ports)
        parts.append(_labels_bytes(instance.labels, registry))
        if instance.network:
            parts.append(field(_NETWORK, instance.network.encode()))
        if instance.locality:
            parts.append(field(_LOCALITY, instance.locality.encode()))
        if weight:
            parts.append(_WEIGHT + encode_varint(weight))
        if instance.service_account:
            parts.append(field(_SERVICE_ACCOUNT, instance.service_account.encode()))
    except UnicodeEncodeError:
        return None
    return b"".join(parts)


@lru_cache(maxsize=1 << 14)  # endpoints share their label sets (versions, zones)
def _labels_bytes(labels: Labels, registry: str) -> bytes:
    """An endpoint's labels field: its own labels, with the registry's filled in."""
    return b"".join(string_map(_LABELS, _with_registry(labels, registry)))


def _with_registry(labels: Labels, registry: str) -> list[tuple[str, str]]:
    """What inline_endpoint labels an endpoint with: its own labels, and `registry` unless
    it has one (an endpoint merged from another registry keeps its own)."""
    merged = dict(labels)
    merged.setdefault(REGISTRY_LABEL, registry)
    return list(merged.items())


def validate_inline_endpoint(
    instance: Instance, registry: str, service_ports: Set[str]
) -> list[str] | None:
    """validate_workload_entry(inline_endpoint(instance, registry), service_ports,
    allow_fqdn=False), read from the Instance; None for what only the message path says
    in its own order (no address, a unix address, labels with errors)."""
    address = instance.address
    if (
        not address
        or address.startswith(UNIX_PREFIX)
        or not _labels_valid(instance.labels, registry)
    ):
        return None
    errors = [] if is_ip(address) else [f"endpoint address {address!r} is not a valid IP address"]
    if instance.ports:
        errors += check_endpoint_ports(dict(instance.ports), service_ports)
    return errors


@lru_cache(maxsize=1 << 14)
def _labels_valid(labels: Labels, registry: str) -> bool:
    return not check_labels(dict(_with_registry(labels, registry)), "")


# an address's tag and an endpoint's frame, by length: both nearly always shorter than 128
_TAGGED = tuple(_ADDRESS + bytes([n]) for n in range(0x80))
_FRAMED = tuple(ENDPOINTS_TAG + bytes([n]) for n in range(0x80))


def plain_endpoints(
    head: bytes, instances: Sequence[Instance], registry: str
) -> tuple[list[bytes], list[str]] | None:
    """The spec's bytes up to its tail as pieces (`head`, then each endpoint framed as field
    6) and the endpoints' errors in order, when every instance has the plain shape: an address and
    labels, nothing else. What inline_endpoint_bytes and validate_inline_endpoint say of
    each, for about a third of their cost: a cold start writes 100k such endpoints, and
    per endpoint they set up what the plain shape does not need; the labels' bytes and
    checks are looked up once per label set of the service. None if any instance is not
    plain, or is one they leave to the message path (no address, a unix one, labels that
    fail or do not encode): the caller then goes endpoint by endpoint.
    tests/unit/test_inline.py holds the two equal."""
    pieces = [head]
    errors: list[str] = []
    written: dict[int, bytes | None] = {}  # id of a label set (alive in `instances`) -> bytes
    pton = inet_pton
    varint = encode_varint
    for instance in instances:
        if (
            instance.ports
            or instance.weight
            or instance.locality
            or instance.network
            or instance.service_account
        ):
            return None
        labels = instance.labels
        key = id(labels)
        if key in written:
            labelled = written[key]
        else:
            labelled = written[key] = _plain_labels(labels, registry)
        if labelled is None:
            return None
        address = instance.address
        try:
            pton(AF_INET, address)  # validate.is_ipv4, without its call
        except (OSError, ValueError):  # nearly never: an IPv6 address, or not an address
            if not address or address.startswith(UNIX_PREFIX):
                return None
            if not is_ip(address):
                errors.append(f"endpoint address {address!r} is not a valid IP address")
        try:
            raw = address.encode()
        except UnicodeEncodeError:
            return None
        size = len(raw)
        tagged = _TAGGED[size] if size < 0x80 else _ADDRESS + varint(size)
        length = len(tagged) + size + len(labelled)
        frame = _FRAMED[length] if length < 0x80 else ENDPOINTS_TAG + varint(length)
        pieces += (frame, tagged, raw, labelled)
    return pieces, errors


@lru_cache(maxsize=1 << 14)
def _plain_labels(labels: Labels, registry: str) -> bytes | None:
    """An endpoint's labels field, if Istio accepts the labels and they encode."""
    if not _labels_valid(labels, registry):
        return None
    try:
        return _labels_bytes(labels, registry)
    except UnicodeEncodeError:
        return None


# ServiceEntry's fields (networking/v1alpha3/service_entry.proto) up to endpoints, tagged
_HOSTS = b"\x0a"  # 1, repeated string
_ADDRESSES = b"\x12"  # 2, repeated string
_SERVICE_PORTS = b"\x1a"  # 3, repeated ServicePort {1 number, 2 protocol, 3 name, 4 target}
_LOCATION = b"\x20"  # 4, enum
_RESOLUTION = b"\x28"  # 5, enum
_EXPORT_TO = b"\x3a"  # 7, repeated string
_LOCATIONS = dict(service_entry_pb2.ServiceEntry.Location.items())
_RESOLUTIONS = dict(service_entry_pb2.ServiceEntry.Resolution.items())


class _UnwritableError(ValueError):
    """A value the hand encoder does not write (the message path then does what it does)."""


def inline_spec(service: Service) -> tuple[bytes, bytes] | None:
    """serviceentry.inline_parts(service)'s head and tail bytes, or None where a value does
    not fit its field or is not encodable."""
    location = _LOCATIONS.get(service.location)
    resolution = _RESOLUTIONS.get(service.resolution)
    if location is None or resolution is None:
        return None
    try:  # lists, not generators: most services have one host and no addresses
        parts = [field(_HOSTS, host.encode()) for host in service.hosts]
        if service.addresses:
            parts += [field(_ADDRESSES, address.encode()) for address in service.addresses]
        parts.append(_ports_bytes(service.ports))
        parts.append(_enums_bytes(location, resolution))
        tail = b"".join([field(_EXPORT_TO, name.encode()) for name in service.export_to])
    except (UnicodeEncodeError, _UnwritableError):
        return None
    return b"".join(parts), tail


@lru_cache(maxsize=64)
def _enums_bytes(location: int, resolution: int) -> bytes:
    return (_LOCATION + encode_varint(location) if location else b"") + (
        _RESOLUTION + encode_varint(resolution) if resolution else b""
    )


@lru_cache(maxsize=1 << 12)  # services of a registry mostly share their ports
def _ports_bytes(ports: tuple[Port, ...]) -> bytes:
    parts = []
    for port in ports:
        if not (0 <= port.number <= UINT32_MAX and 0 <= port.target_port <= UINT32_MAX):
            raise _UnwritableError(port)
        body = b"".join(
            (
                b"\x08" + encode_varint(port.number) if port.number else b"",
                field(b"\x12", port.protocol.encode()) if port.protocol else b"",
                field(b"\x1a", port.name.encode()) if port.name else b"",
                b"\x20" + encode_varint(port.target_port) if port.target_port else b"",
            )
        )
        parts.append(field(_SERVICE_PORTS, body))
    return b"".join(parts)


def validate_inline_spec(service: Service) -> list[str] | None:
    """validate_name and validate_service_entry of inline_parts(service)'s spec (no
    endpoints), read from the Service; None unless its resolution is STATIC (the inline
    path's: the others check what they check on the message)."""
    if service.resolution != "STATIC":
        return None
    errors = validate_name(service.namespace, service.name)
    errors += check_hosts(service.hosts)
    for address in service.addresses:  # STATIC takes CIDR addresses
        if err := check_subnet(address):
            errors.append(err)
    errors += _port_errors(service.ports)
    if len(service.hosts) > 1:
        errors += check_several_hosts([port.protocol for port in service.ports])
    errors += _export_errors(service.namespace, service.export_to)
    return errors


@lru_cache(maxsize=1 << 12)
def _port_errors(ports: tuple[Port, ...]) -> tuple[str, ...]:
    return tuple(
        check_service_ports([(p.name, p.number, p.protocol, p.target_port) for p in ports])
    )


@lru_cache(maxsize=1 << 12)
def _export_errors(namespace: str, export_to: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(check_export_to(namespace, export_to))
