"""Every parser of registry records, config and static files, fed generated input.

Two properties, for each parser:
- it raises only its declared error type (a record is then skipped with a reason, a file or
  a config refused with a message): anything else would crash a watcher or a rebuild;
- whatever it accepts converts, and passes our Istio validation: the pipeline withholds
  nothing it accepted as `invalid` or `conversion` (our validation mirrors istiod's, so a
  record the parser lets through but istiod would reject is a parser bug).

Inputs are both unstructured (any text, any bytes, any JSON) and shaped like the real thing
with every field drawn from edge cases, so the checks run deep past the first `isinstance`.
Inputs that once failed, or sit on an edge, live in corpus/ and run every time.
"""

from __future__ import annotations

import contextlib
import json
import string
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from mcpserver.builder import BuildInputs, build
from mcpserver.convert.validate import PROTOCOLS as ISTIO_PROTOCOLS
from mcpserver.model import Problem, Service
from mcpserver.registry.cloudmap.parser import CloudMapOptions
from mcpserver.registry.cloudmap.parser import RecordError as CloudMapRecordError
from mcpserver.registry.cloudmap.parser import ServiceKey as CloudMapKey
from mcpserver.registry.cloudmap.parser import convert as cloudmap_convert
from mcpserver.registry.cloudmap.parser import parse_instance as cloudmap_instance
from mcpserver.registry.consul.parser import ConsulOptions, build_services, parse_health
from mcpserver.registry.dubbo.mapping import DubboOptions
from mcpserver.registry.dubbo.provider import RecordError
from mcpserver.registry.eureka.parser import (
    DocumentError,
    EurekaOptions,
    convert_app,
    merge,
    mirror_of,
    parse_document,
    reconcile_hash,
)
from mcpserver.registry.nacos.parser import NacosOptions, ServiceKey, convert
from mcpserver.registry.nacos.payload import PayloadError, decode
from mcpserver.registry.static.parser import (
    StaticFileError,
    StaticOptions,
    entry_texts,
    parse_static,
)
from mcpserver.registry.view import Status, View
from mcpserver.registry.zookeeper.assembly import (
    EMPTY,
    AppRecord,
    Changes,
    InterfaceRecord,
    assemble,
)
from mcpserver.registry.zookeeper.curator import parse_instance
from mcpserver.registry.zookeeper.dubbo import parse_provider
from mcpserver.settings import ConfigError, load_settings

pytestmark = pytest.mark.unit

CORPUS = Path(__file__).parent / "corpus"
INPUTS = BuildInputs({}, "240.0.0.0/8")
BUGS = ("invalid", "conversion")  # what the pipeline withholds that a parser let through

ZK = DubboOptions(
    registry="zk",
    namespace="dubbo",
    host_template="{interface}",
    application_host_template="{application}.dubbo",
    label_params=("version", "group", "application"),
    endpoints_mode="inline",
)
CONSUL = ConsulOptions("consul", "consul", "{service}.service.consul", "TCP", True, "inline")
NACOS = NacosOptions(
    registry="nacos",
    namespace="mesh",
    host_template="{service}.{group}.{namespace}.nacos",
    host_metadata="istio.hostname",
    default_protocol="http",
    include_unhealthy=False,
    endpoints_mode="inline",
    dubbo=DubboOptions(
        "nacos", "mesh", "{interface}", "{application}.dubbo", ("version", "group"), "inline"
    ),
)
EUREKA = EurekaOptions(
    registry="eureka",
    namespace="eureka",
    host_template="{app}.eureka",
    statuses=frozenset({"UP", "STARTING"}),
    default_protocol="http",
    region="",
    endpoints_mode="inline",
)
CLOUDMAP = CloudMapOptions(
    registry="cloudmap",
    namespace="cloudmap",
    host_template="{service}.{namespace}",
    default_protocol="TCP",
    default_port=80,
    protocol_attribute="protocol",
    port_attribute="port",
    include_unknown=True,
    endpoints_mode="inline",
    region="us-east-1",
)
STATIC = StaticOptions("files", "default", "{name}.{namespace}.svc.mesh", "inline")


