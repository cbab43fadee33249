"""Pure conversion of Dubbo providers and Dubbo 3 application instances into registry-neutral
Services, for every registry that carries them (ZooKeeper, Nacos): one mapping, so a Dubbo
interface gets the same host, ports and labels whichever registry it was registered in.

Naming rules (docs/configuration.md "ZooKeeper registry", "Nacos registry"):
- interface-level providers: host from `host_template` (default `{interface}`, lower-cased and
  DNS-1123 sanitised, e.g. `org.apache.dubbo.demo.demoservice`); resource name = host;
- Curator/Dubbo 3 applications: host from `application_host_template` (default
  `{application}.dubbo`);
- Dubbo 3 mapping (`/ROOT/mapping/<interface>` = app names): the interface host pointing at the
  applications' instances, only for interfaces with no interface-level providers (those are
  more precise, and register-mode=all writes both).

What many services share is computed once (`functools.lru_cache`): a host from its template
and parameters, and a label set from its raw pairs. Providers of one application carry the
same labels, and sanitizing them with regular expressions for each of 100k providers was a
third of a cold start; the cached tuple is also one object shared by every instance that
carries it, not 100k equal copies. What one provider contributes (its host, labels, weight,
its Instance) is a `Member`, made once per provider and kept by the caller.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from mcpserver.convert.labels import DEFAULT_MAPPER, Mapper
from mcpserver.convert.naming import sanitize_host, sanitize_label_key, sanitize_label_value
from mcpserver.model import Instance, Port, Service
from mcpserver.registry.dubbo.application import AppInstance
from mcpserver.registry.dubbo.provider import Provider, istio_port

MAX_WEIGHT = 1_000_000


@dataclass(frozen=True, slots=True)
class DubboOptions:
    registry: str
    namespace: str
    host_template: str
    application_host_template: str
    label_params: tuple[str, ...]
    endpoints_mode: str
    default_protocol: str = "http"  # Curator instances without dubbo.endpoints
    # keep_when_empty, where the kind builds its Services through this mapping alone (the
    # ZooKeeper assembly); a kind that keeps empty Services itself leaves it False
    keep_when_empty: bool = False
    labels: Mapper = DEFAULT_MAPPER  # metadata -> endpoint labels (convert/labels.py)


PER_INTERFACE = 1024
"""Entries of the caches whose keys are mostly one interface's own (its create time, its
label, its host's parameters): the recently changed interfaces'. Their hits come from one
interface's providers in a row and from an interface changing again; at 65,536 entries they
kept every interface's, 5 MiB at 10k interfaces, live at the peak of a cold start (issue 29)."""


@functools.lru_cache(maxsize=PER_INTERFACE)
def from_millis(ctime_ms: int) -> datetime:
    """Cached: an interface keeps its ctime across every rebuild of its service."""
    return datetime.fromtimestamp(ctime_ms / 1000, tz=UTC)


