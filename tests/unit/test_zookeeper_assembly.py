"""The ZooKeeper assembly without ZooKeeper: raw records in, Services and Problems out."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest

from mcpserver.model import Service
from mcpserver.registry.dubbo.mapping import DubboOptions, Member, moved
from mcpserver.registry.table import ServiceTable
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

pytestmark = pytest.mark.unit

OPTIONS = DubboOptions(
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


def test_dirty_keys_whose_records_are_unchanged_make_no_new_assembly() -> None:
    """Nothing new to publish: the watcher gets the previous object back."""
    first = assemble(
        OPTIONS,
        Changes(
            interfaces={DEMO_KEY: providers(provider("10.0.0.5"))},
            apps={GREETER_KEY: AppRecord((instance("a", "10.5.0.1"),), CTIME)},
            mappings={GREETER_MAPPING: MappingRecord(b"greeter", CTIME)},
        ),
    )
    again = Changes(
        interfaces={DEMO_KEY: providers(provider("10.0.0.5")), ("/dubbo", "gone"): None},
        apps={GREETER_KEY: AppRecord((instance("a", "10.5.0.1"),), CTIME)},
        mappings={GREETER_MAPPING: MappingRecord(b"greeter", CTIME)},
    )
    assert assemble(OPTIONS, again, first) is first


def test_an_interface_host_made_by_two_interfaces_shadows_its_mapping_until_both_go() -> None:
    """The mapped host yields to interface-level services of the same name, however many
    interfaces make that name (here a template renders two interfaces to one host)."""
    options = replace(OPTIONS, host_template="com.example.greeter")
    one, two = ("/dubbo", "com.example.One"), ("/dubbo", "com.example.Two")
    result = assemble(
        options,
        Changes(
            interfaces={
                one: providers(provider("10.7.0.1", interface="com.example.One")),
                two: providers(provider("10.7.0.2", interface="com.example.Two")),
            },
            apps={GREETER_KEY: AppRecord((instance("a", "10.5.0.1"),), CTIME)},
            mappings={GREETER_MAPPING: MappingRecord(b"greeter", CTIME)},
        ),
    )
    shown = sorted(
        i.address for s in result.services if s.name == GREETER_HOST for i in s.instances
    )
    assert shown == ["10.7.0.1", "10.7.0.2"]  # one service per interface; not the mapping
    result = assemble(options, Changes(interfaces={one: None}), result)
    assert addresses(result, GREETER_HOST) == ["10.7.0.2"]
    result = assemble(options, Changes(interfaces={two: providers()}), result)
    assert addresses(result, GREETER_HOST) == ["10.5.0.1"]  # the mapping serves it again


def test_an_application_in_two_services_roots_maps_from_the_first_root() -> None:
    """Deterministic whatever the order the tree was read in: the first root by path that
    has instances of the application."""
    later: Key = ("/services-b", "greeter")
    earlier: Key = ("/services-a", "greeter")
    mapping = {GREETER_MAPPING: MappingRecord(b"greeter", CTIME)}
    for order in ([later, earlier], [earlier, later]):
        apps = {key: AppRecord((instance("a", f"10.{n}.0.1"),), CTIME) for n, key in
                enumerate(order)}  # fmt: skip
        result = assemble(OPTIONS, Changes(apps=apps, mappings=mapping))
        expected = apps[earlier].instances[0][1]
        assert addresses(result, GREETER_HOST) == [json.loads(expected)["address"]]
    # the first root's application loses its instances: the other one serves the mapping
    result = assemble(OPTIONS, Changes(apps={earlier: AppRecord((), CTIME)}), result)
    assert addresses(result, GREETER_HOST) == [json.loads(apps[later].instances[0][1])["address"]]


def test_a_change_rebuilds_one_key_and_joins_the_rest_unchanged() -> None:
    """The other keys' service tuples are carried over as they are (the full set is a
    concatenation of them, not rebuilt service by service)."""
    keys: list[Key] = [("/dubbo", f"com.example.S{i}") for i in range(50)]
    first = assemble(
        OPTIONS,
        Changes(
            interfaces={
                key: providers(provider(f"10.1.0.{i + 1}", interface=key[1]))
                for i, key in enumerate(keys)
            }
        ),
    )
    second = assemble(
        OPTIONS,
        Changes(interfaces={keys[7]: providers(provider("10.9.9.9", interface=keys[7][1]))}),
        first,
    )
    assert len(second.services) == 50
    for key in keys:
        if key != keys[7]:
            assert second.interface_services[key] is first.interface_services[key]
    assert addresses(second, "com.example.s7") == ["10.9.9.9"]
    assert [s for s in second.services if s.name != "com.example.s7"] == [
        s for s in first.services if s.name != "com.example.s7"
    ]


def test_assembling_change_by_change_equals_assembling_the_end_state_at_once() -> None:
    """Seeded random changes to interfaces, applications and mappings: after every step,
    the incremental assembly (pure, and handed over as the watcher does) holds exactly what
    an assembly of the whole tree as it stands would."""
    rng = random.Random(7)
    iface_keys: list[Key] = [("/dubbo", f"com.example.I{i}") for i in range(6)] + [GREETER_MAPPING]
    app_keys: list[Key] = [("/services", n) for n in ("greeter", "other", "third")]
    app_keys.append(("/services-b", "greeter"))
    mapping_keys: list[Key] = [GREETER_MAPPING, ("/dubbo", "com.example.I1")]
    state = Changes(interfaces={}, apps={}, mappings={})
    pure = handed = EMPTY

    def tables(result: Assembly) -> dict[str, dict[Any, Any]]:
        return {
            f.name: dict(value)
            for f in dataclasses.fields(result)
            if isinstance(value := getattr(result, f.name), Mapping)
        }

    def canonical(result: Assembly) -> list[tuple[object, ...]]:
        return sorted(
            (
                (s.name, tuple(i.address for i in s.instances), s.annotations)
                for s in result.services
            ),
            key=repr,
        )

    table = ServiceTable()
    for _ in range(400):
        changes: dict[str, dict[Key, Any]] = {"interfaces": {}, "apps": {}, "mappings": {}}
        for _ in range(rng.randrange(1, 4)):
            kind = rng.choice(["interfaces", "apps", "mappings"])
            if kind == "interfaces":
                key = rng.choice(iface_keys)
                hosts = rng.sample(range(1, 6), rng.randrange(0, 4))
                names = [provider(f"10.1.{h}.1", interface=key[1]) for h in hosts]
                if rng.random() < 0.2:
                    names.append("garbage")
                changes[kind][key] = rng.choice([None, providers(*names)])
            elif kind == "apps":
                key = rng.choice(app_keys)
                ids = rng.sample(range(1, 5), rng.randrange(0, 3))
                record = AppRecord(
                    tuple(
                        sorted(instance(f"i{n}", f"10.2.{n}.{len(key[0])}", key[1]) for n in ids)
                    ),
                    CTIME,
                )
                changes[kind][key] = rng.choice([None, record])
            else:
                key = rng.choice(mapping_keys)
                data = ",".join(rng.sample(["greeter", "other", "third", "nobody"], 2)).encode()
                changes[kind][key] = rng.choice([None, MappingRecord(data, CTIME)])
        step = Changes(**changes)
        before = pure
        pure = assemble(OPTIONS, step, pure)
        if pure is not before:  # the parts it changed bring the watcher's table up to date
            for part, (services, problems) in pure.parts.items():
                table.replace(part, services, problems, listed=False)
            shown = table.commit()
            assert sorted(map(repr, shown.services)) == sorted(map(repr, pure.services))
            assert sorted(map(repr, shown.problems)) == sorted(map(repr, pure.problems))
        # a pure assembly made from one about to be handed over stays as it was
        extra: Key = ("/dubbo", "com.example.Aside")
        aside_change = providers(provider("10.9.9.9", interface=extra[1]))
        aside = assemble(OPTIONS, Changes(interfaces={extra: aside_change}), handed)
        aside_before = tables(aside)
        handed = assemble(OPTIONS, step, handed, True)
        assert tables(aside) == aside_before
        state = Changes(
            interfaces={
                k: v for k, v in {**state.interfaces, **step.interfaces}.items() if v is not None
            },
            apps={k: v for k, v in {**state.apps, **step.apps}.items() if v is not None},
            mappings={
                k: v for k, v in {**state.mappings, **step.mappings}.items() if v is not None
            },
        )
        whole = assemble(OPTIONS, state)
        assert canonical(pure) == canonical(handed) == canonical(whole)
        assert sorted(pure.problems, key=repr) == sorted(whole.problems, key=repr)
        assert sorted(handed.problems, key=repr) == sorted(whole.problems, key=repr)


def test_keep_when_empty_keeps_a_registered_interface_and_application_without_endpoints() -> None:
    """keep_when_empty: while the interface's providers node (or the application's node) is
    there, a host whose last provider left stays, without endpoints; when the node goes,
    so does the host. Without the setting, the host goes with its last provider."""
    keep = replace(OPTIONS, keep_when_empty=True)
    app_key: Key = ("/services", "greeter")
    full = Changes(
        interfaces={DEMO_KEY: providers(provider("10.0.0.1"))},
        apps={app_key: AppRecord((instance("i1", "10.0.1.1"),), CTIME)},
    )
    drained = Changes(interfaces={DEMO_KEY: providers()}, apps={app_key: AppRecord((), CTIME)})
    gone = Changes(interfaces={DEMO_KEY: None}, apps={app_key: None})
    for options, kept in ((keep, True), (OPTIONS, False)):
        first = assemble(options, full, EMPTY)
        assert sorted(len(s.instances) for s in first.services) == [1, 1]
        empty = assemble(options, drained, first)
        if kept:
            assert sorted(s.name for s in empty.services) == sorted(s.name for s in first.services)
            assert all(not s.instances for s in empty.services)
            before = {s.name: s for s in first.services}
            for service in empty.services:  # hosts, ports and labels as they were
                assert replace(before[service.name], instances=()) == service
            again = assemble(options, drained, empty)
            assert again.services == empty.services
        else:
            assert empty.services == ()
        assert assemble(options, gone, empty).services == ()


def test_one_endpoint_of_two_providers_on_one_address_is_chosen_by_what_it_serves() -> None:
    # two registrations of one address and port (one endpoint): the first by listing
    # order (and by parameters) says version 2.0.0, the other 1.0.0
    first = provider("10.0.0.5", anyhost="true", version="2.0.0")
    other = provider("10.0.0.5", version="1.0.0")
    record = providers(first, other)
    assert record.providers == (first, other)
    result = assemble(OPTIONS, Changes(interfaces={DEMO_KEY: record}))
    (service,) = result.services
    (endpoint,) = service.instances
    assert dict(endpoint.labels)["version"] == "1.0.0"
    # the kept parses hold no parameters: what the endpoint needed of them is in it
    parsed = list(result.interfaces[DEMO_KEY].parsed.values())
    assert len(parsed) == 2 and all(isinstance(m, Member) for m in parsed)
    assert "anyhost" not in repr(parsed)


# ------------------------------- providers that differ only in address, pid, timestamp


def dubbo_provider(address: str, pid: int, timestamp: int) -> str:
    """A provider node name as Dubbo 3.2 writes it (parameters abridged)."""
    url = (
        f"dubbo://{address}:20880/{DEMO}?anyhost=true&application=demo&deprecated=false"
        f"&dubbo=2.0.2&interface={DEMO}&methods=a,b&pid={pid}&release=3.2.10"
        f"&side=provider&timestamp={timestamp}&version=1.0.0"
    )
    return quote(url, safe="")


def test_providers_differing_in_address_pid_and_timestamp_are_parsed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The usual listing (one interface, its processes differing in address, pid and
    timestamp): one parse, the others the first one's Member at their own address; unless
    label_params makes a label of pid, which then tells each provider apart."""
    parsed: list[str] = []

    def counting_parse(name: str) -> Provider:
        parsed.append(name)
        return parse_provider(name)

    monkeypatch.setattr(assembly_module, "parse_provider", counting_parse)
    names = [dubbo_provider(f"10.0.0.{n}", 4000 + n, CTIME + n) for n in range(1, 11)]
    result = assemble(OPTIONS, Changes(interfaces={DEMO_KEY: providers(*names)}))
    assert len(parsed) == 1
    (service,) = result.services
    assert [i.address for i in service.instances] == sorted(f"10.0.0.{n}" for n in range(1, 11))
    assert {i.labels for i in service.instances} == {
        (("application", "demo"), ("version", "1.0.0"))
    }
    parsed.clear()
    labelled = replace(OPTIONS, label_params=("pid",))
    (service,) = assemble(labelled, Changes(interfaces={DEMO_KEY: providers(*names)})).services
    assert len(parsed) == 10
    assert sorted(dict(i.labels)["pid"] for i in service.instances) == [
        str(4000 + n) for n in range(1, 11)
    ]


