"""The kind table: every registry kind, by the name its config entries use.

Adding a kind means adding its package (config model, pure parser, watcher, a `KIND`) and one
line here; settings, the app, check-config and the admin pages read everything else from the
table. Tests register kinds of their own with `register()`.

The table names the package each kind lives in rather than importing it: a kind's package
(its models, parsers and clients) is imported the first time the kind is looked up, so a
server loads the code of the kinds its config uses and no other (a ZooKeeper-only server
starts without the static file watcher or Consul's, Nacos's, Eureka's and Cloud Map's
models). Iterating the table yields names and loads nothing. import-linter cannot see these
imports: tests/unit/test_kind_table.py checks the table against pyproject's contract.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from importlib import import_module
from typing import Any

from mcpserver.config import RegistrySettings
from mcpserver.registry.kind import Kind

PACKAGES: dict[str, str] = {
    "static": "mcpserver.registry.static",
    "zookeeper": "mcpserver.registry.zookeeper",
    "consul": "mcpserver.registry.consul",
    "nacos": "mcpserver.registry.nacos",
    "eureka": "mcpserver.registry.eureka",
    "cloudmap": "mcpserver.registry.cloudmap",
}
"""Each kind's package, which holds its `KIND`; the order is the order messages list them."""


class KindTable(MutableMapping[str, Kind[Any]]):
    """Kind names mapped to kinds, each imported from its package on first lookup."""

    def __init__(self, packages: dict[str, str]) -> None:
        self._packages = dict(packages)
        self._kinds: dict[str, Kind[Any]] = {}

    def __getitem__(self, name: str) -> Kind[Any]:
        kind = self._kinds.get(name)
        if kind is None:
            package = self._packages[name]  # KeyError: no such kind
            kind = import_module(package).KIND
            if kind.name != name:  # a table line naming the wrong package
                raise ValueError(f"{package}.KIND is kind {kind.name!r}, listed as {name!r}")
            self._kinds[name] = kind
        return kind

    def __setitem__(self, name: str, kind: Kind[Any]) -> None:
        self._packages.setdefault(name, "")
        self._kinds[name] = kind

    def __delitem__(self, name: str) -> None:
        del self._packages[name]
        self._kinds.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._packages)

    def __len__(self) -> int:
        return len(self._packages)

    def __contains__(self, name: object) -> bool:
        return name in self._packages

    def loaded(self) -> frozenset[str]:
        """The kinds imported so far."""
        return frozenset(self._kinds)


KINDS = KindTable(PACKAGES)


def register(kind: Kind[Any]) -> None:
    """Add a kind; its settings model's `kind` field must be Literal[kind.name]."""
    if kind.name in KINDS and KINDS[kind.name] is not kind:
        raise ValueError(f"registry kind {kind.name!r} is registered twice")
    KINDS[kind.name] = kind


def kind_of(settings: RegistrySettings) -> Kind[Any]:
    return KINDS[settings.kind]
