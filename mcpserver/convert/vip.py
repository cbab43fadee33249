"""Virtual IPs that every replica and every restart agrees on.

A TCP service sharing a port with others (every Dubbo provider listens on 20880) can only be
told apart by destination address, and since Istio 1.25 istiod's own auto-allocation writes
through the Kubernetes API (pilot/pkg/controllers/ipallocate) and never sees resources served
over MCP. So we allocate from `vip.cidr` ourselves.

The table is a pure function of the registries' content, never of what was allocated before:
two replicas, or one replica before and after a restart, serve the same addresses, because
the only inputs are each service's key, its create_time (a registry-stable fact: ZooKeeper
ctime, Consul CreateIndex, the static file's `created`), the pool and the addresses users set
themselves.

The algorithm: claims are taken in (create_time, key) order, older first. Each service's
preferred address is a blake2b hash of its key into the pool's usable addresses; if that is
taken it probes linearly (wrapping round) to the next free one. Never handed out: the IPv4
network and broadcast addresses of a pool shorter than /31; addresses (or ranges) users gave
their own services (`explicit`); and istiod's own auto-allocation ranges, 240.240.0.0/16 and
2001:2::/48 (PILOT_IP_AUTOALLOCATE_IPV4_PREFIX / _IPV6_PREFIX in pilot/pkg/features/pilot.go,
the ranges the ipallocate controller and the older in-memory allocation with the DNS proxy in
pilot/pkg/serviceregistry/serviceentry/auto_allocation.go hand out): an address from there could
be the one istiod gives some Kubernetes ServiceEntry. Those fixed exclusions are cut out of
the pool before hashing, so the hash spreads over usable addresses only and no run of services
piles up behind a skipped range; `explicit` addresses are merely taken, so adding one never
shifts anyone else's preferred address.

What moves, and when (the allocation of a service depends only on the services older than it,
and on `explicit`):
- Adding a younger service never moves an existing one: it only gets what the older ones left.
- Removing a service frees its address. A younger service whose probe had passed over that
  address (it wanted it, or an address before it in the same run of taken addresses) moves
  on the next rebuild to the first free address from its own preferred one, which is the
  freed address or one before its old one; that can cascade along the run, each service
  moving back toward its preferred address, never away. A service on its preferred address
  never moves. (Linear probing with one insertion order: the set of taken addresses after the
  older services is a subset of what it was before the removal.)
- What can move a service away from its address: an *older* claim appearing (a service with an
  earlier create_time, e.g. a registry added to the config, an older service coming back after
  it was removed, or a create_time that changed) or a user setting an explicit address on the
  one it holds. So a service that flaps (gone, back) moves the younger services that collided
  with it, twice. Only collisions expose a service to any of this, so the pool should be
  large: with n services in m addresses about n*n/(2m) pairs hash to the same address. The
  default, 240.0.0.0/8 without 240.240.0.0/16 (16,711,678 addresses), has ~75 such pairs
  among 50k services.

Work is in ints; the pool is parsed once per CIDR (this runs on every rebuild, at 50k services).
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from operator import itemgetter

from mcpserver.model import Service

_NO_VIP_PROTOCOLS = frozenset(["HTTP", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-WEB", "HTTPS", "TLS"])

ISTIO_AUTO_ALLOCATION = (
    ipaddress.ip_network("240.240.0.0/16"),
    ipaddress.ip_network("2001:2::/48"),
)
"""istiod's defaults for PILOT_IP_AUTOALLOCATE_IPV4_PREFIX and _IPV6_PREFIX: never ours."""


def needs_vip(service: Service) -> bool:
    """STATIC services without addresses that have a port istiod can only route by address."""
    return (
        not service.addresses
        and service.resolution == "STATIC"
        and any(p.protocol.upper() not in _NO_VIP_PROTOCOLS for p in service.ports)
    )


@dataclass(frozen=True, slots=True)
class _Pool:
    """A CIDR as ints. Usable addresses are numbered 0..capacity-1 in address order, skipping
    `gaps` (inclusive int ranges inside [first, last] never handed out)."""

    version: int
    first: int
    last: int
    gaps: tuple[tuple[int, int], ...]
    capacity: int

    def address(self, index: int) -> int:
        """The address numbered `index`."""
        value = self.first + index
        for low, high in self.gaps:  # sorted, so each shift can only push past later gaps
            if value >= low:
                value += high - low + 1
        return value

    def index(self, value: int) -> int | None:
        """The number of address `value`, or None if the pool never hands it out."""
        if not self.first <= value <= self.last:
            return None
        skipped = 0
        for low, high in self.gaps:
            if value < low:
                break
            if value <= high:
                return None
            skipped += high - low + 1
        return value - self.first - skipped

    def texts(self, indexes: list[int]) -> list[str]:
        """The text of the addresses numbered `indexes`."""
        address = self.address
        if self.version == 4:  # a pure conversion, ~4x faster than str(IPv4Address(value))
            ntoa = socket.inet_ntoa
            return [ntoa(address(index).to_bytes(4, "big")) for index in indexes]
        return [str(ipaddress.IPv6Address(address(index))) for index in indexes]


