"""Pure conversion of parsed ZooKeeper records into registry-neutral Services.

Naming rules (README "ZooKeeper registry"):
- interface-level providers: host from `host_template` (default `{interface}`, lower-cased and
  DNS-1123 sanitised, e.g. `org.apache.dubbo.demo.demoservice`); resource name = host;
- Curator/Dubbo 3 applications: host from `application_host_template` (default
  `{application}.dubbo`);
- Dubbo 3 mapping (`/ROOT/mapping/<interface>` = app names): the interface host pointing at the
  applications' instances, only for interfaces with no interface-level providers (those are
  more precise, and register-mode=all writes both).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from mcpserver.convert.naming import sanitize_host, sanitize_label_key, sanitize_label_value
from mcpserver.model import Instance, Port, Service
from mcpserver.registry.zookeeper.curator import CuratorInstance
from mcpserver.registry.zookeeper.dubbo import Provider, istio_port

MAX_WEIGHT = 1_000_000


@dataclass(frozen=True, slots=True)
class ZkOptions:
    registry: str
    namespace: str
    host_template: str
    application_host_template: str
    label_params: tuple[str, ...]
    endpoints_mode: str
    default_protocol: str = "http"  # Curator instances without dubbo.endpoints


def from_millis(ctime_ms: int) -> datetime:
    return datetime.fromtimestamp(ctime_ms / 1000, tz=UTC)


def _labels(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    for key, value in pairs:
        clean = sanitize_label_value(value)
        if clean:
            out[sanitize_label_key(key)] = clean
    return tuple(sorted(out.items()))


def _weight(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        return 0
    return max(1, min(value, MAX_WEIGHT)) if value > 0 else 0


def _ports(served: Iterable[tuple[str, int]]) -> tuple[tuple[Port, ...], dict[str, str]]:
    """Service ports from (protocol, port) pairs: one per protocol, numbered by the most
    common port; returns the ports and protocol -> port name."""
    by_protocol: dict[str, Counter[int]] = {}
    for protocol, number in served:
        by_protocol.setdefault(protocol, Counter())[number] += 1
    ports: list[Port] = []
    names: dict[str, str] = {}
    for protocol in sorted(by_protocol):
        name, istio_protocol = istio_port(protocol)
        number = min(by_protocol[protocol].items(), key=lambda kv: (-kv[1], kv[0]))[0]
        ports.append(Port(name, number, istio_protocol))
        names[protocol] = name
    return tuple(ports), names


def interface_host(options: ZkOptions, interface: str, group: str, version: str, app: str) -> str:
    host = options.host_template.format(
        interface=interface, group=group, version=version, application=app
    )
    return sanitize_host(host)


def interface_services(
    options: ZkOptions, providers: Sequence[Provider], ctime_ms: int
) -> list[Service]:
    """The Services one interface's providers make (one per rendered host)."""
    groups: dict[str, list[Provider]] = {}
    for provider in providers:
        if not provider.enabled or provider.param("side", "provider") != "provider":
            continue
        host = interface_host(
            options,
            provider.interface,
            provider.group,
            provider.version,
            provider.param("application"),
        )
        groups.setdefault(host, []).append(provider)
    services = []
    for host, members in sorted(groups.items()):
        members.sort(key=lambda p: (p.host, p.protocol, p.port, p.params))
        ports, names = _ports((p.protocol, p.port) for p in members)
        numbers = {p.name: p.number for p in ports}
        per_address: dict[str, tuple[dict[str, int], Provider]] = {}
        for p in members:
            served, first = per_address.setdefault(p.host, ({}, p))
            served.setdefault(names[p.protocol], p.port)
        instances = []
        for address, (served, first) in sorted(per_address.items()):
            instances.append(
                Instance(
                    address=address,
                    ports=tuple(sorted((n, v) for n, v in served.items() if numbers[n] != v)),
                    labels=_labels(
                        (k, first.param(k)) for k in options.label_params if first.param(k)
                    ),
                    weight=_weight(first.param("weight", "0")),
                )
            )
        services.append(
            Service(
                registry=options.registry,
                namespace=options.namespace,
                name=host,
                hosts=(host,),
                ports=ports,
                instances=tuple(instances),
                labels=_labels([("dubbo-interface", members[0].interface[:63])]),
                annotations=(("mcpserver.io/dubbo-interface", members[0].interface),),
                endpoints_mode=options.endpoints_mode,
                create_time=from_millis(ctime_ms),
            )
        )
    return services


def _instance_labels(instance: CuratorInstance) -> tuple[tuple[str, str], ...]:
    pairs = [(k, v) for k, v in instance.metadata if not k.startswith("dubbo.")]
    if instance.dubbo:
        params = dict(instance.metadata).get("dubbo.metadata-service.url-params", "")
        try:
            decoded = json.loads(params) if params else {}
        except json.JSONDecodeError:
            decoded = {}
        if isinstance(decoded, dict):
            pairs += [(k, str(decoded[k])) for k in ("release",) if k in decoded]
    pairs.append(("application", instance.name))
    return _labels(pairs)


def application_service(
    options: ZkOptions, app: str, instances: Sequence[CuratorInstance], ctime_ms: int
) -> Service:
    """One Service per Curator service name (Dubbo 3 application or Spring Cloud service)."""
    host = sanitize_host(options.application_host_template.format(application=app))
    ordered = sorted(instances, key=lambda i: (i.address, i.id))
    ports, names = _ports((e.protocol, e.port) for i in ordered for e in i.endpoints)
    numbers = {p.name: p.number for p in ports}
    by_address: dict[str, Instance] = {}
    for instance in ordered:
        served = {names[e.protocol]: e.port for e in instance.endpoints}
        by_address.setdefault(
            instance.address,
            Instance(
                address=instance.address,
                ports=tuple(sorted((n, v) for n, v in served.items() if numbers[n] != v)),
                labels=_instance_labels(instance),
            ),
        )
    return Service(
        registry=options.registry,
        namespace=options.namespace,
        name=host,
        hosts=(host,),
        ports=ports,
        instances=tuple(by_address[a] for a in sorted(by_address)),
        labels=_labels([("application", app)]),
        endpoints_mode=options.endpoints_mode,
        create_time=from_millis(ctime_ms),
    )


def mapped_service(
    options: ZkOptions, interface: str, apps: Sequence[Service], ctime_ms: int
) -> Service | None:
    """An interface host served by the instances of the applications it maps to."""
    if not apps:
        return None
    host = interface_host(options, interface, "", "", "")
    ports: dict[str, Port] = {}
    instances: dict[str, Instance] = {}
    for app in apps:
        for port in app.ports:
            ports.setdefault(port.name, port)
        for instance in app.instances:
            instances.setdefault(instance.address, instance)
    return Service(
        registry=options.registry,
        namespace=options.namespace,
        name=host,
        hosts=(host,),
        ports=tuple(ports[n] for n in sorted(ports)),
        instances=tuple(instances[a] for a in sorted(instances)),
        labels=_labels([("dubbo-interface", interface[:63])]),
        annotations=(
            ("mcpserver.io/dubbo-interface", interface),
            ("mcpserver.io/dubbo-applications", ",".join(sorted(a.name for a in apps))),
        ),
        endpoints_mode=options.endpoints_mode,
        create_time=from_millis(ctime_ms),
    )
