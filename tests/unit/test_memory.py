"""What protection remembers between rebuilds (memory.py), as decision tables: removals judged
over protection.window, holds frozen against their reference."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from mcpserver.codec import GraceRecord, HeldRecord, Point, Record
from mcpserver.memory import CHECKPOINTS_PER_WINDOW, Memory
from mcpserver.model import Instance, Port, Service
from mcpserver.protection import ProtectionPolicy
from mcpserver.registry.table import ServiceTable
from mcpserver.registry.view import Recovery, Status, View
from mcpserver.settings import ProtectionSettings

pytestmark = pytest.mark.unit

WINDOW = 60.0
POLICY = ProtectionSettings(window=WINDOW).policy()  # share 0.5, min 5, hold_for 180 s, release 0.1


def app(name: str, *addresses: str) -> Service:
    return Service(
        "eureka",
        "eureka",
        name,
        (f"{name}.eureka",),
        (Port("http", 8080, "HTTP"),),
        tuple(Instance(a) for a in addresses),
    )


def view(*services: Service, synced: bool = True) -> View:
    return View("eureka", tuple(services), synced, Status.READY)


SEVEN = [f"10.0.0.{i}" for i in range(1, 8)]


def left(count: int) -> View:
    """One app of 7 instances, with only the first `count` still listed (a fresh tuple each
    time, as each delta fetch publishes)."""
    return view(app("orders", *SEVEN[:count]))


def memory(policy: ProtectionPolicy = POLICY) -> Memory:
    return Memory(policy, {})


@pytest.mark.parametrize(
    ("window", "held_after"),
    [
        (WINDOW, 3),  # the third slice brings the loss to 4 of 7 (57%): held
        (0.0, None),  # per update: 2 of 7, 1 of 5, 1 of 4, 1 of 3, never above half
    ],
)
def test_a_loss_in_slices_adds_up_over_the_window(window: float, held_after: int | None) -> None:
    """The issue's Eureka eviction: 5 of 7 instances leave in slices of 2+1+1+1 over 6 s,
    each under max_removed_share; over the window they are one mass removal, and the hold
    serves every instance the window started with, the first slices' included."""
    mind = memory(replace(POLICY, window=window))
    full = left(7)
    assert mind.decide(full, 0.0).served is full
    for number, (now, count) in enumerate([(0.5, 5), (2.5, 4), (4.5, 3), (6.5, 2)], 1):
        incoming = left(count)
        decision = mind.decide(incoming, now)
        if held_after is None or number < held_after:
            assert decision.hold is None and decision.served is incoming, number
            continue
        assert decision.hold is not None, number
        assert decision.served is full  # nothing of the window's start withdrawn
        assert decision.hold.removed_instances == 7 - count
        assert decision.hold.since == 4.5  # the hold started with the third slice
        assert "compared with what was accepted" in decision.hold.reason
        assert "protection.window 1m0s" in decision.hold.reason


def test_slices_further_apart_than_the_window_do_not_add_up() -> None:
    mind = memory()
    mind.decide(left(7), 0.0)
    for now, count in [(10.0, 5), (80.0, 4), (150.0, 3), (220.0, 2)]:
        incoming = left(count)
        decision = mind.decide(incoming, now)
        assert decision.hold is None and decision.served is incoming, now


def test_a_hold_keeps_its_reference_however_the_window_moves() -> None:
    """Held at 4 of 7 gone; later listings are judged against the same reference (not a
    newer window start), the release restores the per-window judgement from the released
    view on."""
    mind = memory()
    full = left(7)
    mind.decide(full, 0.0)
    mind.decide(left(5), 1.0)
    mind.decide(left(4), 2.0)
    held = mind.decide(left(3), 3.0)
    assert held.hold is not None and held.served is full
    # 100 s later (past the window): 6 of 7 back, still more than 10% missing
    later = mind.decide(left(6), 100.0)
    assert later.hold is not None and later.served is full and later.hold.since == 3.0
    back = left(7)
    released = mind.decide(back, 101.0)
    assert released.hold is None and released.ended and released.served is back
    # the window starts over from the released view: one slice of 2 of 7 flows
    two_gone = left(5)
    assert mind.decide(two_gone, 102.0).served is two_gone


def test_a_removal_applied_after_hold_for_is_the_new_start() -> None:
    mind = memory(replace(POLICY, hold_for=10.0))
    mind.decide(left(7), 0.0)
    held = mind.decide(left(3), 1.0)
    assert held.hold is not None and held.deadline == 11.0
    applied = left(3)
    outcome = mind.decide(applied, 11.0)
    assert outcome.hold is None and outcome.ended and outcome.served is applied
    # 1 of the 3 left goes: judged against the applied view (1 of 3), not the 7
    fewer = left(2)
    assert mind.decide(fewer, 12.0).served is fewer


