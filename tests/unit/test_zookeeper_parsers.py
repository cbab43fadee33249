"""Pure parsing of Dubbo provider URLs and Curator instances, and Service building."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import random
from collections.abc import Callable
from unittest import mock
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pytest
from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2

from mcpserver.convert.serviceentry import convert
from mcpserver.convert.validate import validate_service_entry
from mcpserver.model import Instance, Port
from mcpserver.registry.dubbo import mapping
from mcpserver.registry.dubbo.mapping import (
    DubboOptions,
    Member,
    application_service,
    interface_services,
    mapped_service,
)
from mcpserver.registry.zookeeper import dubbo
from mcpserver.registry.zookeeper.curator import parse_instance
from mcpserver.registry.zookeeper.dubbo import Provider, RecordError, istio_port, parse_provider

pytestmark = pytest.mark.unit

OPTIONS = DubboOptions(
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


def test_two_protocols_on_one_port_number_share_one_service_port() -> None:
    """A ServiceEntry cannot list a port number twice (istiod refuses it whole): the first
    protocol's port carries the other's providers (found by the parsers' property test)."""
    providers = [
        parse_provider(node(f"{proto}://10.0.0.{i}:20880/com.example.Api?application=a"))
        for i, proto in ((1, "dubbo"), (2, "tri"))
    ]
    (service,) = interface_services(OPTIONS, providers, 0)
    assert [(p.name, p.number) for p in service.ports] == [("tcp-dubbo", 20880)]
    assert all(i.ports == () for i in service.instances)
    (entry,) = convert(service)
    assert isinstance(entry.spec, service_entry_pb2.ServiceEntry)
    assert validate_service_entry(entry.spec, entry.namespace) == []


def test_usual_hosts_make_what_every_host_makes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeded random providers of one interface (addresses shared or not, protocols and
    ports mixed or not, labels and weights that decide which of an address's providers is
    its endpoint, in any order): the Services made where the usual shape is taken for
    what it is (one protocol on one port, an address per provider) are exactly those made
    by sorting out endpoints and ports in full."""
    rng = random.Random(11)
    usual = 0
    shortcut = mapping._usual

    def counted(group: list[Member]) -> tuple[tuple[Port, ...], tuple[Instance, ...]] | None:
        nonlocal usual
        found = shortcut(group)
        usual += found is not None
        return found

    for _ in range(3000):
        protocols = rng.choice([["dubbo"], ["dubbo"], ["dubbo", "tri"]])
        numbers = rng.choice([[20880], [20880], [20880, 20881]])
        addresses = [f"10.0.0.{n}" for n in range(1, 12)]
        rng.shuffle(addresses)
        shared = rng.random() < 0.3  # some addresses with more than one provider
        providers = []
        for n in range(rng.randrange(1, 10)):
            address = rng.choice(addresses[:3]) if shared else addresses[n]
            version = rng.choice(["1", "2"])
            url = f"{rng.choice(protocols)}://{address}:{rng.choice(numbers)}/com.example.Api"
            url += f"?application=a&version={version}&weight={rng.choice(['1', '5'])}"
            providers.append(parse_provider(node(url)))
        rng.shuffle(providers)
        with monkeypatch.context() as patch:
            patch.setattr(mapping, "_usual", counted)
            fast = interface_services(OPTIONS, providers, 0)
        with monkeypatch.context() as patch:
            patch.setattr(mapping, "_usual", lambda group: None)
            full = interface_services(OPTIONS, providers, 0)
        assert fast == full, providers
    assert usual > 1_000


def test_a_moved_member_differs_in_its_address_alone() -> None:
    """`moved` builds the Instance field by field: every field but the address is kept,
    whatever fields Instance has (each set here to something other than its default)."""
    values: dict[str, object] = {"address": "10.0.0.1"}
    for f in dataclasses.fields(Instance):
        if f.name != "address":  # model.py's annotations are strings (postponed)
            values[f.name] = {"int": 7, "str": f"{f.name}-x"}.get(str(f.type), ((f.name, "v"),))
    instance = Instance(**values)  # type: ignore[arg-type]
    assert all(getattr(instance, f.name) != f.default for f in dataclasses.fields(Instance))
    one = Member("h.example", instance, "dubbo", 20880, "com.example.Api")
    expected = dataclasses.replace(one, instance=dataclasses.replace(instance, address="10.0.0.2"))
    assert mapping.moved(one, "10.0.0.2") == expected


def test_host_template_with_version_splits_services() -> None:
    options = DubboOptions(
        "zk", "dubbo", "{version}.{interface}", "{application}.dubbo", (), "inline"
    )
    providers = [
        parse_provider(node(f"dubbo://10.0.0.{i}:20880/com.example.Api?version={v}"))
        for i, v in ((1, "1.0"), (2, "2.0"))
    ]
    names = [s.name for s in interface_services(options, providers, 0)]
    assert names == ["1.0.com.example.api", "2.0.com.example.api"]


def test_the_mappings_caches_keep_the_recent_interfaces_only() -> None:
    """What is one interface's own (its create time, label, host) is cached for the recent
    interfaces, not for every one ever mapped (5 MiB at 10k interfaces)."""
    from mcpserver.registry.dubbo import mapping

    for n in range(mapping.PER_INTERFACE + 100):
        url = f"dubbo://10.0.0.1:20880/com.example.Cached{n}?application=app&side=provider"
        interface_services(OPTIONS, [parse_provider(node(url))], 1_700_000_000_000 + n)
    for cache in (mapping.from_millis, mapping._clean_labels, mapping._interface_host):
        assert cache.cache_info().currsize <= mapping.PER_INTERFACE


def test_the_shared_query_fields_stay_few_and_parse_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fields of one provider each (a timestamp) fill the table of shared fields: it starts
    over when full instead of growing, and a provider parses the same either way."""
    monkeypatch.setattr(dubbo, "MAX_SHARED_PAIRS", 8)
    monkeypatch.setattr(dubbo, "_FIELDS", {})
    parsed = []
    for n in range(50):
        url = f"dubbo://10.0.0.1:20880/com.example.S?side=provider&timestamp={n}&version=1"
        parsed.append(parse_provider(node(url)))
        assert len(dubbo._FIELDS) <= 8
    assert [p.lookup["timestamp"] for p in parsed] == [str(n) for n in range(50)]
    assert all(p.lookup["side"] == "provider" and p.lookup["version"] == "1" for p in parsed)


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


# ------------------------------------ the fast path agrees with urllib, exactly


def reference_parse(node_name: str) -> Provider:
    """parse_provider as it was before its fast path: urllib's unquote, urlsplit and
    parse_qsl, with the same checks in the same order."""
    if len(node_name) > 8192:
        raise RecordError("too-long", f"{len(node_name)} characters")
    text = unquote(node_name)
    if "://" not in text:
        raise RecordError("not-a-url", repr(text[:80]))
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as err:
        raise RecordError("bad-port", str(err)) from None
    if not parts.scheme or not parts.hostname:
        raise RecordError("not-a-url", repr(text[:80]))
    if port is None or not 0 < port < 65536:
        raise RecordError("bad-port", f"port {port!r}")
    params = tuple(parse_qsl(parts.query, keep_blank_values=True))
    interface = dict(params).get("interface") or parts.path.strip("/")
    if not interface:
        raise RecordError("no-interface", repr(text[:80]))
    try:
        host = str(ipaddress.ip_address(parts.hostname))
    except ValueError:
        raise RecordError("bad-address", f"{parts.hostname!r} is not an IP address") from None
    return Provider(parts.scheme.lower(), host, port, interface, params)


def scan(provider: Provider, key: str) -> str:
    """Provider.param() as it was: the first parameter by that name."""
    return next((v for k, v in provider.params if k == key), "-")


def outcome(
    parse: Callable[[str], Provider], param: Callable[[Provider, str], str], name: str
) -> tuple[object, ...]:
    try:
        p = parse(name)
    except RecordError as err:
        return ("error", err.reason, str(err))
    keys = {k for k, _ in p.params} | {"interface", "side", "weight", "absent"}
    return ("ok", p, sorted((k, param(p, k)) for k in keys))


SCHEMES = ["dubbo", "tri", "DUBBO", "x+y.z", "1x", ""]
HOSTS = ["10.0.0.1", "1.2.3.4", "010.0.0.1", "10.0.0.256", "255.255.255.255", "0.0.0.0",
         "[::1]", "[2001:db8::5]", "host.example", "1.2.3", ""]  # fmt: skip
PORTS = [":20880", ":1", ":65535", ":0", ":65536", ":99999", ":0020880", ":", "", ":2o"]
PATHS = ["/com.x.Api", "/", "", "/a/b", "/%41pi", "/a?b"]
PARAMS = ["a=b", "a=b=c", "a", "=v", "", "interface=", "interface=a.B", "side=consumer",
          "enabled=false", "disabled=true", "weight=7", "a=%41", "a=x+y", "a=%zz", "a=%C3%A9",
          "version=1", "group=g", "a=1&a=2", "interface=x&interface="]  # fmt: skip
NOISE = ["%", "%2", "%25", "%26", "%3D", "%3F", "%2F", "%3A", "%41", "%7e", "%C3%A9", "%E2%82",
         "%0A", "%09", "%20", "%7F", "+", " ", "\t", "\x01", "\x7f", "\\", "\\x41", "é", "€",
         "@", "#f", "?", "&", "=", ":", "/"]  # fmt: skip


def random_url(rng: random.Random) -> str:
    """scheme://host:port/path?query, each part drawn from values that decide a branch of
    the parse, and now and then a piece of noise inserted anywhere."""
    query = "&".join(rng.choice(PARAMS) for _ in range(rng.randrange(0, 5)))
    text = f"{rng.choice(SCHEMES)}://{rng.choice(HOSTS)}{rng.choice(PORTS)}{rng.choice(PATHS)}" + (
        f"?{query}" if query or rng.random() < 0.5 else ""
    )
    for _ in range(rng.choice([0, 0, 0, 1, 2])):
        at = rng.randrange(len(text) + 1)
        text = text[:at] + rng.choice(NOISE) + text[at:]
    return text


def test_the_fast_path_parses_exactly_as_urllib_does() -> None:
    """Seeded random provider URLs (escapes of every kind, hosts valid and not, ports in
    and out of range, repeated and empty parameters, control characters, fragments), as
    stored (URL-encoded, as Dubbo writes them) and raw: the same Provider or the same
    error, from the fast path and from urllib."""
    rng = random.Random(17)
    fast = 0
    general = dubbo._parse_general
    taken: list[str] = []

    def counted(text: str) -> Provider:
        taken.append(text)
        return general(text)

    with mock.patch.object(dubbo, "_parse_general", counted):
        for _ in range(15_000):
            text = random_url(rng)
            for name in (quote(text, safe=""), text, quote(text, safe=":/?&=")):
                before = len(taken)
                ours = outcome(parse_provider, lambda p, k: p.param(k, "-"), name)
                assert ours == outcome(reference_parse, scan, name), name
                fast += len(taken) == before
    assert fast > 2_000  # the fast path was exercised (its answers and its errors)


def test_the_fast_path_is_taken_for_what_dubbo_writes() -> None:
    """Guard the speed: the usual provider URL does not fall back to urllib."""
    name = node(
        "dubbo://10.0.0.5:20880/org.apache.dubbo.demo.DemoService?anyhost=true"
        "&application=demo&interface=org.apache.dubbo.demo.DemoService&methods=a,b"
        "&side=provider&version=1.0.0"
    )
    with (
        mock.patch.object(dubbo, "_parse_general", side_effect=AssertionError("general path")),
        mock.patch.object(dubbo, "unquote", side_effect=AssertionError("urllib unquote")),
        mock.patch.object(dubbo, "parse_qsl", side_effect=AssertionError("urllib parse_qsl")),
    ):
        provider = parse_provider(name)
    assert provider.host == "10.0.0.5" and provider.param("methods") == "a,b"


def test_providers_share_one_copy_of_their_protocol_and_port() -> None:
    one, other = (
        parse_provider(quote(f"dubbo://10.0.0.{n}:20880/com.example.S?side=provider", safe=""))
        for n in (1, 2)
    )
    assert one.protocol == "dubbo" and one.port == 20880
    assert one.protocol is other.protocol and one.port is other.port