# what a provider's URL is made of, each the usual (first) or an odd one (second): hosts
# not canonical (or the one the userinfo names), ports, paths (some with a pid field in
# them), values of the per-process fields that end the query or the field early or carry
# escapes; noise put beside those fields, in the URL or in the node name as stored
SHAPE_SCHEMES = (["dubbo", "tri"], ["DUBBO", "x+y"])
SHAPE_HOSTS = (["10.0.0.1", "10.0.0.2", "10.0.0.3", "1.2.3.4", "255.255.255.255", "0.0.0.0"],
               ["010.0.0.1", "10.0.0.256", "1.2.3", "[::1]", "host.example"])  # fmt: skip
SHAPE_PORTS = ([":20880"], [":1", ":65536", ":0020880", "", ":20880@10.0.0.1:7", ":20880#"])
SHAPE_PATHS = (["/com.x.Api"], ["", "/a&pid={v}&b", "/a?pid={v}&b=1", "/%41pi", "/a#pid={v}"])
SHAPE_PARAMS = ["interface=com.x.Api", "side=provider", "side=consumer", "version=1",
                "version={v}", "group=g", "application=demo", "weight=7", "enabled=false",
                "methods=a,b", "a=%C3%A9", "a=x+y", "a=%zz", "release=3.2", "interface="]  # fmt: skip
