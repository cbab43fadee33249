"""The service table every registry publishes through: parts replaced by key, equal by value
is no change, one revision per commit with the keys it changed, two parts under one key,
and keep_when_empty."""

from __future__ import annotations

import dataclasses

import pytest

from mcpserver.model import Instance, Port, Problem, Service
from mcpserver.registry.table import LOG_MIN, ServiceTable

pytestmark = pytest.mark.unit


def service(name: str, *addresses: str, host: str = "") -> Service:
    return Service(
        registry="r",
        namespace="default",
        name=name,
        hosts=(host or name,),
        ports=(Port("http", 80, "HTTP"),),
        instances=tuple(Instance(a) for a in addresses),
    )


def test_a_new_part_is_shown_and_its_keys_logged() -> None:
    table = ServiceTable()
    first = table.commit()
    a, b = service("a", "10.0.0.1"), service("b", "10.0.0.2")
    table.replace("part", [a, b])
    now = table.commit()
    assert now.by_key == {a.key: a, b.key: b}
    assert now.revision == first.revision + 1
    assert set(now.changed_since(first)) == {a.key, b.key}


def test_equal_by_value_is_no_change_and_keeps_the_object() -> None:
    table = ServiceTable()
    a = service("a", "10.0.0.1")
    table.replace("part", [a])
    before = table.commit()
    table.replace("part", [dataclasses.replace(a)])
    assert not table.pending()
    after = table.commit()
    assert after is before  # nothing changed: the same revision, nothing new to build
    assert after.by_key[a.key] is a


def test_a_replaced_part_logs_what_left_and_what_changed() -> None:
    table = ServiceTable()
    kept, gone, changed = service("kept", "10.0.0.1"), service("gone"), service("c", "10.0.0.3")
    table.replace("part", [kept, gone, changed])
    first = table.commit()
    table.replace("part", [kept, service("c", "10.0.0.4"), service("came")])
    now = table.commit()
    assert set(now.changed_since(first)) == {"default/gone", "default/c", "default/came"}
    assert now.by_key["default/kept"] is kept
    assert "default/gone" not in now.by_key


def test_problems_alone_make_a_view_but_no_revision() -> None:
    table = ServiceTable()
    table.replace("part", [service("a", "10.0.0.1")])
    first = table.commit()
    problem = Problem("r", "x", "bad")
    table.replace("part", [service("a", "10.0.0.1")], [problem])
    second = table.commit()
    assert second.problems == (problem,)
    assert second.revision == first.revision
    assert second.by_key is first.by_key


@pytest.mark.parametrize("order", ["ab", "ba"])
def test_two_parts_with_one_key_show_one_and_shadow_the_other(order: str) -> None:
    """Two ZooKeeper roots with one interface: both are kept, the same one shown whatever
    the order they came in, and the other shows when the first goes."""
    table = ServiceTable()
    one = service("greeter", "10.0.0.1", host="a.mesh")
    two = service("greeter", "10.0.0.2", host="b.mesh")
    for part in order:
        table.replace(part, [one if part == "a" else two])
    shown = table.commit()
    assert shown.by_key[one.key] is one  # first by hosts
    assert shown.shadowed == {one.key: (two,)}
    assert sorted(map(repr, shown.services)) == sorted(map(repr, (one, two)))
    table.drop("a")
    after = table.commit()
    assert after.by_key[one.key] is two
    assert after.candidates(one.key) == (two,)
    assert not after.shadowed


def test_keep_when_empty_keeps_a_listed_part_and_a_drop_takes_it() -> None:
    table = ServiceTable(keep_when_empty=True)
    table.replace("part", [service("a", "10.0.0.1")])
    table.commit()
    table.replace("part", [])  # still listed, no instance left
    (kept,) = table.commit().services
    assert kept.name == "a" and kept.instances == ()
    table.replace("part", [], listed=False)
    assert table.commit().services == ()


def test_an_old_view_beyond_the_log_is_compared_whole() -> None:
    table = ServiceTable()
    for n in range(LOG_MIN):
        table.replace(n, [service(f"s{n}", "10.0.0.1")])
    old = table.commit()
    for round_ in range(3 * LOG_MIN):  # more keys than the log keeps for a table this size
        n = round_ % LOG_MIN
        table.replace(n, [service(f"s{n}", f"10.0.{round_ % 7}.{round_ % 5 + 2}")])
        table.commit()
    now = table.commit()
    assert now.log is not None and now.log.logged <= LOG_MIN
    changed = set(now.changed_since(old))
    assert changed == {k for k in now.by_key if now.by_key[k] != old.by_key[k]}
