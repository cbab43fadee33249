"""Combining several registries' services into one set with unique resource names.

Policy (documented in README): registries are ranked in config order. When two registries
produce the same `namespace/name`, the earlier registry's service is served and the later
one is withheld and reported as a problem. Nothing is merged silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mcpserver.model import Problem, Service


def merge(views: Sequence[Iterable[Service]]) -> tuple[list[Service], list[Problem]]:
    """Services from every registry, first registry winning a name clash."""
    chosen: dict[str, Service] = {}
    problems: list[Problem] = []
    for services in views:
        for service in services:
            winner = chosen.get(service.key)
            if winner is None:
                chosen[service.key] = service
            elif winner.registry != service.registry or winner != service:
                problems.append(
                    Problem(
                        service.registry,
                        service.key,
                        f"name already served by registry {winner.registry!r}; withheld",
                    )
                )
    return list(chosen.values()), problems
