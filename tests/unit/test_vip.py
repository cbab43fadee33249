"""VIPs are a pure function of the claims: same on every replica, older services keep theirs."""

from __future__ import annotations

import ipaddress
import random
from datetime import UTC, datetime, timedelta

import pytest

from mcpserver.convert import vip
from mcpserver.convert.vip import allocate, capacity, needs_vip
from mcpserver.model import Port, Service

pytestmark = pytest.mark.unit

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def usable(cidr: str) -> list[str]:
    """The addresses a pool may hand out, listed the slow and obvious way."""
    network = ipaddress.ip_network(cidr)
    addresses = list(network)
    if network.version == 4 and network.prefixlen < 31:
        addresses = addresses[1:-1]
    return [str(a) for a in addresses if not any(a in r for r in vip.ISTIO_AUTO_ALLOCATION)]


def preferred(key: str, cidr: str) -> str:
    """The address `key` hashes to, computed independently of the module's int arithmetic."""
    addresses = usable(cidr)
    return addresses[vip._preference(key) % len(addresses)]


def colliding(cidr: str, count: int, prefix: str = "ns/svc-") -> list[str]:
    """`count` keys that all hash to the same address in `cidr`."""
    by_address: dict[str, list[str]] = {}
    for i in range(10_000):
        key = f"{prefix}{i}"
        group = by_address.setdefault(preferred(key, cidr), [])
        group.append(key)
        if len(group) == count:
            return group
    raise AssertionError("no collision found")


SMALL = "10.0.0.0/29"  # six usable addresses: collisions guaranteed


def test_the_result_does_not_depend_on_claim_order() -> None:
    rng = random.Random(7)
    claims = [(f"ns/svc-{i}", at(rng.randrange(50))) for i in range(300)]
    first = allocate(claims, "10.1.0.0/22")
    for _ in range(5):
        rng.shuffle(claims)
        assert allocate(claims, "10.1.0.0/22") == first
    assert allocate(iter(claims), "10.1.0.0/22") == first  # any iterable, consumed once


def test_a_free_preferred_address_is_taken() -> None:
    assert allocate([("ns/a", T0)], SMALL) == {"ns/a": preferred("ns/a", SMALL)}


def test_the_older_claim_wins_a_contested_address_whatever_the_key_order() -> None:
    a, b = colliding(SMALL, 2)
    contested = preferred(a, SMALL)
    for older, younger in ((a, b), (b, a)):
        result = allocate([(younger, at(2)), (older, at(1))], SMALL)
        assert result[older] == contested
        assert result[younger] != contested
    # Equal create_times: the key decides.
    result = allocate([(b, T0), (a, T0)], SMALL)
    assert result[min(a, b)] == contested


def test_the_younger_one_probes_to_the_next_free_address_wrapping_round() -> None:
    a, b = colliding(SMALL, 2)
    result = allocate([(a, at(1)), (b, at(2))], SMALL)
    usable = [str(h) for h in ipaddress.ip_network(SMALL).hosts()]
    assert result[b] == usable[(usable.index(result[a]) + 1) % len(usable)]


def test_adding_younger_services_never_moves_older_ones() -> None:
    rng = random.Random(3)
    cidr = "10.0.0.0/27"  # 30 usable: crowded, many collisions
    old = [(f"old/{i}", at(i)) for i in range(15)]
    before = allocate(old, cidr)
    young = [(f"young/{i}", at(100 + rng.randrange(100))) for i in range(15)]
    after = allocate(old + young, cidr)
    assert {k: after[k] for k in before} == before
    assert len(after) == 30


def test_removing_the_owner_moves_the_younger_one_to_its_preferred_address() -> None:
    a, b, c = colliding(SMALL, 3)
    contested = preferred(a, SMALL)
    everyone = allocate([(a, at(1)), (b, at(2)), (c, at(3))], SMALL)
    assert everyone[a] == contested
    assert contested not in (everyone[b], everyone[c])
    without_a = allocate([(b, at(2)), (c, at(3))], SMALL)
    assert without_a[b] == contested  # b moves back to what it wanted
    assert without_a[c] == everyone[b]  # c moves back along the run, never away


def test_services_on_their_preferred_address_never_move_when_others_go() -> None:
    rng = random.Random(11)
    cidr = "10.0.0.0/26"
    claims = [(f"ns/{i}", at(rng.randrange(1000))) for i in range(50)]
    before = allocate(claims, cidr)
    settled = {key for key, _ in claims if before[key] == preferred(key, cidr)}
    assert len(settled) > 25  # the rest probed: a crowded pool
    for _ in range(20):
        kept = rng.sample(claims, 35)
        after = allocate(kept, cidr)
        for key, _ in kept:
            if key in settled:
                assert after[key] == before[key]