def corpus(name: str) -> list[str]:
    lines = (CORPUS / name).read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def served_problems(registry: str, services: list[Service] | tuple[Service, ...]) -> list[Problem]:
    """What the pipeline withholds of these services for a reason a parser should have
    caught (the services are built as one registry's view, as `serve` would)."""
    view = View(registry, tuple(services), synced=True, status=Status.READY)
    return [p for p in build([view], INPUTS).problems if p.reason in BUGS]


# ------------------------------------------------------------------------------ strategies

JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
OCTET = st.integers(0, 300)
IPV4 = st.builds("{}.{}.{}.{}".format, OCTET, OCTET, OCTET, OCTET)
ADDRESSES = st.one_of(
    IPV4,
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True),
    st.text(max_size=12),
)
PORTS = st.one_of(st.integers(-2, 70_000), st.sampled_from([0, 1, 80, 20880, 65535, 65536]))
# names as registries see them: mostly Java-ish identifiers, sometimes anything
NAMES = st.one_of(
    st.from_regex(r"[A-Za-z][A-Za-z0-9_$.-]{0,40}", fullmatch=True),
    st.text(string.printable, max_size=30),
    st.text(max_size=20),
)
VALUES = st.one_of(NAMES, st.integers(-5, 10**6).map(str), st.just(""))
DUBBO_KEYS = st.sampled_from(
    [
        "interface",
        "application",
        "version",
        "group",
        "weight",
        "side",
        "methods",
        "protocol",
        "timestamp",
        "release",
        "dubbo",
        "enabled",
        "disabled",
        "category",
    ]
)


@st.composite
def provider_urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["dubbo", "tri", "grpc", "rest", "http", "DUBBO", ""]) | NAMES)
    host = draw(ADDRESSES)
    if ":" in host and draw(st.booleans()):
        host = f"[{host}]"
    port = draw(PORTS)
    path = draw(NAMES)
    pairs = draw(st.lists(st.tuples(DUBBO_KEYS | NAMES, VALUES), max_size=8))
    query = "&".join(f"{k}={quote(v, safe='') if draw(st.booleans()) else v}" for k, v in pairs)
    url = f"{scheme}://{host}:{port}/{path}" + (f"?{query}" if query else "")
    return quote(url, safe="") if draw(st.booleans()) else url


@st.composite
def curator_instances(draw: st.DrawFn) -> bytes:
    doc: dict[str, Any] = {
        "name": draw(NAMES | JSON),
        "id": draw(NAMES | JSON),
        "address": draw(ADDRESSES | JSON),
        "port": draw(PORTS | JSON),
        "sslPort": draw(st.none() | PORTS),
        "payload": draw(
            st.fixed_dictionaries(
                {"metadata": st.dictionaries(NAMES, VALUES | JSON, max_size=5) | JSON}
            )
            | JSON
        ),
        "serviceType": draw(st.sampled_from(["DYNAMIC", "STATIC", "PERMANENT"]) | JSON),
    }
    for key in draw(st.lists(st.sampled_from(list(doc)), max_size=3)):
        doc.pop(key, None)
    return json.dumps(doc).encode()


