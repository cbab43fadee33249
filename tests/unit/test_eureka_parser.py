"""Pure reading of Eureka's documents, the delta merge, the reconcile hash, the mapping to
Services, and the Eureka settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mcpserver.convert.merge import merge as merge_registries
from mcpserver.registry.eureka.config import EurekaRegistrySettings
from mcpserver.registry.eureka.parser import (
    Document,
    DocumentError,
    EurekaOptions,
    convert_app,
    merge,
    mirror_of,
    parse_document,
    parse_instance,
    reconcile_hash,
)
from mcpserver.registry.kinds import KINDS
from mcpserver.settings import ConfigError, load_settings

pytestmark = pytest.mark.unit

OPTIONS = EurekaOptions(
    registry="eu",
    namespace="eureka",
    host_template="{app}.eureka",
    statuses=frozenset({"UP"}),
    default_protocol="http",
    region="",
    endpoints_mode="inline",
)


def raw(
    ip: str,
    *,
    app: str = "ORDERS",
    status: str = "UP",
    port: int | None = 8080,
    secure: int | None = None,
    ident: str | None = None,
    action: str = "ADDED",
    **extra: Any,
) -> dict[str, Any]:
    """An instance as Eureka's JSON writes it."""
    return {
        "instanceId": ident or f"{ip}:{app.lower()}:{port}",
        "hostName": ip,
        "app": app,
        "ipAddr": ip,
        "status": status,
        "overriddenStatus": "UNKNOWN",
        "port": {"$": port or 80, "@enabled": "true" if port else "false"},
        "securePort": {"$": secure or 443, "@enabled": "true" if secure else "false"},
        "vipAddress": app.lower(),
        "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$MyDataCenterInfo"},
        "metadata": {"@class": "java.util.Collections$EmptyMap"},
        "actionType": action,
        **extra,
    }


def document(*instances: dict[str, Any], hashcode: str = "") -> dict[str, Any]:
    apps: dict[str, list[dict[str, Any]]] = {}
    for instance in instances:
        apps.setdefault(instance["app"], []).append(instance)
    return {
        "applications": {
            "versions__delta": "1",
            "apps__hashcode": hashcode,
            "application": [{"name": n, "instance": i} for n, i in apps.items()],
        }
    }


def parsed(*instances: dict[str, Any], hashcode: str = "") -> Document:
    return parse_document(document(*instances, hashcode=hashcode), "eu")


def convert(*instances: dict[str, Any], options: EurekaOptions = OPTIONS) -> Any:
    mirror = mirror_of(parsed(*instances))
    (app,) = mirror
    return convert_app(options, app, mirror[app].values())


# ------------------------------------------------------------------ hash and merge


def test_the_reconcile_hash_counts_statuses_in_name_order_as_eureka_does() -> None:
    mirror = mirror_of(
        parsed(
            raw("10.0.0.1"),
            raw("10.0.0.2"),
            raw("10.0.0.3", app="PAY"),
            raw("10.0.0.4", status="OUT_OF_SERVICE"),
            raw("10.0.0.5", app="PAY", status="DOWN"),
        )
    )
    assert reconcile_hash(mirror) == "DOWN_1_OUT_OF_SERVICE_1_UP_3_"
    assert reconcile_hash({}) == ""  # an empty registry: Eureka sends ""


def test_a_delta_is_merged_as_the_java_client_merges_it() -> None:
    mirror = mirror_of(parsed(raw("10.0.0.1"), raw("10.0.0.2"), raw("10.0.0.9", app="PAY")))
    delta = parsed(
        raw("10.0.0.1", status="OUT_OF_SERVICE", action="MODIFIED"),
        raw("10.0.0.3", action="ADDED"),
        raw("10.0.0.2", action="DELETED"),
        raw("10.0.0.9", app="PAY", action="DELETED"),
        raw("10.0.0.7", app="GONE", action="DELETED"),  # never known: nothing to do
        raw("10.0.0.8", app="ODD", action="SOMETHING"),  # unknown action: ignored
        hashcode="OUT_OF_SERVICE_1_UP_1_",
    )
    touched = merge(mirror, delta)
    assert touched == {"ORDERS", "PAY"}
    assert set(mirror) == {"ORDERS"}  # an app without instances goes
    assert {i.id: i.status for i in mirror["ORDERS"].values()} == {
        "10.0.0.1:orders:8080": "OUT_OF_SERVICE",
        "10.0.0.3:orders:8080": "UP",
    }
    assert reconcile_hash(mirror) == delta.hashcode
    # replayed (a delta repeats changes for minutes): the same result
    assert merge(mirror, delta) == {"ORDERS"}
    assert reconcile_hash(mirror) == delta.hashcode


