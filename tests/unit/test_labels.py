"""Registry metadata to endpoint labels: the allow list, the count and size bounds, the keys
kept first, every kind through the same rule, and each dropped key reported once."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from urllib.parse import quote

import pytest

from mcpserver.config import LabelSettings
from mcpserver.convert.labels import (
    NOT_ALLOWED,
    TOO_LONG,
    TOO_MANY,
    LabelRule,
    apply,
    silently,
)
from mcpserver.metrics import Metrics
from mcpserver.registry.cloudmap.parser import convert as convert_cloudmap
from mcpserver.registry.consul.parser import parse_entry
from mcpserver.registry.dubbo.mapping import interface_services
from mcpserver.registry.labels import LabelFilter
from mcpserver.registry.nacos.parser import convert as convert_nacos
from mcpserver.registry.zookeeper.dubbo import parse_provider
from tests.unit import test_cloudmap_parser as cloudmap
from tests.unit import test_consul_parser as consul
from tests.unit import test_eureka_parser as eureka
from tests.unit import test_nacos_parser as nacos

pytestmark = pytest.mark.unit


def test_by_default_every_key_up_to_32_and_63_characters() -> None:
    pairs = (*((f"k{i:03d}", "v") for i in range(500)), ("version", "v1"), ("empty", "!"))
    labels, dropped = apply(LabelRule(), pairs)
    assert len(labels) == 32
    assert ("version", "v1") in labels  # kept first, whatever its place in key order
    assert [k for k, _ in labels if k != "version"] == [f"k{i:03d}" for i in range(31)]
    assert {reason for _, reason in dropped} == {TOO_MANY} and len(dropped) == 469
    # an empty value (after sanitising) makes no label, and is no drop
    assert "empty" not in dict(labels) and "empty" not in dict(dropped)


def test_an_allow_list_and_the_size_bound() -> None:
    rule = LabelRule(allow=("version", "team*"), max_count=2, max_size=10)
    labels, dropped = apply(
        rule,
        (
            ("version", "v1"),
            ("team", "pay"),
            ("team-b", "x"),
            ("note", "hi"),
            ("team-long", "a" * 11),  # longer than max_size: dropped, not cut and hashed
        ),
    )
    assert labels == (("team", "pay"), ("version", "v1"))
    assert sorted(dropped) == [
        ("note", NOT_ALLOWED),
        ("team-b", TOO_MANY),
        ("team-long", TOO_LONG),
    ]
    # istio's own keys and README's routing keys go before others past the count
    labels, _ = apply(
        LabelRule(max_count=2), (("a", "1"), ("app", "cart"), ("topology.istio.io/network", "n"))
    )
    assert dict(labels) == {"app": "cart", "topology.istio.io/network": "n"}
    # nothing allowed: no labels from metadata at all
    assert apply(LabelRule(allow=()), (("version", "v1"),))[0] == ()


def test_a_dropped_key_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    caplog.set_level(logging.INFO)
    mapper = LabelFilter("eu", LabelSettings(allow=["version"], max_count=1), metrics)
    for ip in range(50):  # fifty instances with the same metadata, over and over
        assert mapper((("version", "v1"), ("note", f"n{ip}"))) == (("version", "v1"),)
    assert mapper((("version", "v1"), ("other", "x"))) == (("version", "v1"),)

    def counted(reason: str) -> float:
        value = metrics.registry.get_sample_value(
            "mcpserver_registry_dropped_labels_total", {"registry": "eu", "reason": reason}
        )
        return value or 0

    assert counted(NOT_ALLOWED) == 2  # "note" and "other", once each
    assert caplog.text.count("key=note") == 1


RESTRICTIVE = silently(LabelRule(allow=("version",)))


def test_every_kind_maps_its_metadata_through_the_rule() -> None:
    meta = {"version": "v1", "team": "pay"}
    # Eureka metadata
    (service,), _ = eureka.convert(
        eureka.raw("10.0.0.1", metadata=meta), options=replace(eureka.OPTIONS, labels=RESTRICTIVE)
    )
    assert service.instances[0].labels == (("version", "v1"),)
    # Nacos metadata (nacos-cluster is ours, not metadata: always there)
    services, _ = convert_nacos(
        replace(nacos.OPTIONS, labels=RESTRICTIVE),
        nacos.KEY,
        nacos.info(nacos.host("10.0.0.1", metadata=meta)),
    )
    assert dict(services[0].instances[0].labels) == {"version": "v1", "nacos-cluster": "DEFAULT"}
    # Consul tags and service meta
    instance = parse_entry(
        consul.entry(Tags=["version=v1"], Meta={"team": "pay"}),
        "dc1",
        replace(consul.OPTIONS, labels=RESTRICTIVE),
    )
    assert instance is not None and instance.labels == (("version", "v1"),)
    # Cloud Map custom attributes
    services, _ = convert_cloudmap(
        replace(cloudmap.OPTIONS, labels=RESTRICTIVE),
        cloudmap.KEY,
        [cloudmap.instance(AWS_INSTANCE_IPV4="10.0.0.1", version="v1", team="pay")],
        datetime(2024, 5, 1, tzinfo=UTC),
    )
    assert services[0].instances[0].labels == (("version", "v1"),)
    # Dubbo providers (ZooKeeper, Nacos): label_params, then the rule
    dubbo = replace(nacos.DUBBO, labels=RESTRICTIVE)
    url = "dubbo://10.0.0.1:20880/a.B?interface=a.B&side=provider&version=v1&group=g"
    services = interface_services(dubbo, [parse_provider(quote(url, safe=""))], 1_700_000_000_000)
    assert services[0].instances[0].labels == (("version", "v1"),)
