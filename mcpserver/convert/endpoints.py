"""Inline endpoints written and checked straight from their Instance, without the message.

A ServiceEntry's inline endpoints are most of what a cold start converts (100k of them at
10k services), and building each as a WorkloadEntry message, serializing it and reading the
message back to validate it cost about a third of converting the whole estate. Most
endpoints are an address and labels, the labels shared by many: so each endpoint's bytes
are written by hand (what protobuf's deterministic serializer writes, field by field) with
its labels' bytes and their check made once per label set, and its address checked as
validate_workload_entry checks it.

Only the common shape goes this way; anything else (no address, a unix address, labels that
fail Istio's checks, values that do not fit their fields or encode as UTF-8) returns None
and the caller builds the message as before, so that errors, their order and exceptions stay
exactly the message path's. tests/unit/test_endpoints.py holds both paths equal.
"""

from __future__ import annotations

from collections.abc import Set
from functools import lru_cache

from mcpserver.convert.serviceentry import REGISTRY_LABEL
from mcpserver.convert.validate import UNIX_PREFIX, check_endpoint_ports, check_labels, is_ip
from mcpserver.model import Instance, Labels
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