def test_a_lone_application_or_instance_may_be_an_object_not_a_list() -> None:
    """Eureka's older JSON codec writes a one-element list as the element."""
    body = {
        "applications": {
            "apps__hashcode": "UP_1_",
            "application": {"name": "ORDERS", "instance": raw("10.0.0.1")},
        }
    }
    doc = parse_document(body, "eu")
    assert [i.id for _, i in doc.changes] == ["10.0.0.1:orders:8080"]
    assert parse_document({"applications": {"apps__hashcode": ""}}, "eu").changes == ()
    with pytest.raises(DocumentError):
        parse_document({"error": "x"}, "eu")
    with pytest.raises(DocumentError):
        parse_document([], "eu")


def test_a_record_that_cannot_be_read_is_a_problem_and_the_rest_is_read() -> None:
    broken = raw("10.0.0.2")
    del broken["status"]
    body = document(raw("10.0.0.1"), broken)
    body["applications"]["application"][0]["instance"].append("not an object")
    doc = parse_document(body, "eu")
    assert [i.ip for _, i in doc.changes] == ["10.0.0.1"]
    assert [p.reason for p in doc.problems] == ["bad-json", "bad-json"]
    assert doc.problems[0].subject == "ORDERS/10.0.0.2:orders:8080"


def test_the_id_is_the_instance_id_else_the_host_name_and_apps_are_upper_case() -> None:
    no_id = raw("10.0.0.1", app="orders")
    del no_id["instanceId"]
    instance = parse_instance(no_id)
    assert (instance.app, instance.id) == ("ORDERS", "10.0.0.1")


# ----------------------------------------------------------------------- mapping


def test_up_instances_only_by_default_and_statuses_are_configurable() -> None:
    instances = [
        raw("10.0.0.1"),
        raw("10.0.0.2", status="DOWN"),
        raw("10.0.0.3", status="OUT_OF_SERVICE"),
        raw("10.0.0.4", status="STARTING"),
    ]
    (service,), problems = convert(*instances)
    assert [i.address for i in service.instances] == ["10.0.0.1"]
    assert problems == []
    wider = EurekaOptions(**{**_fields(OPTIONS), "statuses": frozenset({"UP", "STARTING"})})
    (service,), _ = convert(*instances, options=wider)
    assert [i.address for i in service.instances] == ["10.0.0.1", "10.0.0.4"]
    nothing, _ = convert(raw("10.0.0.2", status="DOWN"))
    assert nothing == []


def _fields(options: EurekaOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in options.__slots__}


def test_host_is_the_app_lower_cased_and_sanitised() -> None:
    (service,), _ = convert(raw("10.0.0.1", app="ORDER_SERVICE"))
    assert service.hosts == ("order-service.eureka",)
    assert service.key == "eureka/order-service.eureka"
    assert service.labels == (("eureka-app", "order_service"),)
    assert service.annotations == (("mcpserver.io/eureka-app", "ORDER_SERVICE"),)
    assert service.endpoints_mode == "inline"


def test_vip_renders_one_host_per_vip_of_an_instance() -> None:
    by_vip = EurekaOptions(**{**_fields(OPTIONS), "host_template": "{vip}.svc"})
    services, _ = convert(
        raw("10.0.0.1", vipAddress="Orders-API, orders-web"),
        raw("10.0.0.2", vipAddress="orders-api"),
        raw("10.0.0.3", vipAddress=""),  # no VIP: the app name
        options=by_vip,
    )
    assert {s.hosts[0]: [i.address for i in s.instances] for s in services} == {
        "orders-api.svc": ["10.0.0.1", "10.0.0.2"],
        "orders-web.svc": ["10.0.0.1"],
        "orders.svc": ["10.0.0.3"],
    }


