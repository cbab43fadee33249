"""Pure mapping of Consul health entries to Services."""

from __future__ import annotations

from typing import Any

import pytest

from mcpserver.registry.consul.parser import (
    ConsulOptions,
    build_services,
    parse_health,
    status,
)
from mcpserver.registry.consul.watcher import next_index

pytestmark = pytest.mark.unit

OPTIONS = ConsulOptions("consul", "consul", "{service}.service.consul", "TCP", False, "inline")


def entry(
    address: str = "10.0.0.1", port: int = 80, checks: list[str] | None = None, **service: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "ID": f"{address}:{port}",
        "Service": "web",
        "Address": address,
        "Port": port,
        "Tags": [],
        "Meta": {},
        "Weights": {"Passing": 1, "Warning": 1},
        "CreateIndex": 40,
    }
    body.update(service)
    return {
        "Node": {"Node": "n1", "Address": "192.0.2.9", "Datacenter": "dc1"},
        "Service": body,
        "Checks": [{"Status": s} for s in (checks or ["passing"])],
    }


def test_status_is_the_worst_check() -> None:
    assert status([{"Status": "passing"}, {"Status": "warning"}]) == "warning"
    assert status([{"Status": "passing"}, {"Status": "critical"}]) == "critical"
    assert status([]) == "passing"


def test_only_healthy_instances_with_labels_locality_weight() -> None:
    entries = [
        entry(
            "10.0.0.1",
            Tags=["version=v1", "team|pay", "plain"],
            Meta={"zone": "a", "protocol": "grpc"},
            Weights={"Passing": 5, "Warning": 1},
        ),
        entry("10.0.0.2", checks=["passing", "warning"]),
        entry("10.0.0.3", checks=["critical"]),
        entry("", Port=90),  # falls back to the node address
    ]
    instances, problems = parse_health("web", "dc1", entries, OPTIONS)
    assert problems == []
    assert [i.address for i in instances] == ["10.0.0.1", "192.0.2.9"]
    first = instances[0]
    assert dict(first.labels) == {"version": "v1", "team": "pay", "zone": "a", "protocol": "grpc"}
    assert (first.locality, first.weight, first.protocol) == ("dc1/a", 5, "GRPC")
    warning_ok = ConsulOptions(
        "consul", "consul", "{service}.service.consul", "TCP", True, "inline"
    )
    assert len(parse_health("web", "dc1", entries, warning_ok)[0]) == 3


def test_bad_entries_are_skipped_with_a_problem() -> None:
    instances, problems = parse_health(
        "web", "dc1", [entry("db.example.com"), entry(port=0), "junk", {"Service": None}], OPTIONS
    )
    assert instances == []
    assert len(problems) == 4
    assert "is not an IP" in problems[0].message


def test_services_use_the_common_port_and_keep_others() -> None:
    instances, _ = parse_health(
        "web",
        "dc1",
        [
            entry("10.0.0.1", 80),
            entry("10.0.0.2", 80),
            entry("10.0.0.3", 8080),
            entry("10.0.0.3", 8081),
        ],
        OPTIONS,
    )
    (service,) = build_services(OPTIONS, "web", {"dc1": instances})
    assert service.hosts == ("web.service.consul",)
    assert [(p.name, p.number, p.protocol) for p in service.ports] == [("tcp", 80, "TCP")]
    ports = sorted((i.address, i.ports) for i in service.instances)
    assert ports == [
        ("10.0.0.1", ()),
        ("10.0.0.2", ()),
        ("10.0.0.3", (("tcp", 8080),)),
        ("10.0.0.3", (("tcp", 8081),)),
    ]


def test_datacenters_share_a_host_unless_the_template_splits_them() -> None:
    one, _ = parse_health("web", "dc1", [entry("10.0.0.1")], OPTIONS)
    two, _ = parse_health("web", "dc2", [entry("10.0.1.1")], OPTIONS)
    (merged,) = build_services(OPTIONS, "web", {"dc1": one, "dc2": two})
    assert len(merged.instances) == 2
    split = ConsulOptions(
        "consul", "consul", "{service}.service.{datacenter}.consul", "TCP", False, "inline"
    )
    assert [s.name for s in build_services(split, "web", {"dc1": one, "dc2": two})] == [
        "web.service.dc1.consul",
        "web.service.dc2.consul",
    ]


def test_index_rules() -> None:
    assert next_index(0, 15) == 15
    assert next_index(15, 20) == 20
    assert next_index(20, 3) == 0  # went backwards: re-list
    assert next_index(20, 0) == 0


def test_a_default_protocol_is_istios_and_names_a_valid_port() -> None:
    """default_protocol must be a protocol Istio knows (a typo made every service without a
    `protocol` meta invalid, withheld); HTTP_PROXY names its port `http-proxy`, as istiod
    refuses an underscore."""
    from pydantic import ValidationError

    from mcpserver.convert.serviceentry import service_entry
    from mcpserver.convert.validate import validate_service_entry
    from mcpserver.registry.consul.config import ConsulRegistrySettings

    def settings(protocol: str) -> ConsulRegistrySettings:
        return ConsulRegistrySettings.model_validate(
            {"kind": "consul", "name": "consul", "default_protocol": protocol}
        )

    assert settings("grpc").default_protocol == "GRPC"
    with pytest.raises(ValidationError, match="unknown protocol"):
        settings("grcp")
    proxy = ConsulOptions(
        "consul", "consul", "{service}.service.consul", "HTTP_PROXY", False, "inline"
    )
    instances, _ = parse_health("web", "dc1", [entry("10.0.0.1", 80)], proxy)
    (service,) = build_services(proxy, "web", {"dc1": instances})
    assert [(p.name, p.protocol) for p in service.ports] == [("http-proxy", "HTTP_PROXY")]
    assert validate_service_entry(service_entry(service), "consul") == []
