"""Pure conversion of a Nacos service's instance list into Services.

The same JSON arrives from the gRPC API (a `SubscribeServiceResponse` or a
`NotifySubscriberRequest` push: `serviceInfo`) and from the 1.x HTTP API
(`/nacos/v1/ns/instance/list`): `{name, groupName, hosts: [{ip, port, weight, healthy,
enabled, ephemeral, clusterName, metadata, instanceId}]}`, so one parser serves both APIs and
both give the same resources.

Mapping (docs/configuration.md "Nacos registry"):
- only `healthy && enabled` instances are endpoints (`include_unhealthy` adds unhealthy ones;
  disabled ones never); ephemeral and persistent instances alike;
- the host is `host_template` (default `{service}.{group}.{namespace}.nacos`) sanitised to
  DNS-1123 (`_` -> `-`, `DEFAULT_GROUP` -> `default-group`), or an instance's own
  `istio.hostname` metadata (as Nacos' Istio module reads it); one ServiceEntry per host;
- ports: each instance serves its `protocol` metadata (else `default_protocol`) on its port,
  or every protocol and port of Dubbo's `dubbo.endpoints` metadata; one service port per
  protocol, numbered by the port most instances use, the others keeping theirs;
- weight: Nacos weights are floats (default 1.0, at most 10000); Istio's are integers, so
  weights are scaled by WEIGHT_SCALE (1.0 -> 100, 0.5 -> 50, 0.01 -> 1), which keeps ratios to
  1 %; a weight of 0 (Nacos: "send nothing here") leaves the instance out;
- metadata becomes labels (sanitised; Dubbo's `dubbo.*` and Nacos' `preserved.*` internals
  left out), the cluster name the label `nacos-cluster`;
- Dubbo on Nacos: a service named `providers:<interface>:<version>:<group>` (Dubbo's
  NacosRegistry) is a Dubbo interface, and a service whose instances carry
  `dubbo.metadata.revision` metadata is a Dubbo 3 application: both go through the Dubbo
  mapping the ZooKeeper kind uses (registry/dubbo), so they get the same hosts, ports and
  labels as there;
- `create_time`: Nacos keeps no creation time, so it is 2000-01-01 for every service (VIPs
  stay a function of the names alone, the same on every replica).

A malformed instance (no IP address, bad port, bad weight, bad `dubbo.endpoints`) becomes a
Problem and is skipped; the rest of the service flows.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mcpserver.convert.labels import DEFAULT_MAPPER, Mapper
from mcpserver.convert.naming import sanitize_host, sanitize_label_value
from mcpserver.convert.ports import DUBBO, METADATA, istio_port
from mcpserver.model import EPOCH_2000, Instance, Port, Problem, Service
from mcpserver.registry.dubbo.application import AppInstance, Endpoint, dubbo_endpoints
from mcpserver.registry.dubbo.mapping import (
    DubboOptions,
    application_service,
    member,
    member_services,
)
from mcpserver.registry.dubbo.provider import Provider, RecordError

WEIGHT_SCALE = 100
MAX_WEIGHT = 2**32 - 1  # Istio's weight is a uint32
EPOCH_2000_MS = int(EPOCH_2000.timestamp() * 1000)
DUBBO_PREFIX = "providers:"
DUBBO_OTHER_CATEGORIES = frozenset(
    ["consumers", "routers", "configurators", "dynamicrouters", "dynamicconfigurators"]
)
"""The categories Dubbo's NacosRegistry writes beside `providers` (`<category>:<interface>:
<version>:<group>`; org.apache.dubbo.common.constants.RegistryConstants): consumers register
at port 0, routers and configurators are rules; none of them is a service to serve."""
GROUPED = "@@"  # Nacos' grouped service name: GROUP@@service


@dataclass(frozen=True, slots=True)
class NacosOptions:
    registry: str
    namespace: str  # the Istio namespace of the resources
    host_template: str
    host_metadata: str
    default_protocol: str
    include_unhealthy: bool
    endpoints_mode: str
    dubbo: DubboOptions
    labels: Mapper = DEFAULT_MAPPER  # metadata -> endpoint labels (convert/labels.py)


@dataclass(frozen=True, slots=True, order=True)
class ServiceKey:
    """One Nacos service: namespace id ("public" for the default), group, name."""

    namespace: str
    group: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.group}{GROUPED}{self.name}"


@dataclass(frozen=True, slots=True)
class NacosInstance:
    """One Nacos instance as the mapping needs it."""

    id: str
    address: str
    port: int
    weight: int  # scaled; 0 only when the instance is left out anyway
    healthy: bool
    enabled: bool
    cluster: str
    metadata: tuple[tuple[str, str], ...]


def split_name(raw: str, group: str) -> tuple[str, str]:
    """(group, service) of a name as Nacos lists it: `GROUP@@service` (2.x gRPC lists and
    1.x instance lists) or the bare name (1.x service lists), which belongs to `group`."""
    head, sep, tail = raw.partition(GROUPED)
    return (head, tail) if sep else (group, raw)


def scale_weight(raw: object) -> int:
    """A Nacos float weight to an Istio integer weight (see WEIGHT_SCALE)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise RecordError("bad-weight", f"weight {raw!r}")
    if raw <= 0:
        return 0
    return max(1, min(MAX_WEIGHT, round(raw * WEIGHT_SCALE)))


def parse_instance(raw: object) -> NacosInstance:
    """One entry of `hosts`, or RecordError."""
    if not isinstance(raw, Mapping):
        raise RecordError("bad-json", "instance is not an object")
    ip = raw.get("ip")
    try:
        address = str(ipaddress.ip_address(str(ip).strip("[]")))
    except ValueError:
        raise RecordError("bad-address", f"{ip!r} is not an IP address") from None
    port = raw.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise RecordError("bad-port", f"port {port!r}")
    meta = raw.get("metadata") or {}
    if not isinstance(meta, Mapping):
        raise RecordError("bad-json", "metadata is not an object")
    return NacosInstance(
        id=str(raw.get("instanceId") or f"{address}#{port}"),
        address=address,
        port=port,
        weight=scale_weight(raw.get("weight", 1.0)),
        healthy=raw.get("healthy", True) is True,
        enabled=raw.get("enabled", True) is True,
        cluster=str(raw.get("clusterName") or "DEFAULT"),
        metadata=tuple(sorted((str(k), str(v)) for k, v in meta.items())),
    )


def hosts_of(info: object) -> Sequence[object]:
    """The `hosts` list of a serviceInfo (or 1.x instance list) object."""
    if not isinstance(info, Mapping):
        raise ValueError(f"service info is a {type(info).__name__}, not an object")
    hosts = info.get("hosts") or []
    if not isinstance(hosts, list):
        raise ValueError("service info `hosts` is not a list")
    return hosts


def parse_hosts(
    options: NacosOptions, key: ServiceKey, hosts: Sequence[object]
) -> tuple[list[NacosInstance], list[Problem]]:
    """The instances to serve (healthy and enabled, weight above 0) and the ones skipped."""
    served: list[NacosInstance] = []
    problems: list[Problem] = []
    for raw in hosts:
        try:
            instance = parse_instance(raw)
        except RecordError as err:
            ident = (raw.get("instanceId") or raw.get("ip")) if isinstance(raw, Mapping) else None
            subject = f"{key}/{ident or '?'}"
            problems.append(Problem(options.registry, subject, str(err), err.reason))
            continue
        if not instance.enabled or instance.weight == 0:
            continue
        if not instance.healthy and not options.include_unhealthy:
            continue
        served.append(instance)
    return served, problems


def dubbo_non_provider(name: str) -> bool:
    """A Dubbo category other than providers (`consumers:org.example.DemoService::`)."""
    category, sep, _ = name.partition(":")
    return bool(sep) and category in DUBBO_OTHER_CATEGORIES


def convert(
    options: NacosOptions, key: ServiceKey, info: object
) -> tuple[list[Service], list[Problem]]:
    """A service's instance list to its Services and the records skipped. Dubbo's other
    categories are no services: nothing, and nothing skipped."""
    if dubbo_non_provider(key.name):
        return [], []
    instances, problems = parse_hosts(options, key, hosts_of(info))
    if not instances:
        return [], problems
    try:
        if key.name.startswith(DUBBO_PREFIX):
            return dubbo_interface_services(options, key, instances), problems
        if any(_is_dubbo_app(i) for i in instances):
            services, more = dubbo_application_services(options, key, instances)
            return services, problems + more
    except RecordError as err:
        problems.append(Problem(options.registry, str(key), str(err), err.reason))
        return [], problems
    services, more = plain_services(options, key, instances)
    return services, problems + more


# ------------------------------------------------------------------------ plain services


def _meta(instance: NacosInstance) -> dict[str, str]:
    return dict(instance.metadata)


def _istio_port(protocol: str) -> tuple[str, str]:
    """`protocol` metadata names an Istio protocol, else a Dubbo one (dubbo -> tcp-dubbo,
    tri -> grpc-tri), else any other word is TCP."""
    return istio_port(protocol, METADATA, DUBBO)


def _endpoints(options: NacosOptions, instance: NacosInstance) -> tuple[Endpoint, ...]:
    meta = _meta(instance)
    raw = meta.get("dubbo.endpoints")
    if raw:
        found = dubbo_endpoints(raw)
        if found:
            return found
    protocol = (meta.get("protocol") or options.default_protocol).lower()
    return (Endpoint(protocol, instance.port),)


def _labels(instance: NacosInstance, options: NacosOptions) -> tuple[tuple[str, str], ...]:
    pairs = tuple(
        (key, value)
        for key, value in instance.metadata
        if key != options.host_metadata and not key.startswith(("dubbo.", "preserved."))
    )
    out = dict(options.labels(pairs))
    cluster = sanitize_label_value(instance.cluster)
    if cluster:
        out["nacos-cluster"] = cluster
    return tuple(sorted(out.items()))


def service_host(options: NacosOptions, key: ServiceKey) -> str:
    return sanitize_host(
        options.host_template.format(service=key.name, group=key.group, namespace=key.namespace)
    )


def plain_services(
    options: NacosOptions, key: ServiceKey, instances: Sequence[NacosInstance]
) -> tuple[list[Service], list[Problem]]:
    """A non-Dubbo Nacos service (Spring Cloud Alibaba, any SDK): one Service per host."""
    default_host = service_host(options, key)
    by_host: dict[str, list[tuple[NacosInstance, tuple[Endpoint, ...]]]] = {}
    problems: list[Problem] = []
    for instance in instances:
        try:
            endpoints = _endpoints(options, instance)
        except RecordError as err:
            subject = f"{key}/{instance.id}"
            problems.append(Problem(options.registry, subject, str(err), err.reason))
            continue
        own = _meta(instance).get(options.host_metadata, "").strip()
        host = sanitize_host(own) if own else default_host
        by_host.setdefault(host, []).append((instance, endpoints))
    services = []
    for host, members in sorted(by_host.items()):
        counts: dict[str, Counter[int]] = {}
        protocols: dict[str, str] = {}
        for _, endpoints in members:
            for e in endpoints:
                name, protocol = _istio_port(e.protocol)
                counts.setdefault(name, Counter())[e.port] += 1
                protocols[name] = protocol
        numbers = {
            name: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for name, c in counts.items()
        }
        ports = tuple(Port(n, numbers[n], protocols[n]) for n in sorted(numbers))
        by_address: dict[str, Instance] = {}
        for instance, endpoints in sorted(members, key=lambda m: (m[0].address, m[0].port)):
            served = {_istio_port(e.protocol)[0]: e.port for e in endpoints}
            # Istio has one endpoint per address: the first (lowest port) wins, as in Consul
            by_address.setdefault(
                instance.address,
                Instance(
                    address=instance.address,
                    ports=tuple(sorted((n, p) for n, p in served.items() if numbers[n] != p)),
                    labels=_labels(instance, options),
                    weight=instance.weight,
                ),
            )
        services.append(
            Service(
                registry=options.registry,
                namespace=options.namespace,
                name=host,
                hosts=(host,),
                ports=ports,
                instances=tuple(by_address[a] for a in sorted(by_address)),
                labels=(
                    ("nacos-group", sanitize_label_value(key.group) or "x"),
                    ("nacos-service", sanitize_label_value(key.name) or "x"),
                ),
                annotations=(("mcpserver.io/nacos-service", str(key)),),
                endpoints_mode=options.endpoints_mode,
                create_time=EPOCH_2000,
            )
        )
    return services, problems


# ------------------------------------------------------------------------- Dubbo on Nacos


def _is_dubbo_app(instance: NacosInstance) -> bool:
    """Dubbo 3 writes its metadata revision into every application instance; `dubbo.endpoints`
    alone is not enough (other frameworks copy it), though it names ports wherever found."""
    return any(k == "dubbo.metadata.revision" for k, _ in instance.metadata)


def provider_of(key: ServiceKey, instance: NacosInstance) -> Provider:
    """A Nacos instance of `providers:<interface>:<version>:<group>` as the Dubbo provider
    it is: Dubbo's NacosRegistry stores the provider URL's parameters as the metadata, and
    its protocol as `protocol`."""
    params = instance.metadata
    lookup = dict(params)
    interface = lookup.get("interface") or key.name.split(":")[1]
    if not interface:
        raise RecordError("no-interface", str(key))
    return Provider(
        protocol=(lookup.get("protocol") or "dubbo").lower(),
        host=instance.address,
        port=instance.port,
        interface=interface,
        params=params,
        lookup=lookup,
    )


def dubbo_interface_services(
    options: NacosOptions, key: ServiceKey, instances: Sequence[NacosInstance]
) -> list[Service]:
    """A Dubbo interface registered in Nacos, through the shared Dubbo mapping. A provider
    without Dubbo's own `weight` parameter gets its Nacos weight."""
    members = []
    for instance in instances:
        provider = provider_of(key, instance)
        one = member(options.dubbo, provider)
        if "weight" not in provider.lookup:
            one = replace(one, instance=replace(one.instance, weight=instance.weight))
        members.append(one)
    return member_services(options.dubbo, members, EPOCH_2000_MS)


def dubbo_application_services(
    options: NacosOptions, key: ServiceKey, instances: Sequence[NacosInstance]
) -> tuple[list[Service], list[Problem]]:
    """A Dubbo 3 application registered in Nacos (application-level discovery), through the
    shared mapping of application instances; an instance whose `dubbo.endpoints` is bad is
    skipped."""
    apps = []
    problems = []
    for instance in instances:
        meta = _meta(instance)
        raw = meta.get("dubbo.endpoints")
        try:
            endpoints = dubbo_endpoints(raw) if raw else ()
        except RecordError as err:
            subject = f"{key}/{instance.id}"
            problems.append(Problem(options.registry, subject, str(err), err.reason))
            continue
        if not endpoints:
            endpoints = (Endpoint((meta.get("protocol") or "dubbo").lower(), instance.port),)
        apps.append(
            AppInstance(
                name=key.name,
                id=instance.id,
                address=instance.address,
                endpoints=endpoints,
                metadata=instance.metadata,
                dubbo=True,
            )
        )
    if not apps:
        return [], problems
    return [application_service(options.dubbo, key.name, apps, EPOCH_2000_MS)], problems


def service_names(body: Mapping[str, Any], group: str) -> list[tuple[str, str]]:
    """(group, service) pairs of one page of a service list: gRPC `serviceNames`, 1.x
    `doms`."""
    names = body.get("serviceNames")
    if names is None:
        names = body.get("doms")
    if names is None:
        names = []
    if not isinstance(names, list):
        raise ValueError("service list is not a list")
    return [split_name(n, group) for n in names if isinstance(n, str) and n]