def test_non_secure_and_secure_ports_with_the_protocol_from_metadata() -> None:
    (service,), _ = convert(
        raw("10.0.0.1", secure=8443),
        raw("10.0.0.2", port=8081, secure=8443),
        raw("10.0.0.3", secure=8443),
    )
    assert [(p.name, p.number, p.protocol) for p in service.ports] == [
        ("http", 8080, "HTTP"),
        ("https", 8443, "HTTPS"),
    ]
    assert [i.ports for i in service.instances] == [(), (("http", 8081),), ()]
    (grpc,), _ = convert(raw("10.0.0.1", metadata={"protocol": "gRPC"}))
    assert [(p.name, p.protocol) for p in grpc.ports] == [("grpc", "GRPC")]
    (odd,), _ = convert(raw("10.0.0.1", metadata={"protocol": "thrift"}))
    assert [(p.name, p.protocol) for p in odd.ports] == [("tcp-thrift", "TCP")]
    (secure_only,), _ = convert(raw("10.0.0.1", port=None, secure=443))
    assert [(p.name, p.number, p.protocol) for p in secure_only.ports] == [("https", 443, "HTTPS")]


def test_a_disabled_port_is_never_an_endpoints_port() -> None:
    """Istio gives every endpoint of a ServiceEntry every port of it: an instance with its
    non-secure port disabled goes into a part of the host with the https port only, which
    istiod joins to the host's ServiceEntry (the older one, with every port)."""
    main, plain, secure = convert(
        raw("10.0.0.1", secure=8443),  # both
        raw("10.0.0.2", port=None, secure=8443),  # port.@enabled=false
        raw("10.0.0.3"),  # the non-secure port only
    )[0]
    assert main.key == "eureka/orders.eureka" and main.shares_host_with == ""
    assert [(p.name, p.number) for p in main.ports] == [("http", 8080), ("https", 8443)]
    assert [i.address for i in main.instances] == ["10.0.0.1"]
    assert secure.key == "eureka/orders.eureka.only-https"
    assert (secure.hosts, secure.shares_host_with) == (("orders.eureka",), main.key)
    assert [(p.name, p.number) for p in secure.ports] == [("https", 8443)]
    assert [i.address for i in secure.instances] == ["10.0.0.2"]
    assert plain.key == "eureka/orders.eureka.only-http"
    assert [(p.name, p.number) for p in plain.ports] == [("http", 8080)]
    assert [i.address for i in plain.instances] == ["10.0.0.3"]
    # istiod takes the oldest ServiceEntry of a host as the service
    assert main.create_time < secure.create_time == plain.create_time
    assert ("mcpserver.io/part-of", main.key) in secure.annotations
    # the merge serves the parts beside their host's ServiceEntry, not as a clash
    served, problems = merge_registries([[main, secure, plain]])
    assert (len(served), problems) == (3, [])
    # nobody enables both: the host's ServiceEntry has both ports and no endpoint
    main, *parts = convert(raw("10.0.0.2", port=None, secure=8443), raw("10.0.0.3"))[0]
    assert ([p.name for p in main.ports], main.instances) == (["http", "https"], ())
    assert [[i.address for i in p.instances] for p in parts] == [["10.0.0.3"], ["10.0.0.2"]]
    assert [p.name for p in parts] == ["orders.eureka.only-http", "orders.eureka.only-https"]


def test_a_tie_for_the_service_port_is_not_won_by_eurekas_default_port() -> None:
    """An instance registered without a port gets Eureka's default 7001; it used to win a
    1-1 tie (the lowest number). Most instances first; of a tie, not 7001/7002; then the
    lowest."""
    (service,), _ = convert(raw("10.0.0.1", port=7001), raw("10.0.0.2", port=8080))
    assert [(p.name, p.number) for p in service.ports] == [("http", 8080)]
    assert [i.ports for i in service.instances] == [(("http", 7001),), ()]
    (service,), _ = convert(raw("10.0.0.1", port=7001), raw("10.0.0.2", port=7001), raw("10.0.0.3"))
    assert service.ports[0].number == 7001  # most instances still win
    (service,), _ = convert(raw("10.0.0.1", port=9090), raw("10.0.0.2", port=8080))
    assert service.ports[0].number == 8080  # a tie of two real ports: the lowest


def test_an_instance_without_an_ip_is_skipped_alone() -> None:
    """higress#1322 dropped the whole app; we skip that instance and count it."""
    (service,), problems = convert(
        raw("10.0.0.1"),
        raw("orders-2.corp.example", hostName="orders-2.corp.example"),
        raw("orders-3.corp.example", hostName="10.0.0.3"),  # prefer-ip-address: hostName is the IP
    )
    assert [i.address for i in service.instances] == ["10.0.0.1", "10.0.0.3"]
    assert [(p.reason, p.subject) for p in problems] == [
        ("not-an-ip", "ORDERS/orders-2.corp.example:orders:8080")
    ]


