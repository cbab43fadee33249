"""The ZooKeeper assembly without ZooKeeper: raw records in, Services and Problems out."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest

from mcpserver.model import Service
from mcpserver.registry.zookeeper import assembly as assembly_module
from mcpserver.registry.zookeeper.assembly import (
    EMPTY,
    AppRecord,
    Assembly,
    Changes,
    InterfaceRecord,
    Key,
    MappingRecord,
    assemble,
)
from mcpserver.registry.zookeeper.dubbo import Provider, parse_provider
from mcpserver.registry.zookeeper.services import ZkOptions

pytestmark = pytest.mark.unit

OPTIONS = ZkOptions(
    registry="zk",
    namespace="dubbo",
    host_template="{interface}",
    application_host_template="{application}.dubbo",
    label_params=("version", "group", "application"),
    endpoints_mode="inline",
)
DEMO = "org.apache.dubbo.demo.DemoService"
DEMO_HOST = "org.apache.dubbo.demo.demoservice"
DEMO_KEY: Key = ("/dubbo", DEMO)
CTIME = 1_700_000_000_000


def provider(address: str, interface: str = DEMO, port: int = 20880, **params: str) -> str:
    """A provider node name, URL-encoded as Dubbo writes it."""
    query = {"interface": interface, "side": "provider", "application": "demo", **params}
    url = f"dubbo://{address}:{port}/{interface}?" + "&".join(f"{k}={v}" for k, v in query.items())
    return quote(url, safe="")


def providers(*names: str, ctime: int = CTIME) -> InterfaceRecord:
    return InterfaceRecord(tuple(sorted(names)), ctime)


def instance(
    ident: str, address: str, app: str = "greeter", port: int = 20880
) -> tuple[str, bytes]:
    endpoints = json.dumps([{"protocol": "dubbo", "port": port}])
    doc = {
        "name": app,
        "id": ident,
        "address": address,
        "port": port,
        "payload": {"metadata": {"dubbo.endpoints": endpoints}},
    }
    return ident, json.dumps(doc).encode()


def by_name(result: Assembly) -> dict[str, Service]:
    return {s.name: s for s in result.services}


def addresses(result: Assembly, name: str) -> list[str]:
    return [i.address for i in by_name(result)[name].instances]


def interfaces(**records: Any) -> Changes:
    """Changes of Dubbo interfaces under /dubbo, by interface name."""
    return Changes(interfaces={("/dubbo", k.replace("_", ".")): v for k, v in records.items()})


# ------------------------------------------------------ interface-level providers


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param(
            [providers(provider("10.0.0.5"))],
            [["10.0.0.5"]],
            id="appears",
        ),
        pytest.param(
            [
                providers(provider("10.0.0.5")),
                providers(provider("10.0.0.5", weight="7"), provider("10.0.0.6")),
            ],
            [["10.0.0.5"], ["10.0.0.5", "10.0.0.6"]],
            id="changes",
        ),
        pytest.param(
            [providers(provider("10.0.0.5")), None],
            [["10.0.0.5"], None],
            id="interface-node-deleted",
        ),
        pytest.param(
            [providers(provider("10.0.0.5")), InterfaceRecord((), 0)],
            [["10.0.0.5"], None],
            id="providers-node-vanished",
        ),
        pytest.param(
            [providers(provider("10.0.0.5")), providers()],
            [["10.0.0.5"], None],
            id="last-provider-leaves",
        ),
        pytest.param(
            [
                providers(provider("10.0.0.5")),
                InterfaceRecord((), 0),
                providers(provider("10.0.0.7")),
            ],
            [["10.0.0.5"], None, ["10.0.0.7"]],
            id="providers-node-recreated",
        ),
    ],
)
def test_providers_appear_change_and_disappear(
    steps: list[InterfaceRecord | None], expected: list[list[str] | None]
) -> None:
    result = EMPTY
    for record, want in zip(steps, expected, strict=True):
        result = assemble(OPTIONS, Changes(interfaces={DEMO_KEY: record}), result)
        if want is None:
            assert result.services == ()
        else:
            assert addresses(result, DEMO_HOST) == want


def test_provider_fields_become_the_service() -> None:
    record = providers(provider("10.0.0.5", weight="7", version="1.0.0"))
    (service,) = assemble(OPTIONS, Changes(interfaces={DEMO_KEY: record})).services
    assert service.hosts == (DEMO_HOST,)
    assert [(p.name, p.number, p.protocol) for p in service.ports] == [("tcp-dubbo", 20880, "TCP")]
    assert service.instances[0].weight == 7
    assert dict(service.instances[0].labels)["version"] == "1.0.0"
    assert service.create_time == datetime.fromtimestamp(CTIME / 1000, tz=UTC)
    assert service.namespace == "dubbo" and service.registry == "zk"


@pytest.mark.parametrize(
    ("names", "served"),
    [
        ([provider("10.0.0.5")], ["10.0.0.5"]),
        ([provider("10.0.0.5"), provider("10.0.0.6", enabled="false")], ["10.0.0.5"]),
        ([provider("10.0.0.5"), provider("10.0.0.6", disabled="true")], ["10.0.0.5"]),
        ([provider("10.0.0.5"), provider("10.0.0.6", side="consumer")], ["10.0.0.5"]),
        ([provider("10.0.0.6", enabled="false"), provider("10.0.0.7", side="consumer")], None),
    ],
    ids=["enabled", "enabled=false", "disabled=true", "side=consumer", "none-left"],
)
def test_disabled_and_consumer_providers_are_left_out(
    names: list[str], served: list[str] | None
) -> None:
    result = assemble(OPTIONS, Changes(interfaces={DEMO_KEY: providers(*names)}))
    if served is None:
        assert result.services == ()
    else:
        assert addresses(result, DEMO_HOST) == served
    assert result.problems == ()  # left out on purpose: not a problem


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("just-a-name", "not-a-url"),
        (quote("dubbo://not-an-ip:20880/x?side=provider", safe=""), "bad-address"),
        (quote("dubbo://10.0.0.9:99999/x", safe=""), "bad-port"),
        (quote("dubbo://10.0.0.9/x", safe=""), "bad-port"),
        ("x" * 9000, "too-long"),
    ],
)
def test_malformed_provider_is_a_problem_with_its_reason(name: str, reason: str) -> None:
    record = providers(provider("10.0.0.5"), name)
    result = assemble(OPTIONS, Changes(interfaces={DEMO_KEY: record}))
    assert addresses(result, DEMO_HOST) == ["10.0.0.5"]  # the rest flows
    (problem,) = result.problems
    assert problem.reason == reason
    assert problem.registry == "zk"
    assert problem.subject == f"/dubbo/{DEMO}/providers/{name[:200]}"
    assert problem.message.startswith(f"{reason}: ")


def test_a_fixed_record_takes_its_problem_away() -> None:
    bad = "just-a-name"
    first = assemble(OPTIONS, Changes(interfaces={DEMO_KEY: providers(bad)}))
    assert [p.reason for p in first.problems] == ["not-a-url"]
    second = assemble(
        OPTIONS, Changes(interfaces={DEMO_KEY: providers(provider("10.0.0.5"))}), first
    )
    assert second.problems == ()
    third = assemble(OPTIONS, Changes(interfaces={DEMO_KEY: None}), first)
    assert third.problems == ()


def test_group_and_version_template_makes_two_hosts_from_one_interface() -> None:
    options = replace(OPTIONS, host_template="{group}.{version}.{interface}")
    record = providers(
        provider("10.0.0.1", group="gray", version="2"),
        provider("10.0.0.2", group="gray", version="2"),
        provider("10.0.0.3", group="stable", version="1"),
    )
    result = assemble(options, Changes(interfaces={DEMO_KEY: record}))
    assert sorted(by_name(result)) == [f"gray.2.{DEMO_HOST}", f"stable.1.{DEMO_HOST}"]
    assert addresses(result, f"gray.2.{DEMO_HOST}") == ["10.0.0.1", "10.0.0.2"]
    assert addresses(result, f"stable.1.{DEMO_HOST}") == ["10.0.0.3"]


# -------------------------------------------------- Curator and Dubbo 3 mapping


GREETER_KEY: Key = ("/services", "greeter")
GREETER_MAPPING: Key = ("/dubbo", "com.example.Greeter")
GREETER_HOST = "com.example.greeter"


def greeter(*instances: tuple[str, bytes]) -> Changes:
    return Changes(apps={GREETER_KEY: AppRecord(tuple(sorted(instances)), CTIME)})


def test_curator_application_and_mapping_make_the_interface_host() -> None:
    changes = Changes(
        apps={
            GREETER_KEY: AppRecord((instance("a", "10.5.0.1"), instance("b", "10.5.0.2")), CTIME)
        },
        mappings={GREETER_MAPPING: MappingRecord(b"greeter", CTIME)},
    )
    result = assemble(OPTIONS, changes)
    assert sorted(by_name(result)) == [GREETER_HOST, "greeter.dubbo"]
    assert addresses(result, "greeter.dubbo") == ["10.5.0.1", "10.5.0.2"]
    mapped = by_name(result)[GREETER_HOST]
    assert addresses(result, GREETER_HOST) == ["10.5.0.1", "10.5.0.2"]
    assert ("mcpserver.io/dubbo-applications", "greeter.dubbo") in mapped.annotations

    # an instance leaving the application leaves the interface host too
    after = assemble(OPTIONS, greeter(instance("b", "10.5.0.2")), result)
    assert addresses(after, GREETER_HOST) == ["10.5.0.2"]
    # the application gone: so is the mapped host (the mapping names nobody with instances)
    gone = assemble(OPTIONS, Changes(apps={GREETER_KEY: None}), after)
    assert sorted(by_name(gone)) == []


def test_mapping_before_its_application_and_several_applications() -> None:
    first = assemble(
        OPTIONS, Changes(mappings={GREETER_MAPPING: MappingRecord(b" greeter , other,", CTIME)})
    )
    assert first.services == ()  # nobody serves it yet
    second = assemble(OPTIONS, greeter(instance("a", "10.5.0.1")), first)
    assert addresses(second, GREETER_HOST) == ["10.5.0.1"]
    other = Changes(
        apps={("/services", "other"): AppRecord((instance("x", "10.6.0.1", "other"),), 1)}
    )
    third = assemble(OPTIONS, other, second)
    assert addresses(third, GREETER_HOST) == ["10.5.0.1", "10.6.0.1"]


@pytest.mark.parametrize("order", ["interface-first", "mapping-first"])
def test_interface_level_providers_win_over_the_mapping(order: str) -> None:
    direct = Changes(
        interfaces={
            GREETER_MAPPING: providers(provider("10.7.0.1", interface="com.example.Greeter"))
        }
    )
    mapped = Changes(
        apps={GREETER_KEY: AppRecord((instance("a", "10.5.0.1"),), CTIME)},
        mappings={GREETER_MAPPING: MappingRecord(b"greeter", CTIME)},
    )
    steps = [direct, mapped] if order == "interface-first" else [mapped, direct]
    result = EMPTY
    for changes in steps:
        result = assemble(OPTIONS, changes, result)
    assert [s.name for s in result.services].count(GREETER_HOST) == 1
    assert addresses(result, GREETER_HOST) == ["10.7.0.1"]  # the interface-level record
    # the interface-level providers gone: the mapping serves the host again
    result = assemble(OPTIONS, Changes(interfaces={GREETER_MAPPING: providers()}), result)
    assert addresses(result, GREETER_HOST) == ["10.5.0.1"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{nope", "bad-json"),
        (b"\xff\xfe\x00", "not-utf8"),
        (b'{"name": "x", "port": 1}', "bad-json"),
    ],
)
def test_malformed_instance_is_a_problem_with_its_reason(data: bytes, reason: str) -> None:
    result = assemble(OPTIONS, greeter(instance("a", "10.5.0.1"), ("bad", data)))
    assert addresses(result, "greeter.dubbo") == ["10.5.0.1"]
    (problem,) = result.problems
    assert (problem.subject, problem.reason) == ("/services/greeter/bad", reason)


# ----------------------------------------------- work in proportion to the change


def test_only_dirty_keys_are_reassembled(monkeypatch: pytest.MonkeyPatch) -> None:
    other_key: Key = ("/dubbo", "com.example.Other")
    first = assemble(
        OPTIONS,
        Changes(
            interfaces={
                DEMO_KEY: providers(provider("10.0.0.5")),
                other_key: providers(provider("10.9.0.1", interface="com.example.Other")),
            },
            apps={GREETER_KEY: AppRecord((instance("a", "10.5.0.1"),), CTIME)},
            mappings={GREETER_MAPPING: MappingRecord(b"greeter", CTIME)},
        ),
    )
    parsed: list[str] = []

    def counting_parse(name: str) -> Provider:
        parsed.append(name)
        return parse_provider(name)

    monkeypatch.setattr(assembly_module, "parse_provider", counting_parse)
    added = provider("10.0.0.6")
    second = assemble(
        OPTIONS, Changes(interfaces={DEMO_KEY: providers(provider("10.0.0.5"), added)}), first
    )
    assert parsed == [added]  # not the untouched interface, not the unchanged provider
    before, after = by_name(first), by_name(second)
    # untouched keys: the very same objects, not equal copies
    assert after["com.example.other"] is before["com.example.other"]
    assert after["greeter.dubbo"] is before["greeter.dubbo"]
    assert after[GREETER_HOST] is before[GREETER_HOST]
    assert second.interfaces[other_key] is first.interfaces[other_key]
    assert second.apps[GREETER_KEY] is first.apps[GREETER_KEY]
    assert addresses(second, DEMO_HOST) == ["10.0.0.5", "10.0.0.6"]


def test_a_dirty_key_whose_record_did_not_change_is_reused() -> None:
    record = providers(provider("10.0.0.5"))
    first = assemble(OPTIONS, Changes(interfaces={DEMO_KEY: record}))
    again = assemble(
        OPTIONS, Changes(interfaces={DEMO_KEY: providers(provider("10.0.0.5"))}), first
    )
    assert again.interfaces[DEMO_KEY] is first.interfaces[DEMO_KEY]
    assert again.services[0] is first.services[0]


def test_no_changes_is_the_previous_result() -> None:
    first = assemble(OPTIONS, Changes(interfaces={DEMO_KEY: providers(provider("10.0.0.5"))}))
    assert assemble(OPTIONS, Changes(), first) is first


def test_a_mapping_is_rebuilt_only_when_an_application_it_names_changes() -> None:
    first = assemble(
        OPTIONS,
        Changes(
            apps={
                GREETER_KEY: AppRecord((instance("a", "10.5.0.1"),), CTIME),
                ("/services", "other"): AppRecord((instance("x", "10.6.0.1", "other"),), CTIME),
            },
            mappings={GREETER_MAPPING: MappingRecord(b"greeter", CTIME)},
        ),
    )
    unrelated = Changes(
        apps={("/services", "other"): AppRecord((instance("y", "10.6.0.2", "other"),), CTIME)}
    )
    second = assemble(OPTIONS, unrelated, first)
    assert second.mappings[GREETER_MAPPING] is first.mappings[GREETER_MAPPING]
    related = assemble(OPTIONS, greeter(instance("b", "10.5.0.2")), second)
    assert addresses(related, GREETER_HOST) == ["10.5.0.2"]