def test_a_confirmation_applies_and_starts_the_window_over() -> None:
    mind = memory()
    mind.decide(left(7), 0.0)
    assert mind.decide(left(2), 1.0).hold is not None
    confirmed = left(2)
    assert mind.decide(confirmed, 2.0, confirmed=True).served is confirmed
    assert mind.hold("eureka") is None
    one = left(1)
    assert mind.decide(one, 3.0).hold is None  # 1 of 2 is not above half


def test_an_unchanged_view_costs_nothing_and_an_incomplete_one_keeps_the_served() -> None:
    mind = memory()
    full = left(7)
    mind.decide(full, 0.0)
    assert mind.decide(full, 500.0).served is full
    held = mind.decide(left(1), 501.0)
    assert held.hold is not None
    partial = view(app("orders", *SEVEN[:1]), synced=False)
    kept = mind.decide(partial, 502.0)
    assert kept.served is held.served and kept.hold == held.hold


def test_checkpoints_stay_few_under_constant_change() -> None:
    """Two views a second for ten windows: a bounded number of checkpoints (each pins the
    services that changed since), and the window's start stays about one window old."""
    mind = memory()
    for tick in range(1200):
        now = tick * 0.5
        # a churning registry: the same count of instances, one address replaced each time
        addresses = [f"10.1.{tick % 200}.{i}" for i in range(7)]
        decision = mind.decide(view(app("orders", *addresses)), now)
        assert decision.hold is None
    kept = mind._kept["eureka"]
    assert len(kept.checkpoints) <= 2 * CHECKPOINTS_PER_WINDOW + 2
    age = 599.5 - kept.checkpoints[0].at
    assert WINDOW <= age <= WINDOW * (1 + 2 / CHECKPOINTS_PER_WINDOW), age


# ------------------------------------------------------- recovery grace (issue 27 C)


def came_back(base: View, at: float) -> View:
    return replace(base, recovered=Recovery(at, "reconnected to Eureka"))


def test_a_recovery_holds_removals_for_the_kinds_grace() -> None:
    """The registry's source came back at t=10 with a grace of 30 s: the listing lacking 1
    of 7 instances is held until t=40 (the deadline the pipeline wakes at), then judged by
    the share rule and applied."""
    mind = Memory(POLICY, {}, {"eureka": 30.0})
    full = left(7)
    mind.decide(full, 0.0)
    short = came_back(left(6), 10.0)
    held = mind.decide(short, 11.0)
    assert held.hold is not None and held.hold.cause == "recovery"
    assert held.served is full and held.deadline == 40.0
    back = came_back(left(7), 10.0)  # every client back within the grace: released
    assert mind.decide(back, 12.0).hold is None
    short = came_back(left(6), 10.0)
    assert mind.decide(short, 13.0).hold is not None
    applied = mind.decide(short, 40.0)
    assert applied.hold is None and applied.served is short and applied.ended
    # a grace of 0 (a static file, Cloud Map) holds nothing
    plain = Memory(POLICY, {}, {"eureka": 0.0})
    plain.decide(full, 0.0)
    assert plain.decide(came_back(left(6), 10.0), 11.0).hold is None


def test_a_confirmation_ends_the_grace_of_that_recovery_only() -> None:
    mind = Memory(POLICY, {}, {"eureka": 30.0})
    mind.decide(left(7), 0.0)
    assert mind.decide(came_back(left(6), 10.0), 11.0).hold is not None
    confirmed = came_back(left(6), 10.0)
    assert mind.decide(confirmed, 12.0, confirmed=True).served is confirmed
    fewer = came_back(left(5), 10.0)  # the same recovery: no grace any more
    assert mind.decide(fewer, 13.0).hold is None
    again = came_back(left(4), 20.0)  # a new recovery: a new grace
    assert mind.decide(again, 21.0).hold is not None


def test_the_window_only_adds_holds_to_the_per_update_rule() -> None:
    """A registry listed empty at first, filled within the window, then emptied: against
    the window's start (empty) nothing was removed, against the view accepted last
    everything was: held, as without a window."""
    mind = memory()
    mind.decide(view(), 0.0)
    full = left(7)
    assert mind.decide(full, 5.0).served is full
    held = mind.decide(view(), 10.0)
    assert held.hold is not None and held.served is full
    assert "compared with" not in held.hold.reason  # judged against the last view


def test_a_grace_holds_what_the_outage_lost_not_what_flowed_before_it() -> None:
    """2 of 7 instances leave (a plain removal), then the source drops and comes back
    without one more: the grace holds that one; the 2 that flowed before stay withdrawn."""
    mind = Memory(POLICY, {}, {"eureka": 30.0})
    mind.decide(left(7), 0.0)
    five = left(5)
    assert mind.decide(five, 1.0).served is five
    held = mind.decide(came_back(left(4), 10.0), 11.0)
    assert held.hold is not None and held.hold.cause == "recovery"
    (served,) = held.served.services
    assert len(served.instances) == 5