def test_bad_ports_and_weights_are_skipped_and_named() -> None:
    (service,), problems = convert(
        raw("10.0.0.1"),
        raw("10.0.0.2", port=70000),
        raw("10.0.0.3", metadata={"weight": "heavy"}),
        raw("10.0.0.4", port=None),
        raw("10.0.0.5", metadata={"weight": str(2**32)}),  # beyond Istio's uint32
    )
    assert [i.address for i in service.instances] == ["10.0.0.1"]
    assert sorted(p.reason for p in problems) == ["bad-port", "bad-weight", "bad-weight", "no-port"]


def test_metadata_become_labels_zone_the_locality_weight_the_weight() -> None:
    regional = EurekaOptions(**{**_fields(OPTIONS), "region": "eu-west-1"})
    meta = {"version": "v1", "zone": "zone-a", "weight": "5", "note": "hello world!"}
    (service,), _ = convert(raw("10.0.0.1", metadata=meta), raw("10.0.0.2"), options=regional)
    first, second = service.instances
    assert dict(first.labels) == {
        "version": "v1",
        "zone": "zone-a",
        "weight": "5",
        "note": "hello-world",
    }
    assert (first.weight, first.locality) == (5, "eu-west-1/zone-a")
    assert (second.weight, second.locality, second.labels) == (0, "", ())
    # without a region, the zone alone; an AWS data center's availability zone
    aws = {"@class": "x.AmazonInfo", "name": "Amazon", "metadata": {"availability-zone": "us-1a"}}
    (service,), _ = convert(
        raw("10.0.0.1", metadata={"zone": "z"}), raw("10.0.0.2", dataCenterInfo=aws)
    )
    assert [i.locality for i in service.instances] == ["z", "us-1a"]
    # weight 0: no traffic, left out
    (service,), problems = convert(raw("10.0.0.1"), raw("10.0.0.2", metadata={"weight": "0"}))
    assert [i.address for i in service.instances] == ["10.0.0.1"] and problems == []


def test_several_instances_on_one_host_are_several_endpoints() -> None:
    (service,), _ = convert(raw("10.0.0.1"), raw("10.0.0.1", port=8081), raw("10.0.0.1", port=8082))
    assert [(i.address, i.ports) for i in service.instances] == [
        ("10.0.0.1", ()),
        ("10.0.0.1", (("http", 8081),)),
        ("10.0.0.1", (("http", 8082),)),
    ]


# ---------------------------------------------------------------------- settings


def settings(**entry: Any) -> EurekaRegistrySettings:
    return EurekaRegistrySettings.model_validate({"kind": "eureka", "name": "eu", **entry})


def test_settings_defaults_and_checks() -> None:
    s = settings(servers=["http://10.0.0.1:8761/eureka/", "https://[::1]:8761/eureka"])
    assert s.servers == ["http://10.0.0.1:8761/eureka", "https://[::1]:8761/eureka"]
    assert (s.statuses, s.host_template, s.poll_interval) == (["UP"], "{app}.eureka", 5.0)
    assert settings(statuses=["up", "Starting"]).statuses == ["UP", "STARTING"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"servers": ["http://user:secret@10.0.0.1:8761/eureka"]}, "credentials in `auth`"),
        ({"servers": ["10.0.0.1:8761"]}, "expected http(s)"),
        ({"servers": ["http://10.0.0.1/eureka"]}, "give the port"),
        ({"servers": []}, "at least 1"),
        ({"statuses": ["RUNNING"]}, "expected some of"),
        ({"host_template": "{service}.eureka"}, "unknown placeholder"),
        ({"tls": {}}, "use https://"),
        ({"poll_interval": "0s"}, "between 50ms and 1h"),
    ]
    for bad, message in cases:
        with pytest.raises(ValidationError) as err:
            settings(**bad)
        messages = " ".join(e["msg"] for e in err.value.errors())
        assert message in messages, (bad, messages)
        assert "secret" not in messages  # what check-config prints


def test_the_kind_is_registered_and_bad_config_names_the_field(tmp_path: Path) -> None:
    assert KINDS["eureka"].settings is EurekaRegistrySettings
    config = tmp_path / "c.yaml"
    config.write_text("registries: [{kind: eureka, name: eu, statuses: [NOPE]}]\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config, {})
    assert any(p.startswith("registries[0].statuses") for p in err.value.problems), err.value
