"""Istio's own ServiceEntry/WorkloadEntry validation rules, so we withhold what istiod drops.

istiod never NACKs: its memory store validates each resource and only logs
"Error adding a new resource to the store" (pilot/pkg/config/memory/store.go). A resource
that fails there silently never arrives, so we check the same rules first and report.
Mirrors pkg/config/validation/validation.go (ValidateServiceEntry, validateWorkloadEntry,
ValidatePortName, ValidateProtocol, validateExportTo) and pkg/config/validation/agent
(ValidateWildcardDomain, ValidateFQDN, ValidateIPSubnet, ValidatePort) of Istio 1.29.
Warnings (which do not stop istiod) are not errors here.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping, Sequence, Set
from functools import lru_cache

from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2, workload_entry_pb2

from mcpserver.convert.naming import (
    DNS1123_LABEL_MAX,
    is_dns1123_label,
    is_dns1123_subdomain,
    is_label_key,
    is_label_value,
)

ServiceEntry = service_entry_pb2.ServiceEntry
WorkloadEntry = workload_entry_pb2.WorkloadEntry

# pkg/config/protocol/instance.go Parse (lower-cased; "DoubleHBONE" never matches there).
PROTOCOLS = frozenset(
    [
        "tcp",
        "udp",
        "grpc",
        "grpc-web",
        "http",
        "http_proxy",
        "http2",
        "https",
        "tls",
        "mongo",
        "redis",
        "mysql",
    ]
)
_HTTP = frozenset(["http", "http2", "http_proxy", "grpc", "grpc-web"])
_TLS = frozenset(["https", "tls"])
_WILDCARD_LABEL = re.compile(r"^(\*|(\*|\*-)?[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)$")
_DNS1123_ANY_CASE = re.compile(r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
UNIX_PREFIX = "unix://"


def is_ipv4(value: str) -> bool:
    """A dotted quad without leading zeros, ASCII digits only: exactly the IPv4 form that
    ipaddress and Go's netip accept, checked by the C library's inet_pton (a quarter of a
    regular expression's cost: one per endpoint). No cache: one per endpoint cost ~15 MB
    at 100k."""
    try:
        _inet_pton(_AF_INET, value)
    except (OSError, ValueError):  # not one (ValueError: a NUL, or not encodable)
        return False
    return True


_inet_pton = socket.inet_pton
_AF_INET = socket.AF_INET


def is_ip(value: str) -> bool:
    if is_ipv4(value):
        return True
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _domain_labels(domain: str) -> str | None:
    parts = domain.split(".")
    if parts[-1].isdigit():
        return (
            f"domain name {domain!r} invalid (top level domain {parts[-1]!r} cannot be all-numeric)"
        )
    for i, label in enumerate(parts):
        if i == len(parts) - 1 and label == "":
            return None
        if len(label) > DNS1123_LABEL_MAX or not _DNS1123_ANY_CASE.match(label):
            return f"domain name {domain!r} invalid (label {label!r} invalid)"
    return None


def _preconditions(domain: str) -> str | None:
    if len(domain) > 255:
        return f"domain name {domain!r} too long (max 255)"
    if not domain:
        return "empty domain name not allowed"
    return None


def check_fqdn(domain: str) -> str | None:
    """agent.ValidateFQDN."""
    return _preconditions(domain) or _domain_labels(domain)


def check_wildcard_domain(domain: str) -> str | None:
    """agent.ValidateWildcardDomain: wildcards only in the first label."""
    if err := _preconditions(domain):
        return err
    first, _, rest = domain.partition(".")
    if len(first) > DNS1123_LABEL_MAX or not _WILDCARD_LABEL.match(first):
        return f"domain name {domain!r} invalid (label {first!r} invalid)"
    return _suffix_labels(rest) if rest else None


@lru_cache(maxsize=256)  # hosts share what follows their first label (not Dubbo's)
def _suffix_labels(domain: str) -> str | None:
    return _domain_labels(domain)


def check_port(number: int) -> str | None:
    return None if 1 <= number <= 65535 else f"port number {number} must be in the range 1..65535"


@lru_cache(maxsize=1 << 16)  # the same few label pairs appear on every endpoint
def _label_errors(key: str, value: str) -> tuple[str, ...]:
    errors = []
    if not is_label_key(key):
        errors.append(f"invalid label key {key!r}")
    if not is_label_value(value):
        errors.append(f"invalid label value {value!r}")
    return tuple(errors)


def check_labels(labels: Mapping[str, str], what: str) -> list[str]:
    errors = _labels_errors(tuple([(k, labels[k]) for k in labels]))
    return [f"{what}: {error}" for error in errors] if errors else []


@lru_cache(maxsize=1 << 14)  # endpoints of one service mostly share their whole label set
def _labels_errors(pairs: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    return tuple(error for k, v in pairs for error in _label_errors(k, v))


def check_subnet(value: str) -> str | None:
    if value.count("/") == 1:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"{value} is not a valid CIDR block"
        return None
    return None if is_ip(value) else f"{value} is not a valid IP"


def check_endpoint_ports(ports: Mapping[str, int], service_ports: Set[str] | None) -> list[str]:
    """An endpoint's ports, by name: each names a port of the service (when its names are
    given), with a valid name and number."""
    errors: list[str] = []
    for name, number in sorted(ports.items()):
        if service_ports is not None and name not in service_ports:
            errors.append(f"endpoint port {number} is not defined by the service entry")
        if not is_dns1123_label(name):
            errors.append(f"invalid port name: {name}")
        if err := check_port(number):
            errors.append(err)
    return errors


def validate_workload_entry(
    entry: WorkloadEntry, service_ports: Set[str] | None, allow_fqdn: bool
) -> list[str]:
    """validateWorkloadEntry: address, ports naming service ports, labels."""
    errors: list[str] = []
    address = entry.address
    if not address and not entry.network:
        return ["address is required"]
    unix = address.startswith(UNIX_PREFIX)
    if unix:
        if not address[len(UNIX_PREFIX) :]:
            errors.append("unix address must not be empty")
        if entry.ports:
            errors.append(f"unix endpoint {address} must not include ports")
    elif address and not is_ip(address):
        if not allow_fqdn:
            errors.append(f"endpoint address {address!r} is not a valid IP address")
        elif check_fqdn(address):
            errors.append(f"endpoint address {address!r} is not a valid FQDN or an IP address")
    errors += check_endpoint_ports(entry.ports, service_ports)
    errors += check_labels(entry.labels, f"endpoint {address}")
    if unix and service_ports is not None and len(service_ports) != 1:
        errors.append("exactly 1 service port required for unix endpoints")
    return errors


def check_export_to(namespace: str, export_to: Sequence[str]) -> list[str]:
    errors: list[str] = []
    seen: set[str] = set()
    for entry in export_to:
        key = namespace if entry == "." else entry
        if key in seen:
            errors.append(f"duplicate entries in exportTo for entry {entry}")
            continue
        if entry not in ("*", "~", ".") and not is_dns1123_label(entry):
            errors.append(f"invalid exportTo namespace {entry!r}")
            continue
        seen.add(key)
    return errors


def validate_service_entry(entry: ServiceEntry, namespace: str) -> list[str]:
    """ValidateServiceEntry's errors (not its warnings) for one spec."""
    errors: list[str] = []
    resolution = entry.resolution
    if entry.HasField("workload_selector"):
        errors += check_labels(entry.workload_selector.labels, "workloadSelector")
        if len(entry.endpoints):
            errors.append("only one of WorkloadSelector or Endpoints is allowed in Service Entry")
    errors += check_hosts(entry.hosts)
    cidr = False
    for address in entry.addresses:
        cidr = cidr or "/" in address
        if err := check_subnet(address):
            errors.append(err)
    if cidr and resolution not in (ServiceEntry.NONE, ServiceEntry.STATIC):
        errors.append("CIDR addresses are allowed only for NONE/STATIC resolution types")
    ports = [(p.name, p.number, p.protocol, p.target_port) for p in entry.ports]
    errors += check_service_ports(ports)
    names = {name for name, _, _, _ in ports}
    if resolution == ServiceEntry.NONE:
        if len(entry.endpoints):
            errors.append("no endpoints should be provided for resolution type none")
    elif resolution == ServiceEntry.STATIC:
        for endpoint in entry.endpoints:
            errors += validate_workload_entry(endpoint, names, allow_fqdn=False)
    elif resolution in (ServiceEntry.DNS, ServiceEntry.DNS_ROUND_ROBIN):
        if not entry.endpoints:
            for host in entry.hosts:
                if err := check_fqdn(host):
                    errors.append(
                        "hosts must be FQDN or contain only prefix wildcards if no endpoints "
                        f"are provided for resolution mode DNS, {err}"
                    )
                    break
        if resolution == ServiceEntry.DNS_ROUND_ROBIN and len(entry.endpoints) > 1:
            errors.append("there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN")
        for endpoint in entry.endpoints:
            if not is_ip(endpoint.address) and check_fqdn(endpoint.address):
                errors.append(
                    f"endpoint address {endpoint.address!r} is not a valid FQDN or an IP address"
                )
            errors += check_labels(endpoint.labels, f"endpoint {endpoint.address}")
            errors += check_endpoint_ports(endpoint.ports, names)
    elif resolution == ServiceEntry.DYNAMIC_DNS:
        errors.append("resolution DYNAMIC_DNS is not served by mcpserver (ambient only)")
    else:
        errors.append(f"unsupported resolution type {resolution}")
    if resolution != ServiceEntry.NONE and len(entry.hosts) > 1:
        errors += check_several_hosts([protocol for _, _, protocol, _ in ports])
    errors += check_export_to(namespace, list(entry.export_to))
    return errors


