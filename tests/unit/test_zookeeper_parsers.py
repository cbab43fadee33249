"""Pure parsing of Dubbo provider URLs and Curator instances, and Service building."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from mcpserver.registry.zookeeper.curator import parse_instance
from mcpserver.registry.zookeeper.dubbo import RecordError, istio_port, parse_provider
from mcpserver.registry.zookeeper.services import (
    ZkOptions,
    application_service,
    interface_services,
    mapped_service,
)

pytestmark = pytest.mark.unit

OPTIONS = ZkOptions(
    "zk",
    "dubbo",
    "{interface}",
    "{application}.dubbo",
    ("version", "group", "application"),
    "inline",
)


def node(url: str) -> str:
    return quote(url, safe="")


def test_provider_url() -> None:
    p = parse_provider(
        node(
            "dubbo://10.0.0.5:20880/org.apache.dubbo.demo.DemoService?application=demo&group=g1"
            "&version=1.0.0&weight=50&side=provider&interface=org.apache.dubbo.demo.DemoService"
        )
    )
    assert (p.protocol, p.host, p.port, p.interface) == (
        "dubbo",
        "10.0.0.5",
        20880,
        "org.apache.dubbo.demo.DemoService",
    )
    assert (p.group, p.version, p.param("weight")) == ("g1", "1.0.0", "50")
    assert p.enabled


def test_ipv6_and_interface_from_path() -> None:
    p = parse_provider(node("tri://[2001:db8::5]:50051/com.example.Api?side=provider"))
    assert (p.host, p.port, p.interface) == ("2001:db8::5", 50051, "com.example.Api")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("plain-text", "not-a-url"),
        (node("dubbo://host.example:20880/x"), "bad-address"),
        (node("dubbo://10.0.0.1:0/x"), "bad-port"),
        (node("dubbo://10.0.0.1:70000/x"), "bad-port"),
        (node("dubbo://10.0.0.1/x"), "bad-port"),
        (node("dubbo://10.0.0.1:20880/"), "no-interface"),
        ("x" * 10000, "too-long"),
    ],
)
def test_bad_provider_urls(name: str, reason: str) -> None:
    with pytest.raises(RecordError) as err:
        parse_provider(name)
    assert err.value.reason == reason


def test_disabled_switches() -> None:
    assert not parse_provider(node("dubbo://10.0.0.1:1/x?enabled=false")).enabled
    assert not parse_provider(node("dubbo://10.0.0.1:1/x?disabled=true")).enabled


def test_protocol_ports() -> None:
    assert istio_port("dubbo") == ("tcp-dubbo", "TCP")
    assert istio_port("tri") == ("grpc-tri", "GRPC")
    assert istio_port("thrift") == ("tcp-thrift", "TCP")


def test_interface_services_merge_protocols_and_keep_ports() -> None:
    providers = [
        parse_provider(node(f"{proto}://{addr}:{port}/com.example.Api?version=1&application=a"))
        for proto, addr, port in [
            ("dubbo", "10.0.0.1", 20880),
            ("tri", "10.0.0.1", 50051),
            ("dubbo", "10.0.0.2", 20880),
            ("dubbo", "10.0.0.3", 20881),  # odd one out keeps its own port
        ]
    ]
    (service,) = interface_services(OPTIONS, providers, 1_700_000_000_000)
    assert service.name == service.hosts[0] == "com.example.api"
    assert [(p.name, p.number) for p in service.ports] == [
        ("tcp-dubbo", 20880),
        ("grpc-tri", 50051),
    ]
    by_address = {i.address: i for i in service.instances}
    assert by_address["10.0.0.3"].ports == (("tcp-dubbo", 20881),)
    assert by_address["10.0.0.1"].ports == ()
    assert dict(by_address["10.0.0.1"].labels) == {"application": "a", "version": "1"}
    assert service.create_time.year == 2023


def test_host_template_with_version_splits_services() -> None:
    options = ZkOptions("zk", "dubbo", "{version}.{interface}", "{application}.dubbo", (), "inline")
    providers = [
        parse_provider(node(f"dubbo://10.0.0.{i}:20880/com.example.Api?version={v}"))
        for i, v in ((1, "1.0"), (2, "2.0"))
    ]
    names = [s.name for s in interface_services(options, providers, 0)]
    assert names == ["1.0.com.example.api", "2.0.com.example.api"]


def curator(**doc: object) -> bytes:
    return json.dumps(doc).encode()


def test_curator_ipv6_in_brackets() -> None:
    instance = parse_instance(curator(name="a", address="[::1]", port=20880), "http")
    assert instance.address == "::1"


def test_curator_spring_and_dubbo_instances() -> None:
    spring = parse_instance(
        curator(
            name="orders",
            id="1",
            address="10.1.0.1",
            port=8080,
            sslPort=8443,
            payload={"metadata": {"zone": "z1"}},
        ),
        "http",
    )
    assert [(e.protocol, e.port) for e in spring.endpoints] == [("http", 8080), ("https", 8443)]
    dubbo = parse_instance(
        curator(
            name="greeter",
            id="x",
            address="10.1.0.2",
            port=20880,
            payload={
                "metadata": {"dubbo.endpoints": json.dumps([{"port": 20880, "protocol": "dubbo"}])}
            },
        ),
        "http",
    )
    assert dubbo.dubbo and [(e.protocol, e.port) for e in dubbo.endpoints] == [("dubbo", 20880)]
    service = application_service(OPTIONS, "orders", [spring], 0)
    assert service.hosts == ("orders.dubbo",)
    assert [(p.name, p.protocol) for p in service.ports] == [("http", "HTTP"), ("https", "HTTPS")]
    assert dict(service.instances[0].labels) == {"application": "orders", "zone": "z1"}
    mapped = mapped_service(OPTIONS, "com.example.Orders", [service], 0)
    assert mapped is not None and mapped.hosts == ("com.example.orders",)
    assert mapped_service(OPTIONS, "com.example.None", [], 0) is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{nope", "bad-json"),
        (b"\xff\xfe", "not-utf8"),
        (b"[1, 2]", "bad-json"),
        (curator(name="a", port=1), "bad-json"),
        (curator(name="a", address="not-ip", port=1), "bad-address"),
        (curator(name="a", address="10.0.0.1", port=0), "bad-port"),
        (curator(name="a", address="10.0.0.1"), "bad-port"),
        (
            curator(name="a", address="10.0.0.1", payload={"metadata": {"dubbo.endpoints": "{"}}),
            "bad-json",
        ),
        (b" " * (1024 * 1024 + 1), "too-long"),
    ],
)
def test_bad_curator_instances(data: bytes, reason: str) -> None:
    with pytest.raises(RecordError) as err:
        parse_instance(data, "http")
    assert err.value.reason == reason