@st.composite
def consul_entries(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    tags = draw(st.lists(st.builds("{}={}".format, NAMES, VALUES) | NAMES | JSON, max_size=4))
    service = {
        "ID": draw(NAMES),
        "Service": draw(NAMES),
        "Address": draw(ADDRESSES | st.just("")),
        "Port": draw(PORTS | JSON),
        "Tags": tags,
        "Meta": draw(st.dictionaries(NAMES, VALUES, max_size=4) | JSON),
        "Weights": draw(
            st.fixed_dictionaries({"Passing": st.integers(-2, 300), "Warning": st.integers(-2, 3)})
            | JSON
        ),
        "CreateIndex": draw(st.integers(0, 10**9) | st.none()),
    }
    node = {"Address": draw(ADDRESSES), "Datacenter": draw(NAMES | st.none())}
    status = st.sampled_from(["passing", "warning", "critical", "maintenance"]) | JSON
    checks = draw(st.lists(st.fixed_dictionaries({"Status": status}) | JSON, max_size=3))
    return {"Service": service, "Node": node, "Checks": checks}


@st.composite
def nacos_hosts(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    meta = draw(
        st.dictionaries(
            st.sampled_from(["protocol", "istio.hostname", "version", "dubbo.endpoints"]) | NAMES,
            VALUES,
            max_size=4,
        )
        | JSON
    )
    return {
        "instanceId": draw(NAMES | JSON),
        "ip": draw(ADDRESSES | JSON),
        "port": draw(PORTS | JSON),
        "weight": draw(st.floats(-1, 1e6) | JSON),
        "healthy": draw(st.booleans() | JSON),
        "enabled": draw(st.booleans() | JSON),
        "clusterName": draw(NAMES | JSON),
        "metadata": meta,
    }


@st.composite
def static_entries(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    entry: dict[str, Any] = {
        "name": draw(NAMES),
        "hosts": draw(st.lists(NAMES, max_size=2)),
        "ports": draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "name": NAMES,
                        "number": PORTS,
                        "protocol": st.sampled_from(["HTTP", "TCP", "GRPC", "http", "bogus"]),
                    }
                ),
                max_size=3,
            )
        ),
        "instances": draw(
            st.lists(
                st.fixed_dictionaries(
                    {"address": ADDRESSES},
                    optional={
                        "labels": st.dictionaries(NAMES, VALUES, max_size=3),
                        "weight": st.integers(-1, 2**32),
                        "ports": st.dictionaries(NAMES, PORTS, max_size=2),
                        "locality": NAMES,
                    },
                ),
                max_size=3,
            )
        ),
    }
    for key in draw(st.lists(st.sampled_from(list(entry)), max_size=2)):
        entry.pop(key, None)
    return entry


# ------------------------------------------------------------------------------ Dubbo URLs


@pytest.mark.parametrize("name", corpus("dubbo_urls.txt"))
def test_dubbo_corpus(name: str) -> None:
    check_providers([name])


@given(st.text(max_size=200) | provider_urls())
@example("dubbo%3A%2F%2F10.0.0.1%3A20880%2Fa.B%3Finterface%3D%25")
def test_dubbo_urls_raise_only_record_errors(name: str) -> None:
    with contextlib.suppress(RecordError):
        parse_provider(name)


@given(st.lists(provider_urls(), min_size=1, max_size=4), NAMES)
def test_dubbo_providers_that_parse_are_served_valid(names: list[str], directory: str) -> None:
    check_providers(names, directory)


def check_providers(names: list[str], directory: str = "com.example.Svc") -> None:
    record = InterfaceRecord(tuple(sorted(set(names))), ctime=1_700_000_000_000)
    assembly = assemble(ZK, Changes(interfaces={("/dubbo", directory): record}), EMPTY, False)
    assert not served_problems("zk", assembly.services)


# -------------------------------------------------------------------------- Curator JSON


@given(st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()) | curator_instances())
def test_curator_instances_raise_only_record_errors(data: bytes) -> None:
    with contextlib.suppress(RecordError):
        parse_instance(data, "http")


@given(st.lists(st.tuples(NAMES, curator_instances()), min_size=1, max_size=4), NAMES)
@example(  # the port and the sslPort on one number (found by this test)
    [("A", b'{"name": "A", "id": "A", "address": "0.0.0.0", "port": 1, "sslPort": 1}')], "C"
)
def test_curator_instances_that_parse_are_served_valid(
    instances: list[tuple[str, bytes]], application: str
) -> None:
    record = AppRecord(tuple(sorted(dict(instances).items())), ctime=1_700_000_000_000)
    assembly = assemble(ZK, Changes(apps={("/services", application): record}), EMPTY, False)
    assert not served_problems("zk", assembly.services)