# ---------------------------------------------- taken over from a peer (issue 27 D)

PEER = "peer 10.0.0.5:15052"


def take_over(mind: Memory, record: Record, now: float = 100.0, wall: float = 5000.0) -> None:
    mind.adopt("eureka", record, PEER, f"what {PEER} accepted", now, wall)


def test_a_peers_view_is_the_reference_and_adds_nothing() -> None:
    """A replica that starts takes its peer's accepted view: what its own listing lacks is
    judged by the same rules (a mass removal held, the reason naming the peer), additions
    flow, and nothing of the peer's is served that the listing has in another shape."""
    full = left(7)
    record = Record((Point(4990.0, full.services),))
    mind = memory()
    take_over(mind, record)
    refill = view(app("orders", *SEVEN[:2]), app("fresh", "10.9.0.1"))  # 5 of 7 missing
    held = mind.decide(refill, 100.0)
    assert held.hold is not None and "compared with what peer 10.0.0.5:15052 accepted" in (
        held.hold.reason
    )
    assert mind.origin("eureka") == PEER
    served = {s.key: s for s in held.served.services}
    assert served["eureka/orders"] == full.services[0]  # equal to the peer's, not the listing's
    assert "eureka/fresh" in served
    # a small difference flows (the peer would withdraw the same at its next listing)
    mind = memory()
    take_over(mind, record)
    six = left(6)
    assert mind.decide(six, 100.0).served is six


def test_a_peers_hold_goes_on_from_its_start_and_its_grace_as_long() -> None:
    """The peer has held since 30 s before (wall 4970); both replicas apply it when
    hold_for (180 s) has passed since then: at monotonic 250 here. Its grace (until wall
    5020) holds a removal under the share until monotonic 120."""
    full = left(7)
    start = Point(4900.0, full.services)
    record = Record(
        (start, Point(4960.0, full.services)),
        HeldRecord(4970.0, "peer's words", "mass removal", start),
        GraceRecord(4960.0, 5020.0, "reconnected to Eureka"),
    )
    mind = memory()
    take_over(mind, record)
    decision = mind.decide(left(1), 100.0)
    assert decision.hold is not None and decision.hold.since == 70.0
    assert decision.deadline == 120.0  # the grace's end comes first
    assert mind.decide(left(1), 249.0).hold is not None
    assert mind.decide(left(1), 250.0).hold is None
    graced = memory()
    take_over(graced, Record((Point(4990.0, full.services),), None, record.grace))
    assert graced.decide(left(6), 101.0).hold is not None  # within the peer's grace
    graced2 = memory()
    take_over(graced2, Record((Point(4990.0, full.services),), None, record.grace))
    six = left(6)
    assert graced2.decide(six, 121.0).served is six  # the grace is over


def test_export_then_adopt_decides_alike() -> None:
    """What one replica exports another adopts: both then decide the same listing alike,
    to the same served services and the same hold start (wall clocks agree)."""
    a = memory()
    a.decide(left(7), 0.0)
    a.decide(left(5), 10.0)
    held = a.decide(left(3), 20.0)  # 4 of 7 within the window: held since 20
    assert held.hold is not None
    records = a.export(30.0, 1030.0)
    b = memory()
    b.adopt("eureka", records["eureka"], PEER, "what the peer accepted", 500.0, 1040.0)
    listing = left(3)
    mine, theirs = a.decide(listing, 40.0), b.decide(listing, 510.0)
    assert mine.served.services == theirs.served.services
    assert mine.hold is not None and theirs.hold is not None
    assert (mine.hold.since, theirs.hold.since) == (20.0, 480.0)  # both wall 1020


def test_a_decision_over_10k_services_with_one_changed_is_cheap() -> None:
    """Under churn (one service changed per rebuild, a window's checkpoints kept), a decision
    at 10k services costs what changed: the view accepted last and the window's start are
    both on the registry's table log (View.changed_since), nothing walks the 10k."""
    services = tuple(
        Service("zk", "dubbo", f"s{i}", (f"s{i}",), (Port("tcp", 1),), (Instance(f"10.{i}.0.1"),))
        for i in range(10_000)
    )
    table = ServiceTable()
    for service in services:
        table.replace(service.key, (service,))

    def view() -> View:
        return replace(table.commit(), registry="zk", synced=True, status=Status.READY)

    mind = memory()
    current = view()
    mind.decide(current, 0.0)
    took = []
    for tick in range(1, 400):
        n = tick % 10_000
        old = services[n]
        table.replace(old.key, (replace(old, instances=(Instance(f"10.{n}.1.{tick % 250}"),)),))
        current = view()
        started = time.perf_counter()
        decision = mind.decide(current, tick * 0.5)
        took.append(time.perf_counter() - started)
        assert decision.hold is None
    took.sort()
    assert took[len(took) // 2] < 0.002, f"median {took[len(took) // 2] * 1000:.2f} ms"
