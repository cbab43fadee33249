"""Combining several registries' services into one set, with one owner per name and host.

Policy (README "Several registries"), chosen by the top-level `merge` setting:
- `first` (default): registries are ranked in config order. A service whose resource name
  (`namespace/name`) or any host is already served by an earlier registry is withheld and
  reported as a problem. Nothing is merged silently, and istiod never sees two
  ServiceEntries competing for one host.
- `union`: services that share a host are served as one ServiceEntry, under the first
  registry's name: ports are joined by name, endpoints by address (the first registry's
  endpoint wins a clash), each endpoint keeping its own `registry` label. A name clash
  without a shared host is still withheld.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from mcpserver.model import Instance, Problem, Service


def _union(owner: Service, other: Service) -> Service:
    ports = {p.name: p for p in owner.ports}
    for port in other.ports:
        ports.setdefault(port.name, port)
    instances = {i.address: i for i in owner.instances}
    for instance in other.instances:
        if instance.address not in instances:
            labels = dict(instance.labels)
            labels.setdefault("registry", other.registry)
            instances[instance.address] = replace(instance, labels=tuple(sorted(labels.items())))
    hosts = list(owner.hosts) + [h for h in other.hosts if h not in owner.hosts]
    return replace(
        owner,
        hosts=tuple(hosts),
        ports=tuple(ports.values()),
        instances=tuple(instances[a] for a in sorted(instances)),
    )


def _own_registry_label(service: Service) -> Service:
    """In union mode endpoints carry their registry; the owner's get it explicitly."""
    fixed: list[Instance] = []
    for instance in service.instances:
        labels = dict(instance.labels)
        labels.setdefault("registry", service.registry)
        fixed.append(replace(instance, labels=tuple(sorted(labels.items()))))
    return replace(service, instances=tuple(fixed))


def merge(
    views: Sequence[Iterable[Service]], policy: str = "first"
) -> tuple[list[Service], list[Problem]]:
    """Services from every registry (in rank order) under the given policy."""
    by_name: dict[str, Service] = {}
    host_owner: dict[str, str] = {}  # host -> key of the service that serves it
    problems: list[Problem] = []
    for services in views:
        for service in services:
            clash = next((host_owner[h] for h in service.hosts if h in host_owner), None)
            if (
                clash is not None
                and policy == "union"
                and by_name[clash].registry != service.registry
            ):
                by_name[clash] = _union(_own_registry_label(by_name[clash]), service)
                for host in service.hosts:
                    host_owner.setdefault(host, clash)
                continue
            winner = by_name.get(service.key) or (by_name[clash] if clash else None)
            if winner is not None:
                what = "name" if service.key in by_name else f"host {service.hosts[0]!r}"
                problems.append(
                    Problem(
                        service.registry,
                        service.key,
                        f"{what} already served by registry {winner.registry!r}; withheld",
                    )
                )
                continue
            by_name[service.key] = service
            for host in service.hosts:
                host_owner[host] = service.key
    return list(by_name.values()), problems
