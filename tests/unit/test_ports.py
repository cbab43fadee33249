"""The one protocol table: which Istio port (name, protocol) a registry's protocol word
becomes. Port names are in every ServiceEntry and sidecar: these are golden values, the
names every earlier version served, and must not change."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcpserver.convert.naming import is_dns1123_label
from mcpserver.convert.ports import DUBBO, ISTIO, METADATA, istio_port, known_port, other_port
from mcpserver.convert.validate import PROTOCOLS

pytestmark = pytest.mark.unit

# what Nacos, Eureka and Consul served for a `protocol` word before the table was shared
GOLDEN_METADATA = {
    "http": ("http", "HTTP"),
    "http2": ("http2", "HTTP2"),
    "grpc": ("grpc", "GRPC"),
    "https": ("https", "HTTPS"),
    "tls": ("tls", "TLS"),
    "tcp": ("tcp", "TCP"),
    "mongo": ("mongo", "MONGO"),
    "redis": ("redis", "REDIS"),
    "mysql": ("mysql", "MYSQL"),
}
GOLDEN_DUBBO = {
    "dubbo": ("tcp-dubbo", "TCP"),
    "tri": ("grpc-tri", "GRPC"),
    "grpc": ("grpc", "GRPC"),
    "rest": ("http-rest", "HTTP"),
    "http": ("http", "HTTP"),
    "https": ("https", "HTTPS"),
    "hessian": ("http-hessian", "HTTP"),
}


def test_the_tables_are_what_was_always_served() -> None:
    assert dict(METADATA) == GOLDEN_METADATA
    assert dict(DUBBO) == GOLDEN_DUBBO


@pytest.mark.parametrize(
    ("word", "tables", "expected"),
    [
        ("http", (METADATA,), ("http", "HTTP")),
        ("tri", (METADATA,), ("tcp-tri", "TCP")),  # Eureka: no Dubbo table
        ("tri", (METADATA, DUBBO), ("grpc-tri", "GRPC")),  # Nacos: metadata, then Dubbo
        ("dubbo", (DUBBO,), ("tcp-dubbo", "TCP")),
        ("thrift", (DUBBO,), ("tcp-thrift", "TCP")),
        ("Thrift", (DUBBO,), ("tcp-thrift", "TCP")),
        ("e.", (METADATA,), ("tcp-e", "TCP")),
        ("", (METADATA,), ("tcp-x", "TCP")),
    ],
)
def test_istio_port_takes_the_first_table_that_knows_the_word(
    word: str, tables: tuple[dict[str, tuple[str, str]], ...], expected: tuple[str, str]
) -> None:
    assert istio_port(word, *tables) == expected


def test_a_long_word_is_cut_to_a_label_kept_unique_by_a_hash() -> None:
    long_a, long_b = "a" * 80, "a" * 79 + "b"
    name_a, name_b = istio_port(long_a)[0], istio_port(long_b)[0]
    assert len(name_a) == 63 and is_dns1123_label(name_a)
    assert name_a.startswith("tcp-aaaa")
    assert name_a != name_b


def test_the_first_table_wins() -> None:
    mine = {"tri": ("mine", "TCP")}
    assert istio_port("tri", mine, DUBBO) == ("mine", "TCP")
    assert istio_port("tri", DUBBO, mine) == ("grpc-tri", "GRPC")


def test_known_port_has_no_fallback() -> None:
    assert known_port("thrift", METADATA, DUBBO) is None
    assert known_port("redis", METADATA) == ("redis", "REDIS")


def test_every_istio_protocol_has_a_valid_port_name() -> None:
    """Cloud Map's table: a name istiod accepts for every protocol it knows."""
    assert set(ISTIO) == set(PROTOCOLS)
    for word, (name, protocol) in ISTIO.items():
        assert is_dns1123_label(name), word
        assert protocol == word.upper()
    assert ISTIO["http_proxy"] == ("http-proxy", "HTTP_PROXY")
    assert ISTIO["grpc-web"] == ("grpc-web", "GRPC-WEB")
    for word, port in GOLDEN_METADATA.items():  # what the metadata table gives, Cloud Map too
        assert ISTIO[word] == port


@given(st.text(max_size=100))
def test_any_word_gets_a_port_name_istiod_accepts(word: str) -> None:
    name, protocol = other_port(word)
    assert is_dns1123_label(name)
    assert name.startswith("tcp-")
    assert protocol == "TCP"
    assert istio_port(word, METADATA, DUBBO)[0] in (
        name,
        *(n for n, _ in METADATA.values()),
        *(n for n, _ in DUBBO.values()),
    )
