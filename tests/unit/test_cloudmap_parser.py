"""Pure mapping of Cloud Map DiscoverInstances answers to Services, and the settings' checks."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from mcpserver.model import EPOCH_2000
from mcpserver.registry.cloudmap.config import CloudMapRegistrySettings
from mcpserver.registry.cloudmap.parser import (
    MAX_INSTANCES,
    CloudMapOptions,
    ServiceKey,
    convert,
    health_filter,
)

pytestmark = pytest.mark.unit

OPTIONS = CloudMapOptions(
    registry="aws",
    namespace="cloudmap",
    host_template="{service}.{namespace}",
    default_protocol="TCP",
    default_port=80,
    protocol_attribute="protocol",
    port_attribute="port",
    include_unknown=False,
    endpoints_mode="inline",
    region="eu-west-1",
)
KEY = ServiceKey("Shop.Example", "Orders_API")
CREATED = datetime(2024, 5, 1, tzinfo=UTC)


def instance(ident: str = "i-1", health: str = "HEALTHY", **attributes: str) -> dict[str, Any]:
    return {
        "InstanceId": ident,
        "NamespaceName": KEY.namespace,
        "ServiceName": KEY.name,
        "HealthStatus": health,
        "Attributes": attributes,
    }


def test_host_ports_labels_locality_and_creation_time() -> None:
    services, problems = convert(
        OPTIONS,
        KEY,
        [
            instance(
                "i-1",
                AWS_INSTANCE_IPV4="10.0.0.1",
                AWS_INSTANCE_PORT="8080",
                AWS_INIT_HEALTH_STATUS="HEALTHY",
                protocol="http",
                version="v1",
                AVAILABILITY_ZONE="eu-west-1b",
                **{"team name": "Core/Payments"},
            ),
            instance(
                "i-2", AWS_INSTANCE_IPV4="10.0.0.2", AWS_INSTANCE_PORT="9090", protocol="http"
            ),
            instance(
                "i-3", AWS_INSTANCE_IPV4="10.0.0.3", AWS_INSTANCE_PORT="8080", protocol="HTTP"
            ),
        ],
        CREATED,
    )
    assert problems == []
    [service] = services
    assert service.name == "orders-api.shop.example"  # sanitised to DNS-1123
    assert service.hosts == ("orders-api.shop.example",)
    assert service.namespace == "cloudmap"
    assert service.resolution == "STATIC"
    assert service.create_time == CREATED
    assert [(p.name, p.number, p.protocol) for p in service.ports] == [("http", 8080, "HTTP")]
    assert dict(service.labels) == {
        "cloudmap-namespace": "Shop.Example",
        "cloudmap-service": "Orders_API",
    }
    assert dict(service.annotations) == {"mcpserver.io/cloudmap-service": "Shop.Example/Orders_API"}
    first, second, third = service.instances
    # custom attributes only (no AWS_*, no protocol, no zone), keys and values sanitised
    assert dict(first.labels) == {"version": "v1", "team-name": "Core-Payments"}
    assert first.locality == "eu-west-1/eu-west-1b"
    assert second.ports == (("http", 9090),)  # not the service port: kept on the endpoint
    assert third.ports == () and third.locality == ""


def test_only_healthy_by_default_and_unknown_as_an_option() -> None:
    entries = [
        instance("a", "HEALTHY", AWS_INSTANCE_IPV4="10.0.0.1"),
        instance("b", "UNHEALTHY", AWS_INSTANCE_IPV4="10.0.0.2"),
        instance("c", "UNKNOWN", AWS_INSTANCE_IPV4="10.0.0.3"),
    ]
    [service], _ = convert(OPTIONS, KEY, entries, None)
    assert [i.address for i in service.instances] == ["10.0.0.1"]
    assert service.create_time == EPOCH_2000
    assert health_filter(OPTIONS) == "HEALTHY"
    unknown = dataclasses.replace(OPTIONS, include_unknown=True)
    [service], _ = convert(unknown, KEY, entries, None)
    assert [i.address for i in service.instances] == ["10.0.0.1", "10.0.0.3"]
    assert health_filter(unknown) == "ALL"  # the server cannot filter for HEALTHY or UNKNOWN


def test_no_served_instance_means_no_service() -> None:
    services, problems = convert(
        OPTIONS, KEY, [instance("b", "UNHEALTHY", AWS_INSTANCE_IPV4="10.0.0.2")], CREATED
    )
    assert services == [] and problems == []


def test_ipv6_cname_and_default_port() -> None:
    [v6], _ = convert(OPTIONS, KEY, [instance(AWS_INSTANCE_IPV6="2001:DB8::1")], None)
    assert v6.instances[0].address == "2001:db8::1"
    assert [(p.name, p.number, p.protocol) for p in v6.ports] == [("tcp", 80, "TCP")]
    [dns], _ = convert(
        OPTIONS,
        KEY,
        [instance(AWS_INSTANCE_CNAME="DB.Example.com.", AWS_INSTANCE_PORT="5432")],
        None,
    )
    assert dns.resolution == "DNS"
    assert dns.instances[0].address == "db.example.com"
    # an IP wins over a CNAME on the same instance
    [both], _ = convert(
        OPTIONS, KEY, [instance(AWS_INSTANCE_IPV4="10.0.0.1", AWS_INSTANCE_CNAME="x.example")], None
    )
    assert both.resolution == "STATIC" and both.instances[0].address == "10.0.0.1"


def test_protocol_and_port_overrides() -> None:
    [service], _ = convert(
        OPTIONS,
        KEY,
        [
            instance(
                AWS_INSTANCE_IPV4="10.0.0.1", AWS_INSTANCE_PORT="8080", port="9443", protocol="grpc"
            )
        ],
        None,
    )
    assert [(p.name, p.number, p.protocol) for p in service.ports] == [("grpc", 9443, "GRPC")]
    assert service.instances[0].labels == ()  # the override attributes are not labels
    custom = dataclasses.replace(OPTIONS, protocol_attribute="istio.protocol", port_attribute="")
    [service], _ = convert(
        custom,
        KEY,
        [
            instance(
                AWS_INSTANCE_IPV4="10.0.0.1",
                AWS_INSTANCE_PORT="8080",
                port="1",
                **{"istio.protocol": "http2"},
            )
        ],
        None,
    )
    assert [(p.name, p.number, p.protocol) for p in service.ports] == [("http2", 8080, "HTTP2")]
    assert dict(service.instances[0].labels) == {"port": "1"}


def test_malformed_instances_are_skipped_and_the_rest_flows() -> None:
    services, problems = convert(
        OPTIONS,
        KEY,
        [
            instance("ok", AWS_INSTANCE_IPV4="10.0.0.1"),
            instance("no-ip"),
            instance("bad-ip", AWS_INSTANCE_IPV4="10.0.0.300"),
            instance("bad-port", AWS_INSTANCE_IPV4="10.0.0.4", AWS_INSTANCE_PORT="70000"),
            instance("bad-proto", AWS_INSTANCE_IPV4="10.0.0.5", protocol="smtp"),
            instance("bad-cname", AWS_INSTANCE_CNAME="not a host"),
            "not an object",
        ],
        None,
    )
    [service] = services
    assert [i.address for i in service.instances] == ["10.0.0.1"]
    assert [(p.subject, p.reason) for p in problems] == [
        ("Shop.Example/Orders_API/no-ip", "no-address"),
        ("Shop.Example/Orders_API/bad-ip", "bad-address"),
        ("Shop.Example/Orders_API/bad-port", "bad-port"),
        ("Shop.Example/Orders_API/bad-proto", "bad-protocol"),
        ("Shop.Example/Orders_API/bad-cname", "bad-address"),
        ("Shop.Example/Orders_API/?", "bad-entry"),
    ]
    assert all(p.registry == "aws" for p in problems)


def test_a_cname_istiod_would_refuse_is_skipped_not_the_whole_service() -> None:
    """Found by the fuzz suite: an all-numeric top-level label is DNS-1123 but not an FQDN
    to istiod, and that one instance withheld the whole service."""
    services, problems = convert(
        OPTIONS,
        KEY,
        [
            instance("numeric", AWS_INSTANCE_CNAME="db.123."),
            instance("ok", AWS_INSTANCE_CNAME="db.example.com"),
        ],
        None,
    )
    [service] = services
    assert [i.address for i in service.instances] == ["db.example.com"]
    assert [(p.subject, p.reason) for p in problems] == [
        ("Shop.Example/Orders_API/numeric", "bad-address")
    ]


def test_http_proxy_gets_a_port_name_istiod_accepts() -> None:
    """Found by the fuzz suite: the port was named `http_proxy`, which istiod refuses."""
    [service], _ = convert(
        OPTIONS, KEY, [instance(AWS_INSTANCE_IPV4="10.0.0.1", protocol="http_proxy")], None
    )
    assert [(p.name, p.protocol) for p in service.ports] == [("http-proxy", "HTTP_PROXY")]
    [tcp], _ = convert(OPTIONS, KEY, [instance(AWS_INSTANCE_IPV4="10.0.0.1")], None)
    assert [(p.name, p.protocol) for p in tcp.ports] == [("tcp", "TCP")]  # as always


def test_a_full_answer_is_reported_as_truncated() -> None:
    entries = [
        instance(f"i-{n}", AWS_INSTANCE_IPV4=f"10.1.{n // 250}.{n % 250}")
        for n in range(MAX_INSTANCES)
    ]
    [service], problems = convert(OPTIONS, KEY, entries, None)
    assert len(service.instances) == MAX_INSTANCES
    assert [p.reason for p in problems] == ["truncated"]


def test_one_endpoint_per_address_the_lowest_port_wins() -> None:
    [service], _ = convert(
        OPTIONS,
        KEY,
        [
            instance("b", AWS_INSTANCE_IPV4="10.0.0.1", AWS_INSTANCE_PORT="9000"),
            instance("a", AWS_INSTANCE_IPV4="10.0.0.1", AWS_INSTANCE_PORT="8000"),
            instance("c", AWS_INSTANCE_IPV4="10.0.0.2", AWS_INSTANCE_PORT="8000"),
        ],
        None,
    )
    assert [(i.address, i.ports) for i in service.instances] == [("10.0.0.1", ()), ("10.0.0.2", ())]


def settings(**fields: Any) -> CloudMapRegistrySettings:
    return CloudMapRegistrySettings.model_validate({"kind": "cloudmap", "name": "aws", **fields})


def test_settings_defaults_and_host_prefix() -> None:
    default = settings()
    assert default.namespaces == ["*"] and default.host_template == "{service}.{namespace}"
    assert default.prefix_host() is True  # AWS itself: DiscoverInstances on data-servicediscovery
    local = settings(endpoint_url="http://127.0.0.1:5000/")
    assert local.endpoint_url == "http://127.0.0.1:5000"
    assert local.prefix_host() is False  # a local endpoint answers no `data-` host
    assert settings(endpoint_url="https://vpce.example", host_prefix=True).prefix_host() is True
    assert settings(default_protocol="grpc").default_protocol == "GRPC"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"region": "Ohio"}, "AWS region"),
        ({"endpoint_url": "127.0.0.1:5000"}, "http://HOST:PORT"),
        ({"namespaces": ["*", "shop"]}, "stands alone"),
        ({"namespaces": []}, "at least 1"),
        ({"host_template": "{service}.{group}"}, "unknown placeholder"),
        ({"default_protocol": "smtp"}, "unknown protocol"),
        ({"poll_interval": "10ms"}, "between 50ms and 24h"),
        ({"poll_interval": "10s", "reconcile_interval": "5s"}, "reconcile_interval"),
        ({"max_concurrency": 0}, "greater than or equal to 1"),
        ({"access_key": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_settings_name_the_problem(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(**fields)
