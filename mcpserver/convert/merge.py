"""Combining several registries' services into one set, with one owner per name and host.

Policy (docs/configuration.md "Several registries"), chosen by the top-level `merge` setting:
- `first` (default): registries are ranked in config order. A service whose resource name
  (`namespace/name`) or any host is already served by an earlier registry is withheld and
  reported as a problem. Nothing is merged silently, and istiod never sees two
  ServiceEntries competing for one host. The one exception is a service that says it is a
  part of the host's owner (`Service.shares_host_with`, same registry): a registry that
  must give some endpoints fewer ports than others (Eureka's disabled ports) splits one
  host into ServiceEntries by port set, which istiod joins (one service, each endpoint on
  the ports of its own ServiceEntry).
- `union`: services that share a host are served as one ServiceEntry, under the first
  registry's name: ports are joined by name, endpoints by address (the first registry's
  endpoint wins a clash), each endpoint keeping its own `registry` label. A name clash
  without a shared host is still withheld.
"""

from __future__ import annotations

import itertools
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
            if (
                clash is not None
                and service.shares_host_with == clash
                and by_name[clash].registry == service.registry
                and service.key not in by_name
            ):
                # a part of the owner's own service (its host split by port set, as istiod
                # merges ServiceEntries of one host in one namespace): not a clash
                by_name[service.key] = service
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


Candidate = tuple[int, Service]
"""A registry's service with the registry's rank (its place in the config)."""

Ranked = tuple[tuple[int, tuple[Service, ...]], ...]
"""What each registry shows under one key, as (rank, services) pairs in rank order."""


def _order(candidate: Candidate) -> tuple[int, str, tuple[str, ...]]:
    rank, service = candidate
    return rank, service.key, service.hosts


def _in_order(candidates: Iterable[Candidate]) -> dict[int, list[Service]]:
    """Candidates by rank, in merge order: by registry rank, then by name and hosts (and,
    between services of one registry alike in those, by everything else), so every replica,
    and every rebuild however the registry happened to order its view, resolves a clash the
    same way."""
    ranks: dict[int, list[Service]] = {}
    for _, group in itertools.groupby(sorted(candidates, key=_order), key=_order):
        alike = list(group)
        if len(alike) > 1:
            alike.sort(key=lambda c: repr(c[1]))
        for rank, service in alike:
            ranks.setdefault(rank, []).append(service)
    return ranks


