"""The ZooKeeper assembly without ZooKeeper: raw records in, Services and Problems out."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest

from mcpserver.model import Service
from mcpserver.registry.dubbo.mapping import DubboOptions, Member
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
