"""Sanitising registry text into names Istio accepts."""

from __future__ import annotations

import pytest

from mcpserver.convert.naming import (
    is_dns1123_label,
    is_dns1123_subdomain,
    is_label_key,
    is_label_value,
    render_host,
    sanitize_host,
    sanitize_label,
    sanitize_label_key,
    sanitize_label_value,
)
from mcpserver.convert.validate import check_wildcard_domain

pytestmark = pytest.mark.unit

SAMPLES = [
    "org.apache.dubbo.demo.DemoService",
    "com.Foo$Bar_Baz",
    "UPPER",
    "a..b",
    "-lead.trail-",
    "x" * 300,
    "ünïcødé.service",
    "",
    "___",
    "a/b=c",
    "1.2.3",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_sanitized_output_is_always_valid(text: str) -> None:
    assert is_dns1123_label(sanitize_label(text))
    host = sanitize_host(text)
    assert is_dns1123_subdomain(host), host
    assert is_label_value(sanitize_label_value(text))
    assert is_label_key(sanitize_label_key(text))


def test_dubbo_interface_becomes_lower_case_host() -> None:
    host = sanitize_host("org.apache.dubbo.demo.DemoService")
    assert host == "org.apache.dubbo.demo.demoservice"
    assert check_wildcard_domain(host) is None


def test_long_names_stay_unique() -> None:
    assert sanitize_label("a" * 100 + "x") != sanitize_label("a" * 100 + "y")


def test_template() -> None:
    assert render_host("{name}.{namespace}.svc.mesh", "cart", "shop", "r") == "cart.shop.svc.mesh"


def test_label_keys_with_prefix() -> None:
    assert is_label_key("mcpserver.io/service")
    assert not is_label_key("Bad_Prefix/x")
    assert sanitize_label_key("example.com/My Key") == "example.com/My-Key"
