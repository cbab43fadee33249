"""Which peer's memory a starting replica takes over, per registry (peers.pick)."""

from __future__ import annotations

import pytest

from mcpserver.codec import Document, GraceRecord, HeldRecord, Point, Record
from mcpserver.peers import Answer, pick

pytestmark = pytest.mark.unit

PLAIN = Record((Point(10.0, ()),))


def held(since: float) -> Record:
    return Record((Point(10.0, ()),), HeldRecord(since, "r", "mass removal", Point(5.0, ())))


def graced(until: float) -> Record:
    return Record((Point(10.0, ()),), None, GraceRecord(1.0, until, "back"))


def answer(label: str, written: float, **records: Record) -> Answer:
    return Answer(label, Document(label, written, True, records))


def test_the_peer_keeping_most_wins_per_registry() -> None:
    """A hold beats a grace beats a plain view; the earliest hold, the longest grace, the
    most recent plain document; each registry on its own."""
    answers = [
        answer("a", 100.0, zk=PLAIN, nacos=graced(50.0), eureka=held(40.0)),
        answer("b", 200.0, zk=PLAIN, nacos=graced(60.0), eureka=held(30.0)),
        answer("c", 150.0, zk=PLAIN, nacos=PLAIN, consul=held(45.0)),
    ]
    picked = {name: label for name, (label, _) in pick(answers).items()}
    assert picked == {"zk": "b", "nacos": "b", "eureka": "b", "consul": "c"}
    assert pick([]) == {}
