"""Sanitising registry text into names Istio accepts."""

from __future__ import annotations

import hashlib
import random

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


def sanitized_label_by_label(value: str) -> str:
    """sanitize_host as it was before its shortcut for clean hosts: every label sanitized."""
    parts = [sanitize_label(part) for part in value.lower().split(".") if part.strip("-_ ")]
    host = ".".join(parts) or "x"
    if len(host) <= 253:
        return host
    digest = hashlib.blake2b(host.encode(), digest_size=4).hexdigest()
    return host[: 253 - 9].rstrip("-.") + "-" + digest


def test_a_clean_host_is_what_sanitizing_every_label_makes() -> None:
    """Seeded random texts near and far from a clean host (upper case, double and edge
    hyphens, empty labels, labels of 63 and 64 characters, hosts of 253 and 254, letters
    that lower-case to ASCII): sanitize_host makes what sanitizing every label makes."""
    rng = random.Random(3)
    pieces = ["a", "Z", "0", "-", ".", "_", " ", "é", "\u212a", "$", "ab", "x" * 30]
    clean = 0
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 12)))
        if rng.random() < 0.3:  # near a length limit
            label = "a" * rng.choice([62, 63, 64])
            text = ".".join([label] * rng.randrange(1, 5)) + rng.choice(["", ".b", ".bc", "-"])
        host = sanitize_host(text)
        assert host == sanitized_label_by_label(text), text
        clean += host == text
    assert clean > 1_000
