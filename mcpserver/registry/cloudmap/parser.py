"""Pure conversion of Cloud Map DiscoverInstances answers into Services (no I/O).

Mapping (docs/configuration.md "AWS Cloud Map registry"): one ServiceEntry per Cloud Map
service, its host from `host_template` (default `{service}.{namespace}`, which for a DNS
namespace is the name Cloud Map itself serves), sanitised to DNS-1123. An instance's address
is `AWS_INSTANCE_IPV4`, else `AWS_INSTANCE_IPV6`, else `AWS_INSTANCE_CNAME` (a host name:
the service then resolves by DNS); its port the `port_attribute` attribute, else
`AWS_INSTANCE_PORT`, else `default_port`; its protocol the `protocol_attribute` attribute,
else `default_protocol`. Other custom attributes become sanitised endpoint labels;
`AVAILABILITY_ZONE` (and `REGION`, which ECS registers) the locality. Only HEALTHY instances
are served, and UNKNOWN ones (no health check) with `include_unknown`. The service port is
the port most instances use; an instance on another port keeps it through the endpoint's
`ports`. The creation time is the service's CreateDate, a stable AWS fact, so VIPs agree
across replicas and restarts.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from mcpserver.convert.labels import DEFAULT_MAPPER, Mapper
from mcpserver.convert.naming import (
    is_dns1123_subdomain,
    sanitize_host,
    sanitize_label_value,
)
from mcpserver.convert.ports import ISTIO, istio_port, known_port
from mcpserver.convert.validate import check_fqdn
from mcpserver.model import EPOCH_2000, Instance, Port, Problem, Service

IPV4 = "AWS_INSTANCE_IPV4"
IPV6 = "AWS_INSTANCE_IPV6"
CNAME = "AWS_INSTANCE_CNAME"
PORT = "AWS_INSTANCE_PORT"
ZONE = "AVAILABILITY_ZONE"
REGION = "REGION"
# Attributes AWS reserves (AWS_INSTANCE_*, AWS_ALIAS_DNS_NAME, AWS_INIT_HEALTH_STATUS, ...)
# describe the registration, not the workload: they are not labels.
RESERVED_PREFIX = "AWS_"
MAX_INSTANCES = 1000
"""DiscoverInstances answers at most this many instances (its MaxResults cap) and has no
pagination: a service with more shows the rest as a problem."""


class RecordError(ValueError):
    """An instance that cannot be served; `reason` labels the skipped-records metric."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True, order=True)
class ServiceKey:
    """A Cloud Map service as DiscoverInstances names it: namespace name, service name."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class CloudMapOptions:
    registry: str
    namespace: str  # the Istio namespace of the resources
    host_template: str
    default_protocol: str
    default_port: int
    protocol_attribute: str
    port_attribute: str
    include_unknown: bool
    endpoints_mode: str
    region: str = ""  # the locality's region when an instance names a zone but no region
    labels: Mapper = DEFAULT_MAPPER  # metadata -> endpoint labels (convert/labels.py)


@dataclass(frozen=True, slots=True)
class CloudMapInstance:
    """One served instance, as the mapping needs it."""

    id: str
    address: str
    hostname: bool  # True: a CNAME, resolved by DNS
    port: int
    protocol: str
    labels: tuple[tuple[str, str], ...]
    locality: str


def served_health(options: CloudMapOptions) -> frozenset[str]:
    return frozenset(("HEALTHY", "UNKNOWN") if options.include_unknown else ("HEALTHY",))


def health_filter(options: CloudMapOptions) -> str:
    """DiscoverInstances' HealthStatus parameter: the server filters what it can."""
    return "ALL" if options.include_unknown else "HEALTHY"


def _address(attributes: Mapping[str, str]) -> tuple[str, bool]:
    for name in (IPV4, IPV6):
        raw = attributes.get(name, "").strip()
        if raw:
            try:
                return str(ipaddress.ip_address(raw.strip("[]"))), False
            except ValueError:
                raise RecordError("bad-address", f"{name} {raw!r} is not an IP") from None
    cname = attributes.get(CNAME, "").strip().rstrip(".").lower()
    if cname:
        # istiod's own FQDN rule, stricter than DNS-1123 (an all-numeric top-level label
        # such as `0` or `db.123` is refused): one such instance would withhold the service
        if not is_dns1123_subdomain(cname) or check_fqdn(cname):
            raise RecordError("bad-address", f"{CNAME} {cname!r} is not a DNS name")
        return cname, True
    raise RecordError("no-address", f"no {IPV4}, {IPV6} or {CNAME}")


def _port(attributes: Mapping[str, str], options: CloudMapOptions) -> int:
    for name in (options.port_attribute, PORT):
        raw = attributes.get(name, "").strip() if name else ""
        if raw:
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise RecordError("bad-port", f"{name} {raw!r}")
            return int(raw)
    return options.default_port


def _protocol(attributes: Mapping[str, str], options: CloudMapOptions) -> str:
    raw = attributes.get(options.protocol_attribute, "").strip().lower()
    if not raw:
        return options.default_protocol
    known = known_port(raw, ISTIO)
    if known is None:
        raise RecordError("bad-protocol", f"{options.protocol_attribute} {raw!r}")
    return known[1]


