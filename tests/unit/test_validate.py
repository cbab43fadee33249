"""Istio's ServiceEntry/WorkloadEntry rules: what istiod would drop, we withhold."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2, workload_entry_pb2

from mcpserver.convert.validate import (
    is_ip,
    is_ipv4,
    validate_name,
    validate_service_entry,
    validate_workload_entry,
)

pytestmark = pytest.mark.unit


def se(**fields: Any) -> service_entry_pb2.ServiceEntry:
    base: dict[str, Any] = {
        "hosts": ["cart.shop.mesh"],
        "ports": [{"name": "http", "number": 80, "protocol": "HTTP"}],
        "resolution": "STATIC",
        "location": "MESH_INTERNAL",
        "endpoints": [{"address": "10.0.0.1"}],
    }
    base.update(fields)
    return service_entry_pb2.ServiceEntry(**base)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"hosts": []}, "at least one host"),
        ({"hosts": ["*"]}, "invalid host *"),
        ({"hosts": ["bad_host.mesh"]}, "label 'bad_host' invalid"),
        ({"hosts": ["a.b.123"]}, "cannot be all-numeric"),
        ({"hosts": ["x" * 64 + ".mesh"]}, "invalid"),
        ({"ports": [{"name": "http_web", "number": 80}]}, "invalid port name: http_web"),
        (
            {"ports": [{"name": "http", "number": 80}, {"name": "http", "number": 81}]},
            "port name 'http' already defined",
        ),
        (
            {"ports": [{"name": "a", "number": 80}, {"name": "b", "number": 80}]},
            "port 80 already defined",
        ),
        ({"ports": [{"name": "http", "number": 0}]}, "must be in the range"),
        ({"ports": [{"name": "http", "number": 80, "protocol": "SOAP"}]}, "unsupported protocol"),
        ({"endpoints": [{"address": "cart.example.com"}]}, "is not a valid IP address"),
        ({"endpoints": [{"address": ""}]}, "address is required"),
        (
            {"endpoints": [{"address": "10.0.0.1", "ports": {"grpc": 90}}]},
            "not defined by the service",
        ),
        (
            {"endpoints": [{"address": "10.0.0.1", "labels": {"bad key!": "v"}}]},
            "invalid label key",
        ),
        (
            {"endpoints": [{"address": "10.0.0.1", "labels": {"k": "bad value!"}}]},
            "invalid label value",
        ),
        (
            {"workload_selector": {"labels": {"app": "x"}}},
            "only one of WorkloadSelector or Endpoints",
        ),
        ({"addresses": ["not-an-ip"]}, "not a valid IP"),
        ({"addresses": ["10.0.0.0/33"]}, "not a valid CIDR"),
        (
            {
                "hosts": ["a.mesh", "b.mesh"],
                "ports": [{"name": "tcp", "number": 9, "protocol": "TCP"}],
            },
            "multiple hosts provided with non-HTTP",
        ),
        ({"resolution": "NONE"}, "no endpoints should be provided"),
        ({"export_to": ["*", "*"]}, "duplicate entries"),
        ({"export_to": ["Bad_NS"]}, "invalid exportTo"),
    ],
)
def test_invalid_service_entries(fields: dict[str, Any], error: str) -> None:
    errors = validate_service_entry(se(**fields), "shop")
    assert any(error in e for e in errors), errors


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"hosts": ["*.wild.mesh"]},
        {"addresses": ["240.241.0.1", "10.0.0.0/24"]},
        {"hosts": ["a.mesh", "b.mesh"]},  # several hosts fine for HTTP
        {"endpoints": [{"address": "2001:db8::1", "ports": {"http": 8080}, "weight": 3}]},
        {"endpoints": [], "workload_selector": {"labels": {"app": "x"}}},
        {"resolution": "DNS", "endpoints": [{"address": "backend.example.com"}]},
        {"export_to": [".", "*"]},
        # no addresses on a TCP port is only a warning in Istio, not an error
        {"ports": [{"name": "tcp-dubbo", "number": 20880, "protocol": "TCP"}]},
    ],
)
def test_valid_service_entries(fields: dict[str, Any]) -> None:
    assert validate_service_entry(se(**fields), "shop") == []


def test_workload_entry_rules() -> None:
    ok = workload_entry_pb2.WorkloadEntry(address="10.0.0.1", ports={"http": 80})
    assert validate_workload_entry(ok, None, allow_fqdn=True) == []
    fqdn = workload_entry_pb2.WorkloadEntry(address="vm.example.com")
    assert validate_workload_entry(fqdn, None, allow_fqdn=True) == []
    assert validate_workload_entry(fqdn, None, allow_fqdn=False)
    unix = workload_entry_pb2.WorkloadEntry(address="unix:///sock", ports={"http": 80})
    assert any("must not include ports" in e for e in validate_workload_entry(unix, None, True))


def test_names() -> None:
    assert validate_name("shop", "cart-v1.x") == []
    assert validate_name("Shop", "cart")
    assert validate_name("shop", "Cart_1")


def ipaddress_accepts(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


octets = st.one_of(
    st.integers(0, 300).map(str),
    st.sampled_from(["00", "01", "007", "", " 1", "1 ", "+1", "0x1", "\uff11", "\u0661", "a"]),
)


@settings(derandomize=True, database=None, deadline=None, max_examples=500)
@given(
    st.one_of(
        st.lists(octets, min_size=3, max_size=5).map(".".join),
        st.ip_addresses().map(str),
        st.sampled_from(["", "::1", "fe80::1%eth0", "1.2.3.4%eth0", "1.2.3.4\x00", "\ud800"]),
        st.text(max_size=8),
    )
)
def test_an_ip_is_what_ipaddress_reads_as_one(value: str) -> None:
    """Go's netip and ipaddress agree on these forms (no leading zeros, ASCII digits: a
    fullwidth or Arabic-Indic digit is not one, though a regular expression's \\d takes
    it), and istiod drops a WorkloadEntry whose address is not an IP."""
    assert is_ip(value) == ipaddress_accepts(value)
    assert is_ipv4(value) == (ipaddress_accepts(value) and ":" not in value)


def test_digits_other_than_ascii_make_no_address() -> None:
    assert not is_ip("\uff11.2.3.4")
    assert is_ip("10.0.0.1")
    assert is_ip("::1")