SHAPE_FIELDS = ["pid={v}", "timestamp={v}", "bind.ip={v}", "bind.port={v}", "pid={v}"]
SHAPE_VALUES = (["4242", "17", "", "10.0.0.9"],
                ["1#x", "1%23x", "1&version=9", "1%26b=2", "1+2", "1%2B2", "1%", "%C3", "%A9",
                 "é", "1\t2", "1%09", "a=b", "1?2", "9" * 8200])  # fmt: skip
SHAPE_NOISE = ["%", "%2", "%25", "%26", "%3D", "%3F", "?", "&", "#", "%23", "=", "+", "+2",
               "%C3", "%A9", "é", "\t", "%0A", " ", "%20", "@", "/", "&version=2", "&pid=5"]  # fmt: skip
STORED_NOISE = ["#", "&", "%", "%23", "%26", "%2B2", "%C3", "é", "\t", " ", "?", "="]
ASPECTS = ["scheme", "host", "port", "path", "fields", "encoding"]


def shaped_listing(rng: random.Random) -> list[str]:
    """Provider node names of one interface made from one drawn URL, as a Dubbo
    interface's processes make them: per provider a host and values of the per-process
    fields. All usual but for one aspect drawn for the listing, if any: odd for the
    listing (scheme, port, path, encoding) or for about half of its providers (host;
    fields: their values, and noise beside them)."""
    odd = rng.choice([None, *ASPECTS])

    def pick(choices: tuple[list[str], list[str]], aspect: str) -> str:
        return rng.choice(choices[aspect == odd and rng.random() < 0.5])

    scheme, port, path = pick(SHAPE_SCHEMES, "scheme"), pick(SHAPE_PORTS, "port"), ""
    while "{v}" not in path and rng.random() < 0.9:  # odd paths with a pid field, mostly
        path = pick(SHAPE_PATHS, "path")
        if odd != "path":
            break
    fields = rng.sample(SHAPE_PARAMS, rng.randrange(0, 5)) + rng.sample(
        SHAPE_FIELDS, rng.randrange(1, 4)
    )
    rng.shuffle(fields)
    query = "&".join(fields)
    encoding = rng.choice(["raw", "partly", "lower"]) if odd == "encoding" else "dubbo"
    names = []
    for _ in range(rng.randrange(2, 9)):
        text = f"{scheme}://{pick(SHAPE_HOSTS, 'host')}{port}{path}?{query}"
        while "{v}" in text:
            text = text.replace("{v}", pick(SHAPE_VALUES, "fields"), 1)
        noise = odd == "fields" and rng.random() < 0.5
        raw = noise and rng.random() < 0.5  # put in the URL, or in the name once encoded
        if noise and not raw:
            text = near_a_field(rng, text, "&", "=", SHAPE_NOISE)
        if encoding == "dubbo":
            name = quote(text, safe="")
        elif encoding == "raw":
            name = text
        elif encoding == "partly":
            name = quote(text, safe=":/?&=")
        else:
            name = re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), quote(text, safe=""))
        names.append(near_a_field(rng, name, "%26", "%3D", STORED_NOISE) if raw else name)
    return names