def _labels(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return _clean_labels(tuple(pairs))


@functools.lru_cache(maxsize=PER_INTERFACE)
def _clean_labels(pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
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


def _ports(served: Sequence[tuple[str, int]]) -> tuple[tuple[Port, ...], dict[str, str]]:
    """Service ports from (protocol, port) pairs: one per protocol, numbered by the most
    common port; returns the ports and protocol -> port name."""
    if served and served.count(served[0]) == len(served):
        # the usual case: every provider serves one protocol on one port
        port = _port(*served[0])
        return (port,), {served[0][0]: port.name}
    by_protocol: dict[str, Counter[int]] = {}
    for protocol, number in served:
        counter = by_protocol.get(protocol)
        if counter is None:
            by_protocol[protocol] = counter = Counter()
        counter[number] += 1
    ports: list[Port] = []
    names: dict[str, str] = {}
    taken: dict[int, Port] = {}
    for protocol in sorted(by_protocol):
        number = min(by_protocol[protocol].items(), key=lambda kv: (-kv[1], kv[0]))[0]
        claimed = taken.get(number)
        if claimed is not None:
            # two protocols on one port number (providers that say `dubbo://h:1` and
            # `tri://h:1`): a ServiceEntry cannot list one number twice (Istio refuses it
            # whole), so the first protocol's port carries both
            names[protocol] = claimed.name
            continue
        port = taken[number] = _port(protocol, number)
        ports.append(port)
        names[protocol] = port.name
    return tuple(ports), names


@functools.lru_cache(maxsize=4096)
def _port(protocol: str, number: int) -> Port:
    """One shared Port object per (protocol, number)."""
    name, istio_protocol = istio_port(protocol)
    return Port(name, number, istio_protocol)


def interface_host(
    options: DubboOptions, interface: str, group: str, version: str, app: str
) -> str:
    return _interface_host(options.host_template, interface, group, version, app)


@functools.lru_cache(maxsize=PER_INTERFACE)
def _interface_host(template: str, interface: str, group: str, version: str, app: str) -> str:
    host = template.format(interface=interface, group=group, version=version, application=app)
    return sanitize_host(host)


@dataclass(frozen=True, slots=True)
class Member:
    """One provider with what building its service takes from it alone, made once per
    provider node (a provider never changes its node: Dubbo re-registers a changed provider
    as a new node), so a rebuild of the interface after one provider came or went does not
    redo it for the others. It keeps what its service takes of the provider, not the
    provider: a kept provider's parameters were half of its memory."""

    host: str | None  # the service host it belongs to; None: not served (disabled, consumer)
    instance: Instance  # what it serves as (at the provider's address), on the service's ports
    protocol: str
    port: int
    interface: str


MEMBER_PARAMS = frozenset(
    {"side", "enabled", "disabled", "group", "version", "application", "weight", "interface"}
)
"""The provider parameters `member()` reads, besides the options' `label_params` (and
`interface`, which the provider's parse reads)."""

PER_PROCESS_PARAMS = ("pid", "timestamp", "bind.ip", "bind.port")
"""Parameters Dubbo writes that tell the processes of one interface apart (with the
address): the providers of an interface usually differ in nothing else."""


def unread_params(options: DubboOptions) -> tuple[str, ...]:
    """Of PER_PROCESS_PARAMS, those a Member does not depend on under these options (all of
    them unless `label_params` names one): providers that differ only in these and their
    address have the same Member but for the address (`moved`)."""
    return tuple(
        k for k in PER_PROCESS_PARAMS if k not in MEMBER_PARAMS and k not in options.label_params
    )


def member(options: DubboOptions, provider: Provider) -> Member:
    """A provider's Member under these options."""
    params = provider.lookup  # Provider.param() without a method call per parameter
    served = (
        params.get("side", "provider") == "provider"
        and params.get("enabled", "true").lower() != "false"
        and params.get("disabled", "false").lower() != "true"
    )
    host = (
        interface_host(
            options,
            provider.interface,
            params.get("group", ""),
            params.get("version", ""),
            params.get("application", ""),
        )
        if served
        else None
    )
    labels = options.labels(tuple([(k, v) for k in options.label_params if (v := params.get(k))]))
    return Member(
        host=host,
        instance=Instance(
            address=provider.host, labels=labels, weight=_weight(params.get("weight", "0"))
        ),
        protocol=provider.protocol,
        port=provider.port,
        interface=provider.interface,
    )


def moved(one: Member, address: str) -> Member:
    """`one` as the Member of a provider at `address` that is otherwise the same (its
    parameters equal but for `unread_params`): only the Instance's address differs."""
    i = one.instance
    instance = Instance(
        address, i.ports, i.labels, i.weight, i.locality, i.network, i.service_account
    )
    return Member(one.host, instance, one.protocol, one.port, one.interface)


def interface_services(
    options: DubboOptions, providers: Sequence[Provider], ctime_ms: int
) -> list[Service]:
    """The Services one interface's providers make (one per rendered host)."""
    return member_services(options, [member(options, p) for p in providers], ctime_ms)


def member_services(
    options: DubboOptions, members: Sequence[Member], ctime_ms: int
) -> list[Service]:
    """`interface_services` of the providers of these Members."""
    groups: dict[str, list[Member]] = {}
    for one in members:
        if one.host is not None:
            groups.setdefault(one.host, []).append(one)
    services = []
    for host, group in sorted(groups.items()):
        ports, instances = _usual(group) or _endpoints(group)
        interface = group[0].interface
        services.append(
            Service(
                registry=options.registry,
                namespace=options.namespace,
                name=host,
                hosts=(host,),
                ports=ports,
                instances=instances,
                labels=_labels([("dubbo-interface", interface[:63])]),
                annotations=(("mcpserver.io/dubbo-interface", interface),),
                endpoints_mode=options.endpoints_mode,
                create_time=from_millis(ctime_ms),
            )
        )
    return services


def _usual(group: list[Member]) -> tuple[tuple[Port, ...], tuple[Instance, ...]] | None:
    """`_endpoints(group)` where it is simple, None elsewhere: every provider serves one
    protocol on one port, each from an address of its own (a host's providers are usually
    that), so there is one service port, no endpoint with ports of its own, and each
    provider is the one endpoint of its address. Without the sorting and the per-address
    tables `_endpoints` needs for the rest (they were a tenth of a cold start)."""
    first = group[0]
    protocol, number = first.protocol, first.port
    by_address: dict[str, Instance] = {}
    for one in group:
        if one.port != number or one.protocol != protocol:
            return None
        by_address[one.instance.address] = one.instance
    if len(by_address) != len(group):
        return None
    return (_port(protocol, number),), tuple([by_address[a] for a in sorted(by_address)])


def _endpoints(group: list[Member]) -> tuple[tuple[Port, ...], tuple[Instance, ...]]:
    """The service ports and endpoints of one host's providers: one endpoint per address,
    the first provider of it by `_order`, with the ports it serves where they differ from
    the service's."""
    group.sort(key=_order)
    ports, names = _ports([(m.protocol, m.port) for m in group])
    numbers = {p.name: p.number for p in ports}
    per_address: dict[str, tuple[dict[str, int], Member]] = {}
    for one in group:
        served, first = per_address.setdefault(one.instance.address, ({}, one))
        served.setdefault(names[one.protocol], one.port)
    instances = []
    for _, (served, first) in sorted(per_address.items()):
        own = tuple(sorted((n, v) for n, v in served.items() if numbers[n] != v))
        instances.append(replace(first.instance, ports=own) if own else first.instance)
    return ports, tuple(instances)


def _order(one: Member) -> tuple[str, str, int, tuple[tuple[str, str], ...], int]:
    """A provider's place among its host's: by address, protocol and port, then (between
    providers of one address and port, which give the host one endpoint) by what it would
    serve as, so the choice depends on no listing order. Not by its parameters: keeping
    every provider's parameter tuple for this was 15 MB at 100k providers."""
    instance = one.instance
    return (instance.address, one.protocol, one.port, instance.labels, instance.weight)


def _instance_labels(options: DubboOptions, instance: AppInstance) -> tuple[tuple[str, str], ...]:
    pairs = [(k, v) for k, v in instance.metadata if not k.startswith("dubbo.")]
    if instance.dubbo:
        params = dict(instance.metadata).get("dubbo.metadata-service.url-params", "")
        try:
            decoded = json.loads(params) if params else {}
        except json.JSONDecodeError:
            decoded = {}
        if isinstance(decoded, dict):
            pairs += [(k, str(decoded[k])) for k in ("release",) if k in decoded]
    labels = dict(options.labels(tuple(pairs)))
    # ours, not the instance's metadata: never filtered
    labels.update(_labels([("application", instance.name)]))
    return tuple(sorted(labels.items()))


def application_service(
    options: DubboOptions, app: str, instances: Sequence[AppInstance], ctime_ms: int
) -> Service:
    """One Service per Curator service name (Dubbo 3 application or Spring Cloud service)."""
    host = sanitize_host(options.application_host_template.format(application=app))
    ordered = sorted(instances, key=lambda i: (i.address, i.id))
    ports, names = _ports([(e.protocol, e.port) for i in ordered for e in i.endpoints])
    numbers = {p.name: p.number for p in ports}
    by_address: dict[str, Instance] = {}
    for instance in ordered:
        served = {names[e.protocol]: e.port for e in instance.endpoints}
        by_address.setdefault(
            instance.address,
            Instance(
                address=instance.address,
                ports=tuple(sorted((n, v) for n, v in served.items() if numbers[n] != v)),
                labels=_instance_labels(options, instance),
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
    options: DubboOptions, interface: str, apps: Sequence[Service], ctime_ms: int
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
