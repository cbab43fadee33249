"""Mass-removal protection as decision tables: what is served, and what is held."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from mcpserver.model import Instance, Port, Service
from mcpserver.protection import (
    Grace,
    Guarded,
    Hold,
    ProtectionPolicy,
    Release,
    guard,
    next_deadline,
    release_message,
)
from mcpserver.registry.view import Status, View
from mcpserver.settings import ProtectionSettings

pytestmark = pytest.mark.unit

POLICY = ProtectionSettings(window=0.0).policy()  # share 0.5, min 5 instances, hold_empty, 180 s


def address(n: int) -> str:
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def service(name: str, instances: int, first: int = 1, resolution: str = "STATIC") -> Service:
    return Service(
        "zk",
        "dubbo",
        name,
        (f"{name}.mesh",),
        (Port("tcp", 20880),),
        tuple(Instance(address(first + i)) for i in range(instances)),
        resolution=resolution,
    )


def view(*services: Service, synced: bool = True, status: Status = Status.READY) -> View:
    return View("zk", tuple(services), synced, status)


def run(
    accepted: View | None,
    incoming: View,
    hold: Hold | None = None,
    now: float = 1000.0,
    policy: ProtectionPolicy = POLICY,
    confirmed: bool = False,
    keep_when_empty: bool = False,
    withheld: frozenset[str] = frozenset(),
) -> Guarded[View]:
    return guard(
        accepted, incoming, hold, now, policy, confirmed, keep_when_empty, withheld=withheld
    )


TEN = view(service("a", 5), service("b", 5, first=100))  # 10 instances in 2 services


def fewer(removed: int) -> View:
    """TEN with `removed` instances gone, taken from the end, service b first."""
    a, b = TEN.services
    keep_b = max(0, 5 - removed)
    keep_a = 5 - max(0, removed - 5)
    return view(
        replace(a, instances=a.instances[:keep_a]), replace(b, instances=b.instances[:keep_b])
    )


def test_the_first_view_is_accepted_whatever_it_holds() -> None:
    for incoming in (TEN, view(), view(synced=False)):
        assert run(None, incoming) == Guarded(incoming, None)


@pytest.mark.parametrize(
    ("removed", "held"),
    [(0, False), (1, False), (5, False), (6, True), (9, True)],
)
def test_the_share_rule(removed: int, held: bool) -> None:
    """More than half of the instances gone is held; half is not."""
    incoming = fewer(removed)
    outcome = run(TEN, incoming)
    assert (outcome.hold is not None) is held
    assert outcome.served is (TEN if held else incoming)
    if outcome.hold is not None:
        assert outcome.hold.since == 1000.0
        assert (outcome.hold.removed_instances, outcome.hold.total_instances) == (removed, 10)
        assert "removes" in outcome.hold.reason and "zk" in outcome.hold.reason


def test_a_removed_service_counts_all_its_instances() -> None:
    a, b = TEN.services
    outcome = run(TEN, view(a, replace(b, instances=b.instances[:1]), service("c", 9, first=200)))
    assert outcome.hold is None  # 4 of 10 gone; new instances elsewhere do not offset them
    outcome = run(TEN, view(replace(a, instances=a.instances[:4])))
    assert outcome.hold is not None
    assert (outcome.hold.removed_services, outcome.hold.removed_instances) == (1, 6)


def test_instances_replaced_by_as_many_new_ones_are_not_a_removal() -> None:
    """A redeploy onto new addresses in one update: holding it would serve dead addresses."""
    moved = view(service("a", 5, first=50), service("b", 5, first=150))
    assert run(TEN, moved) == Guarded(moved, None)


def test_the_share_rule_ignores_registries_below_min_instances() -> None:
    small = view(service("a", 1), service("b", 3, first=100))  # 4 instances < 5
    incoming = view(service("a", 1))  # 3 of 4 gone
    assert run(small, incoming).hold is None
    assert run(small, incoming, policy=replace(POLICY, min_instances=4)).hold is not None


def test_share_one_disables_the_share_rule() -> None:
    assert run(TEN, fewer(9), policy=replace(POLICY, max_removed_share=1.0)).hold is None


def test_removing_every_service_is_held_even_for_a_one_service_registry() -> None:
    one = view(service("a", 1))
    for empty in (view(), view(service("a", 0))):  # gone, or no instances left
        outcome = run(one, empty)
        assert outcome.served is one
        assert outcome.hold is not None
        assert outcome.hold.removed_services == 1
        assert "all 1 served services" in outcome.hold.reason
        assert run(one, empty, policy=replace(POLICY, hold_empty=False)) == Guarded(empty, None)


def test_keep_when_empty_services_still_count_as_served() -> None:
    one = view(service("a", 1))
    emptied = view(service("a", 0))
    assert run(one, emptied, keep_when_empty=True).hold is None
    dns = view(service("a", 0, resolution="DNS"))
    assert run(dns, view()).hold is not None


def test_a_hold_keeps_its_start_while_the_update_keeps_changing() -> None:
    first = run(TEN, fewer(6), now=1000.0)
    assert first.hold is not None
    later = run(TEN, fewer(8), hold=first.hold, now=1100.0)
    assert later.served is TEN
    assert later.hold is not None and later.hold.since == 1000.0
    assert later.hold.removed_instances == 8


@pytest.mark.parametrize(
    ("elapsed", "applied"),
    [(0.0, False), (179.9, False), (180.0, True), (500.0, True)],
)
def test_a_persisting_removal_is_applied_after_hold_for(elapsed: float, applied: bool) -> None:
    hold = run(TEN, fewer(7), now=1000.0).hold
    incoming = fewer(7)
    outcome = run(TEN, incoming, hold=hold, now=1000.0 + elapsed)
    assert outcome == (Guarded(incoming, None) if applied else Guarded(TEN, hold))


def test_hold_for_zero_never_holds_and_none_never_applies_by_itself() -> None:
    incoming = fewer(7)
    assert run(TEN, incoming, policy=replace(POLICY, hold_for=0.0)) == Guarded(incoming, None)
    forever = replace(POLICY, hold_for=None)
    hold = run(TEN, incoming, policy=forever).hold
    assert hold is not None and "only when an operator confirms" in hold.reason
    assert next_deadline(hold, forever) is None
    outcome = run(TEN, incoming, hold=hold, now=1000.0 + 10**9, policy=forever)
    assert outcome.served is TEN and outcome.hold == hold
    assert run(TEN, incoming, hold=hold, policy=forever, confirmed=True).hold is None


def test_confirmation_applies_a_held_removal_at_once() -> None:
    incoming = fewer(9)
    hold = run(TEN, incoming).hold
    assert run(TEN, incoming, hold=hold, now=1001.0, confirmed=True) == Guarded(incoming, None)
    assert run(TEN, view(), confirmed=True) == Guarded(view(), None)  # no hold needed first


def test_a_recovered_registry_releases_the_hold() -> None:
    hold = run(TEN, fewer(8)).hold
    assert hold is not None
    recovered = fewer(1)
    assert run(TEN, recovered, hold=hold, now=1010.0) == Guarded(recovered, None)


def test_a_hold_ends_only_when_nearly_everything_is_back() -> None:
    """Hysteresis: a registry refilling after a restart is served whole until at most
    release_share (10%) of its instances are missing, not released at the first listing
    under the entry share (50%) with the rest withdrawn while alive."""
    assert run(TEN, fewer(4)).hold is None  # 40% removed: under the entry share
    hold = run(TEN, fewer(8)).hold
    assert hold is not None
    for refilling in (fewer(6), fewer(4), fewer(2)):
        outcome = run(TEN, refilling, hold=hold, now=1010.0)
        assert outcome.served is TEN and outcome.hold is not None
        assert outcome.hold.since == 1000.0
    back = fewer(1)
    assert run(TEN, back, hold=hold, now=1010.0) == Guarded(back, None)
    # release_share = max_removed_share: no hysteresis, released under the entry share.
    flat = replace(POLICY, release_share=0.5)
    assert run(TEN, fewer(4), hold=run(TEN, fewer(8), policy=flat).hold, policy=flat).hold is None
    # The hold still ends by time, and by confirmation.
    assert run(TEN, fewer(4), hold=hold, now=1180.0).hold is None
    assert run(TEN, fewer(4), hold=hold, now=1010.0, confirmed=True).hold is None


def test_a_held_small_registry_waits_for_its_instances_too() -> None:
    """Below min_instances only an emptied registry is held; once held, the release share
    applies whatever the size: one of four instances back is not the registry back."""
    small = view(service("a", 4))
    hold = run(small, view()).hold
    assert hold is not None
    assert run(small, view(service("a", 1)), hold=hold).served is small
    assert run(small, view(service("a", 3)), hold=hold).served is small
    back = view(service("a", 4))
    assert run(small, back, hold=hold) == Guarded(back, None)


def test_a_hold_lets_additions_through_and_withdraws_nothing() -> None:
    """While held, a new service and an instance new to its service are served at once,
    beside everything accepted (Eureka's self-preservation also takes new registrations)."""
    a, b = TEN.services
    fresh = service("c", 2, first=200)
    grown = replace(a, instances=(*a.instances[:1], Instance("10.9.9.9")))  # 4 gone, 1 new
    incoming = view(grown, fresh)  # b gone: 9 of 10 instances missing
    outcome = run(TEN, incoming)
    assert outcome.hold is not None
    served = {s.key: s for s in outcome.served.services}
    assert set(served) == {a.key, b.key, fresh.key}
    assert served[b.key] is b and served[fresh.key] is fresh
    addresses = [i.address for i in served[a.key].instances]
    assert sorted(addresses) == sorted([i.address for i in a.instances] + ["10.9.9.9"])
    # Nothing new: the accepted view itself, so the build has nothing to do.
    assert run(TEN, view(replace(a, instances=a.instances[:1]))).served is TEN


def test_a_service_redefined_while_held_waits_for_the_release() -> None:
    a = TEN.services[0]
    moved = replace(a, ports=(Port("grpc", 9090),), instances=(Instance("10.9.9.9"),))
    outcome = run(TEN, view(moved))
    assert outcome.hold is not None and outcome.served is TEN


def test_an_incomplete_listing_keeps_the_accepted_view() -> None:
    partial = view(service("a", 1), synced=False, status=Status.STARTING)
    assert run(TEN, partial) == Guarded(TEN, None)
    hold = run(TEN, fewer(8)).hold
    assert run(TEN, partial, hold=hold, now=5000.0) == Guarded(TEN, hold)  # hold kept as is
    # Nothing complete accepted yet: the newer partial listing is at least as good.
    earlier = view(service("a", 1), synced=False)
    assert run(earlier, partial) == Guarded(partial, None)


def test_a_degraded_registry_serving_its_last_view_flows() -> None:
    degraded = replace(TEN, status=Status.DEGRADED, detail="connection lost")
    assert run(TEN, degraded) == Guarded(degraded, None)


def test_next_deadline() -> None:
    hold = Hold(100.0, "r", 1, 1, 1)
    assert next_deadline(hold, POLICY) == 280.0
    assert next_deadline(None, POLICY) is None


def test_the_reason_says_how_the_hold_ends() -> None:
    hold = run(TEN, fewer(6)).hold
    assert hold is not None
    assert hold.reason == (
        "update removes 6 of 10 instances (60%; 1 of 2 services gone) of registry zk; "
        "nothing of the last accepted services is withdrawn (additions flow) until at most "
        "10% of their instances are missing; applied if it persists for 3m0s, or when an "
        "operator confirms it"
    )


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: replace(POLICY, max_removed_share=1.5), "max_removed_share"),
        (lambda: replace(POLICY, max_removed_share=-0.1), "max_removed_share"),
        (lambda: replace(POLICY, min_instances=-1), "min_instances"),
        (lambda: replace(POLICY, hold_for=-1.0), "hold_for"),
        (lambda: replace(POLICY, release_share=-0.1), "release_share"),
        (lambda: replace(POLICY, max_removed_share=0.3, release_share=0.4), "release_share"),
    ],
)
def test_a_nonsensical_policy_is_refused(make: Callable[[], ProtectionPolicy], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make()


def test_a_rebuild_over_10k_services_with_one_changed_is_cheap() -> None:
    services = [service(f"s{i}", 10, first=i * 10) for i in range(10_000)]
    accepted = View("zk", tuple(services), True, Status.READY)
    changed = list(services)
    changed[1234] = replace(services[1234], instances=services[1234].instances[:3])
    incoming = View("zk", tuple(changed), True, Status.READY)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        outcome = run(accepted, incoming)
        best = min(best, time.perf_counter() - started)
    assert outcome == Guarded(incoming, None)
    assert best < 0.05, f"guard took {best * 1000:.1f} ms"


def test_a_hold_ends_in_one_of_three_ways_each_said_differently() -> None:
    """`released` tells how a hold ended, from the decision itself (not from text): the
    removal persisted for hold_for, an operator confirmed it, or the registry came back."""
    hold = run(TEN, fewer(8)).hold
    assert hold is not None
    assert run(TEN, fewer(8), hold=hold, now=1010.0).released is None  # still held
    applied = run(TEN, fewer(8), hold=hold, now=1180.0)
    confirmed = run(TEN, fewer(8), hold=hold, now=1010.0, confirmed=True)
    back = run(TEN, fewer(1), hold=hold, now=1010.0)
    same = run(TEN, TEN, hold=hold, now=1010.0)
    assert [o.released for o in (applied, confirmed, back, same)] == [
        Release.APPLIED,
        Release.CONFIRMED,
        Release.RECOVERED,
        Release.RECOVERED,
    ]
    assert all(o.hold is None for o in (applied, confirmed, back, same))
    # confirmed and past hold_for at once: the operator's act is what ended it
    assert run(TEN, fewer(8), hold=hold, now=2000.0, confirmed=True).released is Release.CONFIRMED
    # nothing was held: nothing ended
    assert run(TEN, view(), confirmed=True).released is None
    assert run(TEN, fewer(8), policy=replace(POLICY, hold_for=0.0)).released is None
    assert run(TEN, fewer(1)).released is None
    # an incomplete listing neither ends nor changes the hold
    partial = view(service("a", 1), synced=False, status=Status.STARTING)
    assert run(TEN, partial, hold=hold, now=5000.0).released is None
    lines = [
        release_message("zk", hold, how, 1042.4, POLICY)
        for how in (Release.APPLIED, Release.CONFIRMED, Release.RECOVERED)
    ]
    assert lines[0].startswith("held removal applied after 3m0s registry=zk: ")
    assert lines[1].startswith("held removal confirmed by an operator registry=zk after 42s: ")
    assert lines[2].startswith("held removal cancelled registry=zk after 42s: the registry came")
    assert "8 of 10 instances (1 service gone) are withdrawn from istiod" in lines[0]
    assert "withdrawn" not in lines[2]


# ------------------------------------------------ what the last build withheld (issue 27 A)

VALID = tuple(service(f"ok{i}", 2, first=10 * i) for i in range(3))  # 6 served instances
INVALID = tuple(service(f"bad{i}", 1, first=100 + i) for i in range(6))  # withheld whole
WITHHELD = frozenset(s.key for s in INVALID)
MIXED = view(*VALID, *INVALID)  # a listing of 12 instances, 6 of them reach istiod


@pytest.mark.parametrize(
    ("incoming", "held", "counts"),
    [
        # the case: the 6 invalid entries and one valid service leave the file: 2 of
        # the 6 served instances (33%), a plain removal, not "7 of 12"
        (view(*VALID[1:]), False, None),
        # the invalid ones alone leave: nothing istiod had is removed
        (view(*VALID), False, None),
        # two valid services leave (4 of 6 served instances): a mass removal of those 6
        (view(VALID[0], *INVALID), True, (2, 4, 6)),
        # every valid service leaves, the invalid ones stay: nothing served is left
        (view(*INVALID), True, (3, 6, 6)),
    ],
)
def test_withheld_services_count_neither_as_removed_nor_as_served(
    incoming: View, held: bool, counts: tuple[int, int, int] | None
) -> None:
    outcome = run(MIXED, incoming, withheld=WITHHELD)
    assert (outcome.hold is not None) is held
    if outcome.hold is None:
        assert outcome.served is incoming
    else:
        hold = outcome.hold
        assert (hold.removed_services, hold.removed_instances, hold.total_instances) == counts
        assert "12" not in hold.reason
    # Counting the listing instead (no withheld keys) holds the case.
    if incoming.services == (*VALID[1:],):
        wrong = run(MIXED, incoming).hold
        assert wrong is not None and "8 of 12 instances" in wrong.reason


def test_an_emptied_registry_is_held_though_withheld_entries_remain() -> None:
    """One served service of one instance, below min_instances, and withheld entries: its
    removal leaves nothing served, which hold_empty holds whatever the size."""
    small = view(VALID[0], *INVALID)
    outcome = run(small, view(*INVALID), withheld=WITHHELD)
    assert outcome.hold is not None
    assert "all 1 served services (2 instances)" in outcome.hold.reason


def test_the_release_share_counts_only_served_instances() -> None:
    """Held, the registry comes back but for its withheld entries: that is everything istiod
    had, so the hold ends (the withheld entries are not "10% missing")."""
    hold = run(MIXED, view(*INVALID), withheld=WITHHELD).hold
    assert hold is not None
    back = view(*VALID)
    assert run(MIXED, back, hold=hold, now=1010.0, withheld=WITHHELD) == Guarded(back, None)
    # without knowing what was withheld, 6 of 12 missing would keep it held
    assert run(MIXED, back, hold=hold, now=1010.0).hold is not None


def test_a_held_view_keeps_nothing_withheld_that_left() -> None:
    """While held, an invalid entry that leaves the file is not kept (its problem goes with
    it), and one redefined (perhaps fixed) is served as the listing has it."""
    fixed = replace(INVALID[0], ports=(Port("tcp-fixed", 20880),))
    incoming = view(VALID[0], fixed)  # 2 valid services gone, 5 invalid gone, 1 fixed
    outcome = run(MIXED, incoming, withheld=WITHHELD)
    assert outcome.hold is not None
    served = {s.key: s for s in outcome.served.services}
    assert set(served) == {s.key for s in VALID} | {fixed.key}
    assert served[fixed.key] is fixed
    # Nothing new, but withheld entries left: not the accepted view itself.
    gone = run(MIXED, view(VALID[0]), withheld=WITHHELD)
    assert gone.hold is not None
    assert {s.key for s in gone.served.services} == {s.key for s in VALID}


# ------------------------------------------------------- recovery grace (issue 27 C)

EIGHT = view(service("steady", 5), service("late", 3, first=100))  # the Nacos restart case
GRACE = Grace(since=990.0, until=1020.0, why="reconnected to Nacos (namespace public)")


def graced(
    accepted: View,
    incoming: View,
    now: float = 1000.0,
    hold: Hold | None = None,
    confirmed: bool = False,
    policy: ProtectionPolicy = POLICY,
) -> Guarded[View]:
    return guard(accepted, incoming, hold, now, policy, confirmed, False, grace=GRACE)


@pytest.mark.parametrize(
    ("incoming", "now", "confirmed", "held"),
    [
        # the service whose client has not registered again: 3 of 8 instances, under the
        # share, held within the grace
        (view(EIGHT.services[0]), 1000.0, False, True),
        # one instance of 8 gone: any removal is held within the grace
        (view(EIGHT.services[0], service("late", 2, first=100)), 1000.0, False, True),
        # nothing gone (and something new): accepted
        (view(*EIGHT.services, service("new", 1, first=300)), 1000.0, False, False),
        # the grace is over: judged by the share rule, 3 of 8 flows
        (view(EIGHT.services[0]), 1020.0, False, False),
        # an operator confirms: applied at once
        (view(EIGHT.services[0]), 1000.0, True, False),
    ],
)
def test_a_registry_that_came_back_holds_any_removal_for_the_grace(
    incoming: View, now: float, confirmed: bool, held: bool
) -> None:
    outcome = graced(EIGHT, incoming, now=now, confirmed=confirmed)
    assert (outcome.hold is not None) is held
    if outcome.hold is None:
        assert outcome.served is incoming
        return
    assert outcome.hold.cause == "recovery"
    assert {s.key for s in outcome.served.services} == {s.key for s in EIGHT.services}
    assert sum(len(s.instances) for s in outcome.served.services) == 8
    assert "came back 10s ago (reconnected to Nacos (namespace public))" in outcome.hold.reason
    assert "protection.recovery_grace" in outcome.hold.reason
    # without the grace the same update flows
    assert run(EIGHT, incoming, now=now).hold is None


def test_hold_for_does_not_end_a_grace_and_a_hold_outlives_it_from_its_start() -> None:
    """Within the grace only confirmation applies; after it, a mass removal left is an
    ordinary hold that counts hold_for from the grace's first hold."""
    short = replace(POLICY, hold_for=5.0)
    emptied = view()
    first = graced(EIGHT, emptied, now=1000.0, policy=short)
    assert first.hold is not None and first.hold.cause == "recovery"
    later = graced(EIGHT, emptied, now=1010.0, hold=first.hold, policy=short)  # past hold_for
    assert later.hold is not None and later.hold.since == 1000.0
    after = run(EIGHT, emptied, hold=later.hold, now=1021.0)  # the grace over, hold_for 3m
    assert after.hold is not None and after.hold.cause == "mass removal"
    assert after.hold.since == 1000.0
    assert run(EIGHT, emptied, hold=later.hold, now=1180.0).hold is None


def test_a_grace_hold_ends_said_as_what_happened() -> None:
    """Everything back: cancelled (RECOVERED). The grace over with a small removal left:
    applied (GRACE_OVER, its own log line). Confirmed within it: CONFIRMED."""
    lacking = view(EIGHT.services[0])
    hold = graced(EIGHT, lacking).hold
    assert hold is not None and hold.cause == "recovery"
    back = graced(EIGHT, EIGHT.with_services(EIGHT.services), hold=hold, now=1005.0)
    over = graced(EIGHT, lacking, hold=hold, now=1020.0)
    confirmed = graced(EIGHT, lacking, hold=hold, now=1005.0, confirmed=True)
    assert [o.released for o in (back, over, confirmed)] == [
        Release.RECOVERED,
        Release.GRACE_OVER,
        Release.CONFIRMED,
    ]
    assert all(o.hold is None for o in (back, over, confirmed))
    line = release_message("zk", hold, Release.GRACE_OVER, 1020.0, POLICY)
    assert line.startswith("held removal applied after the recovery grace registry=zk after 20s")
    assert "3 of 8 instances (1 service gone) are withdrawn from istiod" in line