@lru_cache(maxsize=16)
def _pool(cidr: str) -> _Pool:
    network = ipaddress.ip_network(cidr)
    first, last = int(network.network_address), int(network.broadcast_address)
    if network.version == 4 and network.prefixlen < 31:  # network and broadcast addresses
        first, last = first + 1, last - 1
    gaps = []
    for reserved in ISTIO_AUTO_ALLOCATION:
        if reserved.version != network.version:
            continue
        low = max(first, int(reserved.network_address))
        high = min(last, int(reserved.broadcast_address))
        if low <= high:
            gaps.append((low, high))
    gaps.sort()
    size = last - first + 1 - sum(high - low + 1 for low, high in gaps)
    return _Pool(network.version, first, last, tuple(gaps), max(0, size))


def capacity(cidr: str) -> int:
    """How many addresses the pool can hand out (before users' explicit addresses)."""
    return _pool(cidr).capacity


def _blocked(pool: _Pool, explicit: Iterable[str]) -> tuple[set[int], list[tuple[int, int]]]:
    """Users' own addresses inside the pool, as taken indexes and merged index ranges (for
    CIDRs, which ServiceEntry `addresses` may hold). Unparsable entries are ignored here:
    validation reports them against their own service."""
    singles: set[int] = set()
    ranges: list[tuple[int, int]] = []
    for text in explicit:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if network.version != pool.version:
            continue
        low = max(pool.first, int(network.network_address))
        high = min(pool.last, int(network.broadcast_address))
        if low > high:
            continue
        if low == high:
            index = pool.index(low)
            if index is not None:
                singles.add(index)
            continue
        # Move both ends off istiod's ranges, then number them.
        for gap_low, gap_high in pool.gaps:
            if gap_low <= low <= gap_high:
                low = gap_high + 1
        for gap_low, gap_high in reversed(pool.gaps):
            if gap_low <= high <= gap_high:
                high = gap_low - 1
        start, end = pool.index(low), pool.index(high)
        if start is not None and end is not None and start <= end:
            ranges.append((start, end))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    if merged:
        starts = [start for start, _ in merged]
        singles = {i for i in singles if not _inside(merged, starts, i)}
    return singles, merged


def _inside(ranges: list[tuple[int, int]], starts: list[int], index: int) -> bool:
    at = bisect.bisect_right(starts, index) - 1
    return at >= 0 and index <= ranges[at][1]


def _preference(key: str) -> int:
    """A key's 64-bit hash. Not cached: an allocation (only when the set of claims
    changed) hashes every key, 8 ms at 10k services, and a cache of every key's hash was
    1 MiB, live at the peak of a cold start, whose allocation found it empty anyway."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def allocate(
    claims: Iterable[tuple[str, datetime]], cidr: str, explicit: Iterable[str] = ()
) -> dict[str, str]:
    """Addresses for the claimed service keys (`namespace/name`, create_time): older claims
    pick first, each takes its hashed address or the next free one; keys that find no free
    address are left out. A key claimed twice counts with its oldest create_time. The result
    depends on the set of claims and `explicit` only, never on their order.

    Not memoised: the builder allocates only when the set of claims changed (most rebuilds
    change instances, not services), and a memo of the last sets held a second copy of
    every claim and address (1.8 MiB at 10k services) for a repeat that does not come."""
    pool = _pool(cidr)
    size = pool.capacity
    taken, ranges = _blocked(pool, explicit)
    starts = [start for start, _ in ranges]
    free = size - len(taken) - sum(end - start + 1 for start, end in ranges)
    # Two stable sorts order by (create_time, key) about 3x faster than one sort on a tuple.
    ordered = sorted(sorted(claims, key=itemgetter(0)), key=itemgetter(1))
    keys: list[str] = []
    indexes: list[int] = []
    seen: set[str] = set()
    for key, _ in ordered:
        if free <= 0:
            break
        if key in seen:
            continue
        seen.add(key)
        index = _preference(key) % size
        while True:  # terminates: at least one free index exists
            if index in taken:
                index = index + 1 if index + 1 < size else 0
            elif ranges and _inside(ranges, starts, index):
                end = ranges[bisect.bisect_right(starts, index) - 1][1]
                index = end + 1 if end + 1 < size else 0
            else:
                break
        taken.add(index)
        free -= 1
        keys.append(key)
        indexes.append(index)
    return dict(zip(keys, pool.texts(indexes), strict=True))