class MergeIndex:
    """`merge()` kept current one change at a time, for rebuilds proportional to what changed.

    Services clash only through a shared name or host, so the outcome for one service depends
    only on its connected component in the graph "shares a name or a host". A change re-runs
    `merge()` over the components it touches (normally the changed service alone) and leaves
    every other outcome as it was: the result is always what `merge()` of everything, in
    `_order`, would give. Not thread-safe: one rebuild at a time owns it.
    """

    def __init__(self, policy: str = "first") -> None:
        self._policy = policy
        # Both kept small, one entry per served name and host at 10k services: a key's
        # candidates as (rank, them) pairs in rank order, not a dict; a host's keys as the
        # key itself while it has one (nearly always), a set only when shared. Dicts and
        # one-key sets were 4.6 MiB at 10k services, live at the peak of a cold start.
        self._candidates: dict[str, Ranked] = {}  # key -> (rank, them) by rank
        self._by_host: dict[str, str | set[str]] = {}  # host -> keys with a candidate serving it
        self._dirty: set[str] = set()
        self._problems: dict[str, tuple[Problem, ...]] = {}  # key -> clashes reported for it
        self.merged: dict[str, Service] = {}
        """Key -> the service served under that name (the winner, or the union)."""

    def put(self, rank: int, key: str, services: tuple[Service, ...]) -> None:
        """The registry of `rank` shows `services` under `key` now (usually one; none:
        it shows nothing there any more)."""
        ranked = self._candidates.get(key, ())
        old = next((group for r, group in ranked if r == rank), ())
        if old == services:
            return
        others = [(r, group) for r, group in ranked if r != rank]
        candidates = tuple(sorted([*others, (rank, services)] if services else others))
        if candidates:
            self._candidates[key] = candidates
        else:
            self._candidates.pop(key, None)
        self._dirty.add(key)
        still = {h for _, group in candidates for s in group for h in s.hosts}
        for service in old:
            for host in service.hosts:
                keys = self._host_keys(host)
                # whoever shared this host may have been withheld because of this service
                self._dirty.update(keys)
                if keys and host not in still:
                    self._forget_host(host, key)
        for service in services:
            for host in service.hosts:
                self._note_host(host, key)

    def _host_keys(self, host: str) -> Iterable[str]:
        """The keys with a candidate serving `host`."""
        keys = self._by_host.get(host, ())
        return (keys,) if isinstance(keys, str) else keys

    def _note_host(self, host: str, key: str) -> None:
        keys = self._by_host.get(host)
        if keys is None:
            self._by_host[host] = key
        elif isinstance(keys, str):
            if keys != key:
                self._by_host[host] = {keys, key}
        else:
            keys.add(key)

    def _forget_host(self, host: str, key: str) -> None:
        keys = self._by_host.get(host)
        if isinstance(keys, str):
            if keys == key:
                del self._by_host[host]
        elif keys is not None:
            keys.discard(key)
            if len(keys) == 1:
                self._by_host[host] = next(iter(keys))

    def problems(self) -> list[Problem]:
        return [p for found in self._problems.values() for p in found]

    def settle(self) -> dict[str, tuple[Service | None, Service | None]]:
        """Re-merge what changed since the last call; returns key -> (before, after) for each
        served name whose service is another object now (a union is a new one each time;
        the builder compares by value before converting again)."""
        if len(self._dirty) * 2 > len(self._candidates):
            return self._settle_all()  # a first listing or a mass change: merge once
        changed: dict[str, tuple[Service | None, Service | None]] = {}
        seen: set[str] = set()
        for start in self._dirty:
            if start in seen:
                continue
            component = self._component(start)
            seen |= component
            candidates = [
                (rank, s)
                for key in component
                for rank, group in self._candidates.get(key, ())
                for s in group
            ]
            reported: dict[str, list[Problem]] = {}
            if len(candidates) <= 1:  # nearly always: nothing shares its name or hosts
                after = {s.key: s for _, s in candidates}
            else:
                ranks = _in_order(candidates)
                winners, problems = merge([ranks[r] for r in sorted(ranks)], self._policy)
                after = {s.key: s for s in winners}
                for problem in problems:
                    reported.setdefault(problem.subject, []).append(problem)
            for key in component:
                self._problems.pop(key, None)
                if key in reported:
                    self._problems[key] = tuple(reported[key])
                old, new = self.merged.get(key), after.get(key)
                if old is new:
                    continue
                if new is None:
                    del self.merged[key]
                else:
                    self.merged[key] = new
                changed[key] = (old, new)
        self._dirty.clear()
        return changed

    def _settle_all(self) -> dict[str, tuple[Service | None, Service | None]]:
        ranks = _in_order(
            (rank, s) for found in self._candidates.values() for rank, group in found for s in group
        )
        winners, problems = merge([ranks[r] for r in sorted(ranks)], self._policy)
        before, self.merged = self.merged, {s.key: s for s in winners}
        self._problems = {}
        for problem in problems:
            self._problems[problem.subject] = (*self._problems.get(problem.subject, ()), problem)
        changed: dict[str, tuple[Service | None, Service | None]] = {}
        for key, new in self.merged.items():
            old = before.get(key)
            if old is not new:
                changed[key] = (old, new)
        for key, old in before.items():
            if key not in self.merged:
                changed[key] = (old, None)
        self._dirty.clear()
        return changed

    def _component(self, start: str) -> set[str]:
        """Every key connected to `start` through shared names and hosts."""
        found = {start}
        queue = [start]
        while queue:
            key = queue.pop()
            for _, group in self._candidates.get(key, ()):
                for host in (h for s in group for h in s.hosts):
                    for other in self._host_keys(host):
                        if other not in found:
                            found.add(other)
                            queue.append(other)
        return found
