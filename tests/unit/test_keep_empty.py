"""`keep_when_empty` for the registries that build Services from instances (Consul, Nacos,
Cloud Map): a Service whose instances are all gone, while its registry still lists it, is
kept without instances; the same object once empty, so nothing changes downstream."""

from __future__ import annotations

import pytest

from mcpserver.model import Instance, Port, Service
from mcpserver.registry.table import keep_empty

pytestmark = pytest.mark.unit


def service(name: str, *addresses: str) -> Service:
    return Service(
        registry="r",
        namespace="default",
        name=name,
        hosts=(name,),
        ports=(Port("http", 8080, "HTTP"),),
        instances=tuple(Instance(address=a) for a in addresses),
    )


def test_a_service_left_without_instances_is_kept_empty() -> None:
    old = [service("a", "10.0.0.1")]
    kept = keep_empty(old, [])
    assert [(s.name, s.hosts, s.ports, s.instances) for s in kept] == [
        ("a", ("a",), (Port("http", 8080, "HTTP"),), ())
    ]


def test_a_service_kept_empty_is_the_same_object_next_time() -> None:
    first = keep_empty([service("a", "10.0.0.1")], [])
    again = keep_empty(first, [])
    assert again[0] is first[0]


def test_what_the_part_makes_now_wins_and_comes_first() -> None:
    new = [service("a", "10.0.0.2")]
    kept = keep_empty([service("a", "10.0.0.1"), service("b", "10.0.0.3")], new)
    assert kept[0] is new[0]
    assert [(s.name, s.instances) for s in kept[1:]] == [("b", ())]


def test_only_hosts_still_listed_are_kept() -> None:
    old = [service("a.dc1", "10.0.0.1"), service("a.dc2", "10.0.0.2")]
    kept = keep_empty(old, [], {"a.dc2"})
    assert [s.name for s in kept] == ["a.dc2"]
    assert keep_empty(old, [], set()) == []


def test_nothing_before_keeps_nothing() -> None:
    new = [service("a", "10.0.0.1")]
    assert keep_empty([], new) == new
    assert keep_empty([], []) == []
