"""Pure conversion of Consul health entries (`/v1/health/service/<name>`) into Services.

Mapping (docs/configuration.md "Consul registry"): host from `host_template` (default
`{service}.service.consul`; `{datacenter}` available); only instances whose checks all pass
become endpoints (warning too with `include_warning`); `key=value` and `key|value` tags and
service meta become sanitised labels; the datacenter is the locality's region and a `zone`
meta or tag its zone; `Weights.Passing` is the weight; the protocol comes from a `protocol`
meta or tag, else `default_protocol`; the service port is the port most instances use, and an
instance on another port keeps it through the endpoint's `ports`; `create_time` is derived
from the oldest instance's CreateIndex, a stable Consul fact.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from mcpserver.convert.labels import DEFAULT_MAPPER, Mapper
from mcpserver.convert.naming import sanitize_host, sanitize_label_key, sanitize_label_value
from mcpserver.convert.ports import ISTIO, METADATA, istio_port, known_port
from mcpserver.model import EPOCH_2000, Instance, Port, Problem, Service

_RANK = {"passing": 0, "warning": 1, "critical": 2, "maintenance": 3}


@dataclass(frozen=True, slots=True)
class ConsulOptions:
    registry: str
    namespace: str
    host_template: str
    default_protocol: str
    include_warning: bool
    endpoints_mode: str
    labels: Mapper = DEFAULT_MAPPER  # metadata -> endpoint labels (convert/labels.py)


@dataclass(frozen=True, slots=True)
class ConsulInstance:
    address: str
    port: int
    protocol: str
    labels: tuple[tuple[str, str], ...]
    weight: int
    locality: str
    create_index: int


def status(checks: object) -> str:
    """An instance's health: the worst of its node and service checks, as Consul says;
    ValueError for checks that are not a list of objects (the entry is skipped)."""
    if not isinstance(checks, list):
        raise ValueError(f"Checks is a {type(checks).__name__}, not a list")
    worst = "passing"
    for check in checks:
        if not isinstance(check, Mapping):
            raise ValueError(f"a check is a {type(check).__name__}, not an object")
        value = str(check.get("Status", "critical")).lower()
        if _RANK.get(value, 3) > _RANK[worst]:
            worst = value if value in _RANK else "critical"
    return worst


def _tag_pairs(tags: Sequence[Any]) -> list[tuple[str, str]]:
    pairs = []
    for tag in tags:
        if not isinstance(tag, str):
            continue
        for separator in ("=", "|"):
            key, sep, value = tag.partition(separator)
            if sep and key:
                pairs.append((key.strip(), value.strip()))
                break
    return pairs


def _protocol(pairs: Mapping[str, str], default: str) -> str:
    """The Istio protocol a `protocol` meta or tag names, else `default` (an unknown word
    too: Consul tags are free text)."""
    known = known_port(pairs.get("protocol", "").lower(), METADATA)
    return known[1] if known is not None else default.upper()


def parse_entry(
    entry: Mapping[str, Any], datacenter: str, options: ConsulOptions
) -> ConsulInstance | None:
    """One health entry to an instance, None if it is not healthy enough; ValueError if bad."""
    service = entry.get("Service")
    node = entry.get("Node") or {}
    if not isinstance(service, Mapping) or not isinstance(node, Mapping):
        raise ValueError("entry without Service or Node")
    health = status(entry.get("Checks") or [])
    if health != "passing" and not (health == "warning" and options.include_warning):
        return None
    address = service.get("Address") or node.get("Address") or ""
    try:
        address = str(ipaddress.ip_address(str(address)))
    except ValueError:
        raise ValueError(f"address {address!r} is not an IP") from None
    port = service.get("Port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port {port!r}")
    meta = service.get("Meta") or {}
    pairs = dict(_tag_pairs(service.get("Tags") or []))
    if isinstance(meta, Mapping):
        pairs.update({str(k): str(v) for k, v in meta.items()})
    labels = options.labels(tuple(sorted(pairs.items())))
    zone = pairs.get("zone", "")
    region = str(node.get("Datacenter") or datacenter)
    weights = service.get("Weights") or {}
    weight = weights.get("Passing", 1) if isinstance(weights, Mapping) else 1
    if health == "warning" and isinstance(weights, Mapping):
        weight = weights.get("Warning", weight)
    return ConsulInstance(
        address=address,
        port=port,
        protocol=_protocol(pairs, options.default_protocol),
        labels=labels,
        weight=int(weight) if isinstance(weight, int) and weight > 0 else 0,
        locality=f"{region}/{zone}" if zone else region,
        create_index=int(service.get("CreateIndex") or 0),
    )


def parse_health(
    name: str, datacenter: str, entries: Sequence[Any], options: ConsulOptions
) -> tuple[list[ConsulInstance], list[Problem]]:
    """Healthy instances of one service in one datacenter, and the entries skipped."""
    instances: list[ConsulInstance] = []
    problems: list[Problem] = []
    for entry in entries:
        try:
            if not isinstance(entry, Mapping):
                raise ValueError("entry is not an object")
            instance = parse_entry(entry, datacenter, options)
        except ValueError as err:
            body = entry.get("Service") if isinstance(entry, Mapping) else None
            ident = body.get("ID", "?") if isinstance(body, Mapping) else "?"
            problems.append(
                Problem(options.registry, f"{datacenter}/{name}/{ident}", str(err), "bad-entry")
            )
            continue
        if instance is not None:
            instances.append(instance)
    return instances, problems


def service_host(options: ConsulOptions, name: str, datacenter: str) -> str:
    """The host (and resource name) of a Consul service in a datacenter."""
    return sanitize_host(options.host_template.format(service=name, datacenter=datacenter))


def build_services(
    options: ConsulOptions, name: str, per_dc: Mapping[str, Sequence[ConsulInstance]]
) -> list[Service]:
    """The Services one Consul service becomes (one per rendered host)."""
    hosts: dict[str, list[ConsulInstance]] = {}
    for datacenter in sorted(per_dc):
        hosts.setdefault(service_host(options, name, datacenter), []).extend(per_dc[datacenter])
    services = []
    for host, members in sorted(hosts.items()):
        if not members:
            continue
        protocol = Counter(m.protocol for m in members).most_common(1)[0][0]
        number = min(Counter(m.port for m in members).items(), key=lambda kv: (-kv[1], kv[0]))[0]
        # the port named by its protocol, as a DNS-1123 label (HTTP_PROXY -> http-proxy)
        port_name = istio_port(protocol.lower(), ISTIO)[0]
        instances: dict[str, Instance] = {}
        for m in sorted(members, key=lambda m: (m.address, m.port)):
            key = f"{m.address}:{m.port}" if m.address in instances else m.address
            instances.setdefault(
                key,
                Instance(
                    address=m.address,
                    ports=((port_name, m.port),) if m.port != number else (),
                    labels=m.labels,
                    weight=m.weight,
                    locality=m.locality,
                ),
            )
        oldest = min(m.create_index for m in members)
        services.append(
            Service(
                registry=options.registry,
                namespace=options.namespace,
                name=host,
                hosts=(host,),
                ports=(Port(port_name, number, protocol),),
                instances=tuple(instances[k] for k in sorted(instances)),
                labels=((sanitize_label_key("consul-service"), sanitize_label_value(name)),),
                annotations=(("mcpserver.io/consul-service", name),),
                endpoints_mode=options.endpoints_mode,
                create_time=EPOCH_2000 + timedelta(seconds=oldest),
            )
        )
    return services