def test_explicit_addresses_are_never_handed_out() -> None:
    keys = [(f"ns/{i}", at(i)) for i in range(4)]
    taken = ["10.0.0.1", "10.0.0.2", "192.168.0.1", "not-an-ip"]
    result = allocate(keys, SMALL, explicit=taken)
    assert sorted(result.values()) == ["10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    # A CIDR users gave a ServiceEntry blocks every address it covers.
    result = allocate(keys, SMALL, explicit=["10.0.0.0/30"])
    assert sorted(result.values()) == ["10.0.0.4", "10.0.0.5", "10.0.0.6"]


def test_an_explicit_address_only_takes_its_own_slot() -> None:
    """Explicit addresses are taken, not cut out of the pool: everyone else keeps the
    preferred address they had."""
    cidr = "10.2.0.0/16"
    claims = [(f"ns/{i}", at(i)) for i in range(50)]
    before = allocate(claims, cidr)
    somebody_else = "10.2.3.4"
    assert somebody_else not in before.values()
    assert allocate(claims, cidr, explicit=[somebody_else]) == before


def test_istiods_auto_allocation_range_is_never_used() -> None:
    cidr = "240.239.255.248/29"  # 240.239.255.249-255 and then 240.240.0.0/16, skipped
    assert capacity(cidr) == 6
    big = "240.224.0.0/11"  # contains 240.240.0.0/16
    assert capacity(big) == 2**21 - 2 - 2**16
    reserved = ipaddress.ip_network("240.240.0.0/16")
    # Keys whose hash would land in the reserved range if it were not cut out.
    claims = [(f"ns/svc-{i}", T0) for i in range(5000)]
    result = allocate(claims, big)
    assert len(result) == 5000
    assert not any(ipaddress.ip_address(a) in reserved for a in result.values())
    # Addresses just after the range are not crowded: nothing piles up behind it.
    after = int(ipaddress.IPv4Address("240.241.0.0"))
    assert sum(after <= int(ipaddress.IPv4Address(a)) < after + 256 for a in result.values()) < 5


def test_a_pool_inside_istiods_range_hands_out_nothing() -> None:
    assert capacity("240.240.1.0/24") == 0
    assert allocate([("ns/a", T0)], "240.240.1.0/24") == {}


def test_exhaustion_leaves_the_youngest_keys_out() -> None:
    claims = [(f"ns/{i}", at(10 - i)) for i in range(8)]  # ns/7 is the oldest
    result = allocate(claims, SMALL)
    assert set(result) == {f"ns/{i}" for i in range(2, 8)}
    assert len(set(result.values())) == 6
    assert allocate(claims, "10.0.0.0/30", explicit=["10.0.0.1", "10.0.0.2"]) == {}


def test_small_pools() -> None:
    assert capacity("10.0.0.0/30") == 2  # network and broadcast skipped
    assert capacity("10.0.0.0/31") == 2  # point to point: both usable (RFC 3021)
    assert capacity("10.0.0.7/32") == 1
    assert allocate([("ns/a", T0)], "10.0.0.7/32") == {"ns/a": "10.0.0.7"}


def test_ipv6_pools_work_and_skip_istiods_ipv6_range() -> None:
    cidr = "fd00:1::/120"
    assert capacity(cidr) == 256
    claims = [(f"ns/{i}", at(i)) for i in range(200)]
    result = allocate(claims, cidr)
    network = ipaddress.ip_network(cidr)
    assert len(set(result.values())) == 200
    assert all(ipaddress.ip_address(a) in network for a in result.values())
    assert all(a == str(ipaddress.ip_address(a)) for a in result.values())  # canonical text
    assert capacity("2001:2::/47") == 2**81 - 2**80
    some = allocate(claims, "2001:2::/47")
    assert not any(
        ipaddress.ip_address(a) in ipaddress.ip_network("2001:2::/48") for a in some.values()
    )


def test_a_key_claimed_twice_counts_with_its_oldest_time() -> None:
    a, b = colliding(SMALL, 2)
    result = allocate([(a, at(5)), (b, at(3)), (a, at(1))], SMALL)
    assert result[a] == preferred(a, SMALL)
    assert len(result) == 2


@pytest.mark.parametrize("seed", range(30))
def test_property_injective_in_pool_deterministic(seed: int) -> None:
    rng = random.Random(seed)
    cidr = rng.choice(["10.0.0.0/28", "10.0.0.0/26", "240.239.255.192/26", "fd00::/124"])
    network = ipaddress.ip_network(cidr)
    claims = [
        (f"ns{rng.randrange(3)}/s{rng.randrange(200)}", at(rng.randrange(20)))
        for _ in range(rng.randrange(1, 80))
    ]
    explicit = [str(network[rng.randrange(network.num_addresses)]) for _ in range(rng.randrange(4))]
    result = allocate(claims, cidr, explicit)
    keys = {k for k, _ in claims}
    pool = set(usable(cidr))
    assert set(result) <= keys
    assert len(set(result.values())) == len(result)  # injective
    assert set(result.values()) <= pool - set(explicit)
    free = len(pool - set(explicit))
    assert len(result) == min(len(keys), free)  # only exhaustion leaves keys out
    shuffled = claims[:]
    rng.shuffle(shuffled)
    assert allocate(shuffled, cidr, reversed(explicit)) == result  # deterministic
    assert allocate(claims + shuffled, cidr, explicit) == result  # duplicates change nothing


def test_an_allocation_is_the_callers_own() -> None:
    claims = [("ns/a", T0), ("ns/b", at(1))]
    first = allocate(claims, SMALL)
    expected = dict(first)
    first["ns/a"] = "mangled"
    first["ns/c"] = "added"
    assert allocate(list(reversed(claims)), SMALL) == expected


def test_which_services_need_one() -> None:
    def svc(protocol: str, addresses: tuple[str, ...] = ()) -> Service:
        return Service("r", "ns", "n", ("h.mesh",), (Port("p", 1, protocol),), addresses=addresses)

    assert needs_vip(svc("TCP"))
    assert not needs_vip(svc("HTTP"))
    assert not needs_vip(svc("GRPC"))
    assert not needs_vip(svc("TCP", ("240.0.0.1",)))
