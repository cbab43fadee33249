"""Stable, collision-free VIP allocation."""

from __future__ import annotations

import ipaddress

import pytest

from mcpserver.convert.vip import allocate, needs_vip
from mcpserver.model import Port, Service

pytestmark = pytest.mark.unit

CIDR = "240.241.0.0/16"


def test_allocation_is_deterministic_unique_and_in_range() -> None:
    keys = [f"ns/svc-{i}" for i in range(2000)]
    first = allocate(keys, {}, CIDR)
    assert first == allocate(reversed(keys), {}, CIDR)
    assert len(set(first.values())) == len(keys)
    network = ipaddress.ip_network(CIDR)
    assert all(ipaddress.ip_address(a) in network for a in first.values())
    assert "240.241.0.0" not in first.values() and "240.241.255.255" not in first.values()


def test_existing_services_keep_their_address_when_others_come_and_go() -> None:
    first = allocate(["a/x", "a/y", "a/z"], {}, CIDR)
    later = allocate(["a/y", "a/z", "a/new", *[f"b/{i}" for i in range(500)]], first, CIDR)
    assert later["a/y"] == first["a/y"] and later["a/z"] == first["a/z"]
    assert "a/x" not in later


def test_collisions_probe_and_exhaustion_leaves_keys_out() -> None:
    tiny = "10.0.0.0/30"  # two usable addresses
    result = allocate(["k1", "k2", "k3"], {}, tiny)
    assert len(result) == 2 and len(set(result.values())) == 2


def test_which_services_need_one() -> None:
    def svc(protocol: str, addresses: tuple[str, ...] = ()) -> Service:
        return Service("r", "ns", "n", ("h.mesh",), (Port("p", 1, protocol),), addresses=addresses)

    assert needs_vip(svc("TCP"))
    assert not needs_vip(svc("HTTP"))
    assert not needs_vip(svc("GRPC"))
    assert not needs_vip(svc("TCP", ("240.0.0.1",)))
