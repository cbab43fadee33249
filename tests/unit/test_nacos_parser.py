"""Pure mapping of Nacos instance lists to Services, and the Nacos settings."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from pydantic import ValidationError

from mcpserver.model import Problem, Service
from mcpserver.registry.dubbo.mapping import (
    DubboOptions,
    application_service,
    interface_services,
)
from mcpserver.registry.nacos.config import NacosRegistrySettings
from mcpserver.registry.nacos.parser import (
    NacosOptions,
    ServiceKey,
    convert,
    dubbo_non_provider,
    scale_weight,
    service_names,
    split_name,
)
from mcpserver.registry.nacos.servers import Servers
from mcpserver.registry.zookeeper.curator import parse_instance as parse_curator
from mcpserver.registry.zookeeper.dubbo import parse_provider
from tests.conftest import settings_for

pytestmark = pytest.mark.unit

DUBBO = DubboOptions(
    "nacos", "mesh", "{interface}", "{application}.dubbo", ("version", "group"), "inline", "http"
)
OPTIONS = NacosOptions(
    registry="nacos",
    namespace="mesh",
    host_template="{service}.{group}.{namespace}.nacos",
    host_metadata="istio.hostname",
    default_protocol="http",
    include_unhealthy=False,
    endpoints_mode="inline",
    dubbo=DUBBO,
)
# the ZooKeeper kind's options are the same Dubbo options: one mapping
ZK: DubboOptions = DUBBO
KEY = ServiceKey("public", "DEFAULT_GROUP", "order_service")


def host(ip: str, port: int = 8080, **extra: Any) -> dict[str, Any]:
    return {
        "instanceId": f"{ip}#{port}",
        "ip": ip,
        "port": port,
        "weight": 1.0,
        "healthy": True,
        "enabled": True,
        "ephemeral": True,
        "clusterName": "DEFAULT",
        "metadata": {},
        **extra,
    }


def info(*hosts: dict[str, Any], name: str = "DEFAULT_GROUP@@order_service") -> dict[str, Any]:
    return {"name": name, "groupName": "DEFAULT_GROUP", "hosts": list(hosts), "lastRefTime": 1}


def one(services: list[Service]) -> Service:
    assert len(services) == 1, services
    return services[0]


def test_host_naming_and_the_basic_mapping() -> None:
    services, problems = convert(
        OPTIONS, KEY, info(host("10.0.0.1", metadata={"version": "v1"}), host("10.0.0.2"))
    )
    service = one(services)
    assert problems == []
    assert service.hosts == ("order-service.default-group.public.nacos",)
    assert service.name == service.hosts[0] and service.namespace == "mesh"
    assert [(p.name, p.number, p.protocol) for p in service.ports] == [("http", 8080, "HTTP")]
    assert [i.address for i in service.instances] == ["10.0.0.1", "10.0.0.2"]
    first = service.instances[0]
    assert dict(first.labels) == {"version": "v1", "nacos-cluster": "DEFAULT"}
    assert first.weight == 100
    assert ("nacos-group", "DEFAULT_GROUP") in service.labels
    assert dict(service.annotations)["mcpserver.io/nacos-service"] == (
        "public/DEFAULT_GROUP@@order_service"
    )


def test_only_healthy_and_enabled_instances_unless_unhealthy_ones_are_asked_for() -> None:
    hosts = (
        host("10.0.0.1"),
        host("10.0.0.2", healthy=False),
        host("10.0.0.3", enabled=False),
        host("10.0.0.4", enabled=False, healthy=False),
    )
    served = one(convert(OPTIONS, KEY, info(*hosts))[0])
    assert [i.address for i in served.instances] == ["10.0.0.1"]
    options = replace(OPTIONS, include_unhealthy=True)
    served = one(convert(options, KEY, info(*hosts))[0])
    assert [i.address for i in served.instances] == ["10.0.0.1", "10.0.0.2"]


def test_no_served_instance_means_no_service() -> None:
    assert convert(OPTIONS, KEY, info(host("10.0.0.1", healthy=False))) == ([], [])


def test_weights_keep_their_ratios() -> None:
    assert [scale_weight(w) for w in (1.0, 0.5, 2.5, 0.001, 10000, 0, -1)] == [
        100,
        50,
        250,
        1,
        1_000_000,
        0,
        0,
    ]
    service = one(
        convert(OPTIONS, KEY, info(host("10.0.0.1", weight=0.5), host("10.0.0.2", weight=0)))[0]
    )
    # weight 0 takes an instance out of traffic in Nacos: it is left out
    assert [(i.address, i.weight) for i in service.instances] == [("10.0.0.1", 50)]


def test_a_malformed_instance_is_skipped_and_the_rest_flows() -> None:
    services, problems = convert(
        OPTIONS,
        KEY,
        info(
            host("10.0.0.1"),
            host("not-an-ip"),
            host("10.0.0.3", port=70000),
            host("10.0.0.4", weight="heavy"),
            host("10.0.0.5", metadata={"dubbo.endpoints": "{"}),
            "garbage",  # type: ignore[arg-type]
        ),
    )
    assert [i.address for i in one(services).instances] == ["10.0.0.1"]
    assert sorted(p.reason for p in problems) == [
        "bad-address",
        "bad-json",
        "bad-json",
        "bad-port",
        "bad-weight",
    ]
    assert all(isinstance(p, Problem) and p.subject.startswith(str(KEY)) for p in problems)


def test_protocol_metadata_and_dubbo_endpoints_make_ports() -> None:
    endpoints = json.dumps([{"protocol": "tri", "port": 50051}, {"protocol": "rest", "port": 8080}])
    service = one(
        convert(
            OPTIONS,
            KEY,
            info(
                host("10.0.0.1", port=9000, metadata={"protocol": "grpc"}),
                host("10.0.0.2", port=9000, metadata={"protocol": "grpc"}),
                host("10.0.0.3", port=9001, metadata={"protocol": "grpc"}),
                host("10.0.0.4", port=50051, metadata={"dubbo.endpoints": endpoints}),
            ),
        )[0]
    )
    assert [(p.name, p.number, p.protocol) for p in service.ports] == [
        ("grpc", 9000, "GRPC"),
        ("grpc-tri", 50051, "GRPC"),
        ("http-rest", 8080, "HTTP"),
    ]
    by_address = {i.address: i for i in service.instances}
    assert by_address["10.0.0.3"].ports == (("grpc", 9001),)
    assert by_address["10.0.0.4"].ports == ()
    assert not any(k.startswith("dubbo") for k, _ in by_address["10.0.0.4"].labels)


def test_istio_hostname_metadata_overrides_the_host() -> None:
    services, _ = convert(
        OPTIONS,
        KEY,
        info(host("10.0.0.1", metadata={"istio.hostname": "Orders.Example.COM"}), host("10.0.0.2")),
    )
    assert [s.hosts for s in services] == [
        ("order-service.default-group.public.nacos",),
        ("orders.example.com",),
    ]
    assert all("istio.hostname" not in dict(i.labels) for s in services for i in s.instances)


def test_names_as_nacos_lists_them() -> None:
    assert split_name("G1@@svc", "DEFAULT_GROUP") == ("G1", "svc")
    assert split_name("svc", "G2") == ("G2", "svc")
    assert service_names({"count": 2, "serviceNames": ["G@@a", "b"]}, "G") == [
        ("G", "a"),
        ("G", "b"),
    ]
    assert service_names({"count": 1, "doms": ["a"]}, "G") == [("G", "a")]
    with pytest.raises(ValueError, match="not a list"):
        service_names({"serviceNames": "a"}, "G")


def test_dubbo_interfaces_on_nacos_map_as_on_zookeeper() -> None:
    """The same provider, registered by Dubbo's NacosRegistry (URL parameters as metadata)
    and by its ZookeeperRegistry (the URL as a node name), becomes the same Service."""
    params = {
        "application": "demo-provider",
        "interface": "org.apache.dubbo.demo.DemoService",
        "version": "1.0.0",
        "group": "g1",
        "side": "provider",
        "methods": "sayHello",
        "release": "3.3.0",
    }
    query = "&".join(f"{k}={v}" for k, v in params.items())
    zk = one(
        interface_services(
            ZK,
            [
                parse_provider(quote(f"dubbo://10.0.0.{n}:20880/{params['interface']}?{query}"))
                for n in (1, 2)
            ],
            946_684_800_000,
        )
    )
    key = ServiceKey(
        "public", "DEFAULT_GROUP", "providers:org.apache.dubbo.demo.DemoService:1.0.0:g1"
    )
    meta = {**params, "protocol": "dubbo", "category": "providers", "path": params["interface"]}
    nacos = one(
        convert(
            OPTIONS,
            key,
            info(host("10.0.0.1", 20880, metadata=meta), host("10.0.0.2", 20880, metadata=meta)),
        )[0]
    )
    assert (nacos.hosts, nacos.ports, nacos.labels) == (zk.hosts, zk.ports, zk.labels)
    assert nacos.hosts == ("org.apache.dubbo.demo.demoservice",)
    assert [i.labels for i in nacos.instances] == [i.labels for i in zk.instances]
    assert [(i.address, i.weight) for i in nacos.instances] == [
        ("10.0.0.1", 100),
        ("10.0.0.2", 100),
    ]


def test_dubbo_consumers_and_disabled_providers_are_not_served() -> None:
    key = ServiceKey("public", "DEFAULT_GROUP", "providers:com.example.Api::")
    meta = {"interface": "com.example.Api", "side": "provider", "protocol": "tri"}
    services, _ = convert(
        OPTIONS,
        key,
        info(
            host("10.0.0.1", 50051, metadata=meta),
            host("10.0.0.2", 50051, metadata={**meta, "side": "consumer"}),
            host("10.0.0.3", 50051, metadata={**meta, "disabled": "true"}),
        ),
    )
    service = one(services)
    assert [i.address for i in service.instances] == ["10.0.0.1"]
    assert [(p.name, p.protocol) for p in service.ports] == [("grpc-tri", "GRPC")]


def test_dubbo_applications_on_nacos_map_as_curator_applications() -> None:
    meta = {
        "dubbo.endpoints": json.dumps([{"port": 20880, "protocol": "dubbo"}]),
        "dubbo.metadata.revision": "abc",
        "dubbo.metadata-service.url-params": json.dumps({"release": "3.3.0"}),
    }
    curator = parse_curator(
        json.dumps(
            {
                "name": "demo-provider",
                "id": "10.0.0.1:20880",
                "address": "10.0.0.1",
                "port": 20880,
                "payload": {"metadata": meta},
            }
        ).encode(),
        "http",
    )
    zk = application_service(ZK, "demo-provider", [curator], 946_684_800_000)
    key = ServiceKey("public", "DEFAULT_GROUP", "demo-provider")
    nacos = one(convert(OPTIONS, key, info(host("10.0.0.1", 20880, metadata=meta)))[0])
    assert nacos == zk
    assert nacos.hosts == ("demo-provider.dubbo",)


def test_a_service_info_that_is_not_an_object_is_an_error() -> None:
    with pytest.raises(ValueError, match="not an object"):
        convert(OPTIONS, KEY, ["x"])


# ------------------------------------------------------------------------------- settings


def test_settings_defaults_and_the_grpc_port(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, {"kind": "nacos", "name": "nacos"})
    (nacos,) = settings.registries
    assert isinstance(nacos, NacosRegistrySettings)
    assert nacos.grpc_target() == "127.0.0.1:9848"
    assert nacos.namespaces == ["public"] and nacos.groups == ["DEFAULT_GROUP"]
    other = NacosRegistrySettings(
        kind="nacos", name="n", address="http://[::1]:18848", grpc_port=19999, namespaces=[""]
    )
    assert other.grpc_target() == "[::1]:19999" and other.namespaces == ["public"]
    assert NacosRegistrySettings(kind="nacos", name="n", groups=["*"]).groups == ["*"]


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"address": "127.0.0.1:8848"}, "address"),
        ({"api": "udp"}, "api"),
        ({"groups": ["A@@B"]}, "groups"),
        ({"host_template": "{svc}.nacos"}, "host_template"),
        ({"list_interval": "0s"}, "list_interval"),
        ({"auth": {"username": "u"}}, "auth.password"),
        ({"grpc_port": 70000}, "grpc_port"),
        ({"addresses": ["http://a:8848", "nacos-2:8848"]}, "addresses"),
        ({"addresses": ["http://a:8848", "http://a:8848/"]}, "addresses"),
    ],
)
def test_a_bad_setting_names_its_field(entry: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        NacosRegistrySettings.model_validate({"kind": "nacos", "name": "n", **entry})
    assert field in {".".join(str(p) for p in e["loc"]) for e in caught.value.errors()}


def test_addresses_a_cluster_or_one_address() -> None:
    cluster = NacosRegistrySettings.model_validate(
        {"kind": "nacos", "name": "n", "addresses": ["http://a:8848", "http://[::1]:18848"]}
    )
    assert cluster.servers() == ["http://a:8848", "http://[::1]:18848"]
    assert [cluster.grpc_target(u) for u in cluster.servers()] == ["a:9848", "[::1]:19848"]
    one = NacosRegistrySettings.model_validate(
        {"kind": "nacos", "name": "n", "address": "http://b:8848/"}
    )
    assert one.servers() == ["http://b:8848"]
    both = {"address": "http://b:8848", "addresses": ["http://a:8848"]}
    with pytest.raises(ValidationError, match=r"address \(one server\) or addresses"):
        NacosRegistrySettings.model_validate({"kind": "nacos", "name": "n", **both})
    plain = {"addresses": ["https://a:8848", "http://b:8848"], "tls": {}}
    with pytest.raises(ValidationError, match="an address is http://"):
        NacosRegistrySettings.model_validate({"kind": "nacos", "name": "n", **plain})


def test_servers_move_on_from_the_current_one_only() -> None:
    servers = Servers(["http://a:1", "http://b:1", "http://c:1"], "n", start=0)
    servers.failed("http://b:1", "not the current one: nothing")
    assert servers.current == "http://a:1"
    servers.failed("http://a:1", "refused")
    assert servers.current == "http://b:1"
    servers.failed("http://a:1", "a second namespace saw a fail too: one step only")
    assert servers.current == "http://b:1"
    servers.failed("http://b:1", "down")
    servers.failed("http://c:1", "down")
    assert servers.current == "http://a:1"  # round and round
    alone = Servers(["http://a:1"], "n")
    alone.failed("http://a:1", "down")
    assert alone.current == "http://a:1"


@pytest.mark.parametrize(
    "name",
    [
        "consumers:org.example.DemoService:1.0.0:",
        "routers:org.example.DemoService::",
        "configurators:org.example.DemoService::",
    ],
)
def test_dubbo_categories_other_than_providers_are_no_services(name: str) -> None:
    info = {"hosts": [{"ip": "10.0.0.9", "port": 0, "weight": 1.0, "healthy": True}]}
    assert dubbo_non_provider(name)
    assert convert(OPTIONS, ServiceKey("public", "DEFAULT_GROUP", name), info) == ([], [])
    assert not dubbo_non_provider("providers:org.example.DemoService::")
    assert not dubbo_non_provider("orders")
    assert not dubbo_non_provider("consumer-api:v2")


def test_the_password_is_not_in_the_settings_repr() -> None:
    settings = NacosRegistrySettings.model_validate(
        {"kind": "nacos", "name": "n", "auth": {"username": "u", "password": {"value": "s3cret"}}}
    )
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings)