def check_hosts(hosts: Sequence[str]) -> list[str]:
    """A ServiceEntry's hosts: at least one, each a domain with wildcards in front only."""
    errors = [] if hosts else ["service entry must have at least one host"]
    for host in hosts:
        if host == "*":
            errors.append(f"invalid host {host}")
        elif err := check_wildcard_domain(host):
            errors.append(err)
    return errors


def check_service_ports(ports: Sequence[tuple[str, int, str, int]]) -> list[str]:
    """A ServiceEntry's ports as (name, number, protocol, target_port): unique names and
    numbers, each valid."""
    errors: list[str] = []
    names: set[str] = set()
    numbers: set[int] = set()
    for name, number, protocol, target_port in ports:
        if name in names:
            errors.append(f"service entry port name {name!r} already defined")
        if number in numbers:
            errors.append(f"service entry port {number} already defined")
        names.add(name)
        numbers.add(number)
        if target_port and (err := check_port(target_port)):
            errors.append(err)
        if not is_dns1123_label(name):
            errors.append(f"invalid port name: {name}")
        if protocol and protocol.lower() not in PROTOCOLS:
            errors.append(f"unsupported protocol: {protocol}")
        if err := check_port(number):
            errors.append(err)
    return errors


def check_several_hosts(protocols: Sequence[str]) -> list[str]:
    """Several hosts (resolution other than NONE) need HTTP or TLS ports only."""
    for protocol in protocols:
        lowered = protocol.lower()
        if lowered not in _HTTP and lowered not in _TLS:
            return ["multiple hosts provided with non-HTTP, non-TLS ports"]
    return []


def validate_name(namespace: str, name: str) -> list[str]:
    """metadata.name must split into namespace/name; keep both Kubernetes-valid."""
    errors = []
    if not is_dns1123_label(namespace):
        errors.append(f"namespace {namespace!r} is not a DNS-1123 label")
    if not is_dns1123_subdomain(name):
        errors.append(f"name {name!r} is not a DNS-1123 subdomain")
    return errors
