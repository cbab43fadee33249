"""The ledger every registry keeps of the Services it shows and what changed since its
last view: by identity, a Service that left and came back is no change, and the Change it
gives replays (View.changes_since) to exactly the difference between two views."""

from __future__ import annotations

import dataclasses

import pytest

from mcpserver.model import Instance, Port, Service
from mcpserver.registry.ledger import Ledger

pytestmark = pytest.mark.unit


def service(name: str) -> Service:
    return Service(
        registry="r",
        namespace="default",
        name=name,
        hosts=(name,),
        ports=(Port("http", 80, "HTTP"),),
        instances=(Instance(address="10.0.0.1"),),
    )


def ids(services: object) -> set[int]:
    assert isinstance(services, tuple | list)
    return {id(s) for s in services}


def test_a_new_part_is_added_and_shown() -> None:
    ledger = Ledger()
    a, b = service("a"), service("b")
    ledger.replace((), [a, b])
    assert ids(ledger.services()) == ids((a, b))
    change = ledger.take(())
    assert ids(change.removed) == set()
    assert ids(change.added) == ids((a, b))


def test_take_starts_afresh_and_says_since() -> None:
    ledger = Ledger()
    a = service("a")
    ledger.replace((), [a])
    since = (service("x"),)
    assert ledger.take(since).since is since
    assert ledger.pending() is False
    again = ledger.take(())
    assert tuple(again.removed) == () and tuple(again.added) == ()
    assert ledger.services() == (a,)  # what is shown stays


def test_a_replaced_part_removes_the_old_objects_and_adds_the_new() -> None:
    ledger = Ledger()
    old, new = service("a"), service("a")  # equal, but another object: a change by identity
    ledger.replace((), [old])
    ledger.take(())
    ledger.replace([old], [new])
    assert ledger.pending()
    change = ledger.take(())
    assert ids(change.removed) == {id(old)}
    assert ids(change.added) == {id(new)}
    assert ledger.services() == (new,)
    assert ledger.services()[0] is new


def test_an_object_in_old_and_new_is_no_change() -> None:
    ledger = Ledger()
    kept, gone, came = service("kept"), service("gone"), service("came")
    ledger.replace((), [kept, gone])
    ledger.take(())
    ledger.replace([kept, gone], [kept, came])
    change = ledger.take(())
    assert ids(change.removed) == {id(gone)}
    assert ids(change.added) == {id(came)}
    assert ids(ledger.services()) == ids((kept, came))


def test_added_then_removed_before_the_next_view_is_nothing() -> None:
    ledger = Ledger()
    a = service("a")
    ledger.replace((), [a])
    ledger.replace([a], [])
    assert not ledger.pending()
    change = ledger.take(())
    assert tuple(change.removed) == () and tuple(change.added) == ()
    assert ledger.services() == ()


def test_removed_then_added_back_before_the_next_view_is_nothing() -> None:
    """A Service that moves from one part to another (ZooKeeper's tables) is no change."""
    ledger = Ledger()
    a = service("a")
    ledger.replace((), [a])
    ledger.take(())
    ledger.replace([a], [])  # left one part
    ledger.replace([], [a])  # came in another
    change = ledger.take(())
    assert tuple(change.removed) == () and tuple(change.added) == ()
    assert ledger.services() == (a,)


def test_replaced_twice_reports_the_first_old_and_the_last_new() -> None:
    ledger = Ledger()
    first, second, third = service("a"), service("a"), service("a")
    ledger.replace((), [first])
    ledger.take(())
    ledger.replace([first], [second])
    ledger.replace([second], [third])
    change = ledger.take(())
    assert ids(change.removed) == {id(first)}
    assert ids(change.added) == {id(third)}


def test_the_change_replays_to_the_difference_of_the_views() -> None:
    """What publish() records: replaying each take() from the first view gives the last
    view's services exactly, whatever the interleaving of parts."""
    ledger = Ledger()
    parts: dict[str, list[Service]] = {}
    shown: dict[int, Service] = {}
    for step in range(200):
        key = f"p{step % 7}"
        old = parts.get(key, [])
        if step % 5 == 4:
            new: list[Service] = []
        elif step % 3 == 0 and old:
            new = [old[0], service(f"{key}-{step}")]  # one kept, one new
        else:
            new = [dataclasses.replace(service(key), name=f"{key}-{step}")]
        parts[key] = new
        ledger.replace(old, new)
        if step % 4 == 0:
            change = ledger.take(())
            for gone in change.removed:
                del shown[id(gone)]
            for came in change.added:
                assert id(came) not in shown
                shown[id(came)] = came
    change = ledger.take(())
    for gone in change.removed:
        del shown[id(gone)]
    for came in change.added:
        shown[id(came)] = came
    expected = {id(s) for ss in parts.values() for s in ss}
    assert set(shown) == expected
    assert ids(ledger.services()) == expected