def _labels(attributes: Mapping[str, str], options: CloudMapOptions) -> tuple[tuple[str, str], ...]:
    skip = {options.protocol_attribute, options.port_attribute, ZONE, REGION}
    pairs = tuple(
        (key, value)
        for key, value in sorted(attributes.items())
        if key not in skip and not key.startswith(RESERVED_PREFIX)
    )
    return options.labels(pairs)


def _locality(attributes: Mapping[str, str], options: CloudMapOptions) -> str:
    zone = attributes.get(ZONE, "").strip()
    region = attributes.get(REGION, "").strip() or options.region
    if not zone:
        return region if REGION in attributes else ""
    return f"{region}/{zone}" if region else ""


def parse_instance(raw: object, options: CloudMapOptions) -> CloudMapInstance | None:
    """One DiscoverInstances entry: the instance, None if its health is not served, or
    RecordError."""
    if not isinstance(raw, Mapping):
        raise RecordError("bad-entry", "instance is not an object")
    if str(raw.get("HealthStatus") or "UNKNOWN") not in served_health(options):
        return None
    attributes = raw.get("Attributes") or {}
    if not isinstance(attributes, Mapping):
        raise RecordError("bad-entry", "Attributes is not an object")
    attributes = {str(k): str(v) for k, v in attributes.items()}
    address, hostname = _address(attributes)
    return CloudMapInstance(
        id=str(raw.get("InstanceId") or address),
        address=address,
        hostname=hostname,
        port=_port(attributes, options),
        protocol=_protocol(attributes, options),
        labels=_labels(attributes, options),
        locality=_locality(attributes, options),
    )


def parse_instances(
    options: CloudMapOptions, key: ServiceKey, entries: Sequence[object]
) -> tuple[list[CloudMapInstance], list[Problem]]:
    """The instances to serve, and the entries skipped (one problem each)."""
    instances: list[CloudMapInstance] = []
    problems: list[Problem] = []
    for raw in entries:
        try:
            instance = parse_instance(raw, options)
        except RecordError as err:
            ident = raw.get("InstanceId") if isinstance(raw, Mapping) else None
            subject = f"{key}/{ident or '?'}"
            problems.append(Problem(options.registry, subject, str(err), err.reason))
            continue
        if instance is not None:
            instances.append(instance)
    if len(entries) >= MAX_INSTANCES:
        problems.append(
            Problem(
                options.registry,
                str(key),
                f"DiscoverInstances returned its maximum of {MAX_INSTANCES} instances; any "
                "beyond are not served",
                "truncated",
            )
        )
    return instances, problems


def service_host(options: CloudMapOptions, key: ServiceKey) -> str:
    return sanitize_host(options.host_template.format(service=key.name, namespace=key.namespace))


def build_services(
    options: CloudMapOptions,
    key: ServiceKey,
    instances: Sequence[CloudMapInstance],
    created: datetime | None = None,
) -> list[Service]:
    """The Service one Cloud Map service becomes, or none when it has no served instance."""
    if not instances:
        return []
    host = service_host(options, key)
    protocol = min(Counter(i.protocol for i in instances).items(), key=lambda kv: (-kv[1], kv[0]))[
        0
    ]
    number = min(Counter(i.port for i in instances).items(), key=lambda kv: (-kv[1], kv[0]))[0]
    # the port named by its protocol, as a DNS-1123 label (HTTP_PROXY -> http-proxy)
    port_name = istio_port(protocol.lower(), ISTIO)[0]
    by_address: dict[str, Instance] = {}
    # Istio has one endpoint per address: the lowest port wins, as in the other kinds
    for member in sorted(instances, key=lambda i: (i.address, i.port, i.id)):
        by_address.setdefault(
            member.address,
            Instance(
                address=member.address,
                ports=((port_name, member.port),) if member.port != number else (),
                labels=member.labels,
                locality=member.locality,
            ),
        )
    return [
        Service(
            registry=options.registry,
            namespace=options.namespace,
            name=host,
            hosts=(host,),
            ports=(Port(port_name, number, protocol),),
            instances=tuple(by_address[a] for a in sorted(by_address)),
            labels=(
                ("cloudmap-namespace", sanitize_label_value(key.namespace) or "x"),
                ("cloudmap-service", sanitize_label_value(key.name) or "x"),
            ),
            annotations=(("mcpserver.io/cloudmap-service", str(key)),),
            resolution="DNS" if any(i.hostname for i in instances) else "STATIC",
            endpoints_mode=options.endpoints_mode,
            create_time=created if created is not None else EPOCH_2000,
        )
    ]


def convert(
    options: CloudMapOptions, key: ServiceKey, entries: Sequence[object], created: datetime | None
) -> tuple[list[Service], list[Problem]]:
    """A DiscoverInstances answer to its Services and the records skipped."""
    instances, problems = parse_instances(options, key, entries)
    return build_services(options, key, instances, created), problems