def near_a_field(rng: random.Random, text: str, amp: str, equals: str, noise: list[str]) -> str:
    """`text` with a piece of noise put before, in or after a per-process field."""
    key = rng.choice(["pid", "timestamp", "bind.ip", "bind.port"])
    field = text.find(f"{amp}{key}{equals}")
    if field < 0:
        at = rng.randrange(len(text) + 1)
    else:
        end = text.find(amp, field + 1)
        value = field + len(amp) + len(key) + len(equals)
        at = rng.choice([field, value, end if end >= 0 else len(text)])
    return text[:at] + rng.choice(noise) + text[at:]


def encoded(url: str) -> str:
    return quote(url, safe="")


API = "dubbo://{}:20880/com.x.Api?side=provider"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        # a raw # in the pid's value: the weight after it is in the fragment
        (encoded(API.format("10.0.0.1") + "&pid=1") + "#" + encoded("&weight=7"),
         encoded(API.format("10.0.0.2") + "&pid=2&weight=7")),
        # a raw & in the pid's value: the weight after it is a field of its own
        (encoded(API.format("10.0.0.1") + "&pid=1") + "&weight=7" + encoded("&version=1"),
         encoded(API.format("10.0.0.2") + "&pid=2&version=1")),
        # a pid field in the path, not in the query: the interface
        (encoded("dubbo://10.0.0.1:20880/a&pid=1&b?side=provider"),
         encoded("dubbo://10.0.0.2:20880/a&pid=2&b?side=provider")),
        # the pid's value goes on past the escape (+2): not the weight's
        (encoded(API.format("10.0.0.1") + "&weight=1&pid=17+2&version=1"),
         encoded(API.format("10.0.0.2") + "&weight=1+2&pid=4242&version=1")),
        # an address not in its canonical form: not an address
        (encoded(API.format("10.0.0.1")), encoded(API.format("10.0.0.256"))),
        # userinfo: the address is the one after the @
        (encoded("dubbo://10.0.0.1:20880@10.0.0.1:7/com.x.Api?side=provider"),
         encoded("dubbo://10.0.0.2:20880@10.0.0.1:7/com.x.Api?side=provider")),
        # a pid that makes the name too long
        (encoded(API.format("10.0.0.1") + "&pid=1"),
         encoded(API.format("10.0.0.2") + "&pid=" + "9" * 8200)),
    ],
    ids=["hash", "ampersand", "path", "escape", "address", "userinfo", "too-long"],
)  # fmt: skip
def test_names_alike_but_for_one_field_boundary_are_parsed_each(
    one: str, other: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pairs of names that a cut of their per-process fields (or of their address) made
    without care would take for one shape: each provider is what its own parse makes."""
    options = replace(OPTIONS, label_params=("version",))
    changes = Changes(interfaces={DEMO_KEY: providers(one, other)})
    fast = assemble(options, changes)
    monkeypatch.setattr(assembly_module, "split_name", lambda name, cut: None)
    slow = assemble(options, changes)
    assert fast.services == slow.services and fast.problems == slow.problems
    assert dict(fast.interfaces[DEMO_KEY].parsed) == dict(slow.interfaces[DEMO_KEY].parsed)


def test_providers_of_one_shape_make_what_their_own_parses_make(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seeded random listings of providers made from one URL (hosts canonical or not,
    per-process fields with values that end the query or the field early or carry escapes,
    noise beside them, every encoding): the assembly that reuses a Member across the names
    of one shape makes exactly the Services, Problems and per-provider results that parsing
    and mapping every name on its own makes, with the per-process fields read as labels or
    not."""
    rng = random.Random(29)
    reused = 0

    def counted(one: Member, address: str) -> Member:
        nonlocal reused
        reused += 1
        return moved(one, address)

    for round_ in range(6000):
        names = shaped_listing(rng)
        labels = rng.choice([(), ("version", "application"), ("pid",), ("timestamp", "version")])
        options = replace(OPTIONS, label_params=labels)
        changes = Changes(interfaces={DEMO_KEY: providers(*set(names))})
        with monkeypatch.context() as patch:
            patch.setattr(assembly_module, "moved", counted)
            fast = assemble(options, changes)
        with monkeypatch.context() as patch:
            patch.setattr(assembly_module, "split_name", lambda name, cut: None)
            slow = assemble(options, changes)
        assert fast.services == slow.services, (round_, names)
        assert fast.problems == slow.problems, (round_, names)
        assert dict(fast.interfaces[DEMO_KEY].parsed) == dict(slow.interfaces[DEMO_KEY].parsed)
    assert reused > 1_500  # the shared path was taken