# ------------------------------------------------------------------------ Consul payloads


@given(NAMES, NAMES, st.lists(consul_entries(), max_size=5))
def test_consul_entries_are_skipped_or_served_valid(
    name: str, datacenter: str, entries: list[Any]
) -> None:
    instances, problems = parse_health(name, datacenter, entries, CONSUL)
    assert len(instances) + len(problems) <= len(entries)
    services = build_services(CONSUL, name, {datacenter: instances})
    assert not served_problems("consul", services)


# ------------------------------------------------------------------------- Nacos payloads


@given(st.binary(max_size=300))
def test_nacos_frames_raise_only_payload_errors(data: bytes) -> None:
    with contextlib.suppress(PayloadError):
        decode(data)


@given(NAMES, NAMES, NAMES, st.lists(nacos_hosts(), max_size=5) | JSON)
@example(  # found by the explore profile: a protocol that made port name `tcp-e.`
    "s", "L", "l", [{"ip": "10.0.0.1", "port": 1, "metadata": {"protocol": "e."}}]
)
def test_nacos_services_are_skipped_or_served_valid(
    namespace: str, group: str, name: str, hosts: Any
) -> None:
    key = ServiceKey(namespace, group, name)
    for info in ({"hosts": hosts}, hosts):
        try:
            services, _ = convert(NACOS, key, info)
        except ValueError:  # not a service info at all (the watcher logs the listing)
            continue
        assert not served_problems("nacos", services)


@given(st.lists(nacos_hosts(), min_size=1, max_size=4), NAMES)
def test_dubbo_on_nacos_is_skipped_or_served_valid(hosts: list[Any], interface: str) -> None:
    key = ServiceKey("public", "DEFAULT_GROUP", f"providers:{interface}:1.0.0:")
    services, _ = convert(NACOS, key, {"hosts": hosts})
    assert not served_problems("nacos", services)


# ------------------------------------------------------------------------ Eureka documents


@st.composite
def eureka_instances(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    port = st.fixed_dictionaries(
        {"$": PORTS | JSON, "@enabled": st.sampled_from(["true", "false"])}
    )
    return {
        "instanceId": draw(NAMES | JSON),
        "app": draw(NAMES),
        "ipAddr": draw(ADDRESSES | JSON),
        "hostName": draw(ADDRESSES),
        "status": draw(st.sampled_from(["UP", "DOWN", "STARTING", "OUT_OF_SERVICE"]) | JSON),
        "port": draw(port | JSON),
        "securePort": draw(port | JSON),
        "vipAddress": draw(NAMES | st.builds("{},{}".format, NAMES, NAMES)),
        "metadata": draw(
            st.dictionaries(
                st.sampled_from(["protocol", "weight", "zone", "@class"]) | NAMES,
                VALUES,
                max_size=4,
            )
            | JSON
        ),
        "actionType": draw(st.sampled_from(["ADDED", "MODIFIED", "DELETED"]) | JSON),
    }


@st.composite
def eureka_documents(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    apps = draw(
        st.lists(
            st.fixed_dictionaries(
                {"name": NAMES, "instance": st.lists(eureka_instances(), max_size=3)}
            )
            | JSON,
            max_size=3,
        )
    )
    return {"applications": {"apps__hashcode": draw(NAMES), "application": apps}}


@given(eureka_documents(), eureka_documents())
@example(  # found by the explore profile: port and securePort both 1 made one port twice
    {"applications": {"apps__hashcode": "", "application": []}},
    {
        "applications": {
            "application": [
                {
                    "name": "A",
                    "instance": [
                        {
                            "instanceId": "A",
                            "app": "A",
                            "ipAddr": "10.0.0.1",
                            "status": "UP",
                            "port": {"$": 1, "@enabled": "true"},
                            "securePort": {"$": 1, "@enabled": "true"},
                            "actionType": "ADDED",
                        }
                    ],
                }
            ]
        }
    },
)
def test_eureka_documents_are_skipped_or_served_valid(full: Any, delta: Any) -> None:
    try:
        document = parse_document(full, "eureka")
    except DocumentError:
        return
    mirror = mirror_of(document)
    with contextlib.suppress(DocumentError):
        merge(mirror, parse_document(delta, "eureka"))
    reconcile_hash(mirror)
    for app, instances in mirror.items():
        services, _ = convert_app(EUREKA, app, instances.values())
        assert not served_problems("eureka", services)


# ------------------------------------------------------------------------ Cloud Map answers

CLOUDMAP_ATTRIBUTES = st.sampled_from(
    [
        "AWS_INSTANCE_IPV4",
        "AWS_INSTANCE_IPV6",
        "AWS_INSTANCE_CNAME",
        "AWS_INSTANCE_PORT",
        "AVAILABILITY_ZONE",
        "REGION",
        "AWS_INIT_HEALTH_STATUS",
        "protocol",
        "port",
        "version",
    ]
)
CLOUDMAP_VALUES = st.one_of(
    VALUES,
    ADDRESSES,
    PORTS.map(str),
    st.sampled_from([*sorted(ISTIO_PROTOCOLS), "HTTP", "http_proxy", "thrift", " 80 ", "٣"]),
    st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}\.?", fullmatch=True),  # CNAMEs, numeric ones too
)


@st.composite
def cloudmap_instances(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    attributes = draw(
        st.dictionaries(CLOUDMAP_ATTRIBUTES | NAMES, CLOUDMAP_VALUES, max_size=6) | JSON
    )
    instance = {
        "InstanceId": draw(NAMES | JSON),
        "NamespaceName": draw(NAMES),
        "ServiceName": draw(NAMES),
        "HealthStatus": draw(st.sampled_from(["HEALTHY", "UNHEALTHY", "UNKNOWN"]) | JSON),
        "Attributes": attributes,
    }
    for key in draw(st.lists(st.sampled_from(list(instance)), max_size=2)):
        instance.pop(key, None)
    return instance


@st.composite
def cloudmap_options(draw: st.DrawFn) -> CloudMapOptions:
    return CloudMapOptions(
        registry="cloudmap",
        namespace="cloudmap",
        host_template=draw(st.sampled_from(["{service}.{namespace}", "{service}.svc.mesh"])),
        default_protocol=draw(st.sampled_from(sorted(ISTIO_PROTOCOLS))).upper(),
        default_port=draw(st.integers(1, 65535)),
        protocol_attribute="protocol",
        port_attribute=draw(st.sampled_from(["port", ""])),
        include_unknown=draw(st.booleans()),
        endpoints_mode=draw(st.sampled_from(["inline", "workloadentry"])),
        region=draw(st.sampled_from(["", "us-east-1"])),
    )


@pytest.mark.parametrize("line", corpus("cloudmap_instances.jsonl"))
def test_cloudmap_corpus(line: str) -> None:
    case = json.loads(line)
    check_cloudmap(CLOUDMAP, case["namespace"], case["service"], case["instances"])


@given(cloudmap_instances() | JSON, cloudmap_options())
def test_cloudmap_instances_raise_only_record_errors(raw: Any, options: CloudMapOptions) -> None:
    with contextlib.suppress(CloudMapRecordError):
        cloudmap_instance(raw, options)


@given(cloudmap_options(), NAMES, NAMES, st.lists(cloudmap_instances(), max_size=5))
def test_cloudmap_services_are_skipped_or_served_valid(
    options: CloudMapOptions, namespace: str, service: str, instances: list[Any]
) -> None:
    check_cloudmap(options, namespace, service, instances)


def check_cloudmap(
    options: CloudMapOptions, namespace: str, service: str, instances: list[Any]
) -> None:
    """A DiscoverInstances answer: each entry served or skipped with a problem (the
    conversion itself raises nothing), and what is served passes our Istio validation."""
    key = CloudMapKey(namespace, service)
    services, problems = cloudmap_convert(options, key, instances, None)
    assert len(problems) <= len(instances)
    assert len(services) <= 1
    assert not served_problems("cloudmap", services)


# ---------------------------------------------------------------------------- static files


@given(st.text(max_size=300) | st.lists(static_entries(), max_size=4).map(str))
def test_static_text_raises_only_static_file_errors(text: str) -> None:
    with contextlib.suppress(StaticFileError):
        parse_static(text, STATIC)


@given(st.lists(static_entries(), max_size=4), st.booleans())
def test_static_entries_are_served_or_reported(entries: list[Any], as_json: bool) -> None:
    """The static file is written by people, and its entries are validated where every
    service is, by the pipeline (check-config then names the entry: `locations`); so here
    every entry is served or reported with its place in the file, and none fails to convert."""
    document = {"services": entries}
    text = json.dumps(document) if as_json else yaml.safe_dump(document)
    parsed = parse_static(text, STATIC)
    view = View("files", parsed.services, synced=True, status=Status.READY)
    problems = build([view], INPUTS).problems
    assert not [p for p in problems if p.reason == "conversion"]
    withheld = {p.subject.removeprefix("ServiceEntry ") for p in problems if p.reason == "invalid"}
    assert withheld <= parsed.locations.keys()
    reported = {p.subject.split(" ")[0] for p in parsed.problems}
    assert len(parsed.services) + len(reported) == len(entries)


# --------------------------------------------------------------------------------- config


@given(st.text(max_size=300) | JSON.map(yaml.safe_dump))
def test_config_files_raise_only_config_errors(tmp_path_factory: Any, text: str) -> None:
    path = tmp_path_factory.mktemp("config") / "mcpserver.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with contextlib.suppress(ConfigError):
        load_settings(path, {})


def whole(text: str) -> tuple[Any, ...]:
    """What the static file means parsed at once (the reference for the entry-by-entry
    parse): YAML's own reading of the whole text, handed over as JSON."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return ("error",)
    try:
        parsed = parse_static(json.dumps(data, default=str), STATIC)
    except StaticFileError as err:
        return ("error", str(err))
    return parsed.services, parsed.problems, parsed.locations


@given(
    st.lists(static_entries(), max_size=5),
    st.sampled_from([2, 4]),
    st.booleans(),
    st.booleans(),
    st.lists(st.sampled_from(["# a comment\n", "\n", "  # indented\n"]), max_size=3),
)
def test_entries_parsed_one_by_one_mean_what_the_whole_file_means(
    entries: list[Any], indent: int, flow: bool, nested: bool, noise: list[str]
) -> None:
    """A static file is parsed entry by entry when it has the plain shape, so an edit
    parses one entry; whatever a generator or a person writes, that must read exactly as
    the whole file does: the same services, problems and places in the file."""
    body = (
        yaml.safe_dump(entries, default_flow_style=flow, indent=indent, width=60)
        if entries
        else "[]\n"
    )
    if nested and entries and not flow:  # items indented under the key, as people write
        body = "".join(f"  {line}" if line.strip() else line for line in body.splitlines(True))
    text = "services:\n" + "".join(
        line + (noise[i % len(noise)] if noise and i % 3 == 0 else "")
        for i, line in enumerate(body.splitlines(keepends=True))
    )
    reference = whole(text)
    if reference[0] == "error":
        with contextlib.suppress(StaticFileError):
            parse_static(text, STATIC)
        return
    parsed = parse_static(text, STATIC)
    assert (parsed.services, parsed.problems, parsed.locations) == reference
    if entries and not flow:  # the plain shape: read entry by entry, not whole
        assert entry_texts(text) is not None, text
    # and again, reusing everything: the same again, every Service the same object
    again = parse_static(text, STATIC, parsed.known, parsed.texts)
    assert all(a is b for a, b in zip(again.services, parsed.services, strict=True))
