"""Inline endpoints written and checked from the Instance (mcpserver.convert.inline.py)
say exactly what the WorkloadEntry message path says: the same bytes, the same errors in
the same order, and nothing (None: the caller takes the message path) where they could
differ. And the common shape does take the direct path."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpserver.convert.inline import (
    inline_endpoint_bytes,
    inline_spec,
    plain_endpoints,
    validate_inline_endpoint,
    validate_inline_spec,
)
from mcpserver.convert.serviceentry import (
    inline_endpoint,
    inline_parts,
    join_inline,
    resource_labels,
)
from mcpserver.convert.validate import (
    validate_name,
    validate_service_entry,
    validate_workload_entry,
)
from mcpserver.model import Instance, Port, Service

pytestmark = pytest.mark.unit

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=600)

# edge cases each field can hold, from what registries hand over to what breaks a message
texts = st.one_of(
    st.sampled_from(["", "a", "ab", "v1", "zone", "registry", "Bad Key!", "a/b", "x" * 70]),
    st.sampled_from(["\ud800", "é", "日本", "a\x00b", "-a", "a.b/c_d", "registry/x"]),
    st.text(max_size=6),
)
addresses = st.one_of(
    st.sampled_from(["10.0.0.1", "::1", "fe80::1%eth0", "10.0.0.01", "256.1.1.1", "1.2.3"]),
    st.sampled_from(["", "unix://", "unix:///run/x.sock", "host.example", "\ud800"]),
    st.ip_addresses().map(str),
    texts,
)
numbers = st.one_of(
    st.sampled_from([0, 1, 80, 65535, 65536, 2**32 - 1, 2**32, -1]),
    st.integers(min_value=-(2**33), max_value=2**33),
)
port_names = st.one_of(st.sampled_from(["http", "tcp", "grpc", "Bad_Name", ""]), texts)
instances = st.builds(
    Instance,
    address=addresses,
    ports=st.lists(st.tuples(port_names, numbers), max_size=3).map(tuple),
    labels=st.dictionaries(texts, texts, max_size=4).map(lambda d: tuple(sorted(d.items()))),
    weight=numbers,
    locality=st.one_of(st.just(""), texts),
    network=st.one_of(st.just(""), texts),
    service_account=st.one_of(st.just(""), texts),
)
registries = st.sampled_from(["files", "zk", "", "Bad Registry!", "\ud800"])
service_ports = st.frozensets(port_names, max_size=3)


def message_path(
    instance: Instance, registry: str, names: frozenset[str]
) -> tuple[bytes, list[str]]:
    """What the builder did for every endpoint before: build, serialize, validate."""
    message = inline_endpoint(instance, registry)
    body = message.SerializeToString(deterministic=True)
    return body, validate_workload_entry(message, set(names), allow_fqdn=False)


@PROPERTY
@given(instances, registries, service_ports)
def test_the_direct_path_says_what_the_message_says(
    instance: Instance, registry: str, names: frozenset[str]
) -> None:
    body = inline_endpoint_bytes(instance, registry)
    errors = validate_inline_endpoint(instance, registry, names)
    try:
        want_body, want_errors = message_path(instance, registry, names)
    except (ValueError, TypeError):
        # the message refuses a value (out of range, not UTF-8): the direct path must not
        # write it, so the caller reaches the message path and fails as it always did
        assert body is None
        return
    if body is not None:
        assert body == want_body
    if errors is not None:
        assert errors == want_errors


@PROPERTY
@given(
    st.ip_addresses().map(str),
    st.lists(st.tuples(st.sampled_from(["http", "tcp", "Bad_Name"]), numbers), max_size=2),
    st.dictionaries(
        st.sampled_from(["version", "zone", "app", "registry", "istio.io/rev"]),
        st.sampled_from(["v1", "z1", "a-b", "x.y_z", ""]),
        max_size=3,
    ),
    st.sampled_from([0, 1, 100, 2**32 - 1]),
    st.sampled_from(["", "r1/z1"]),
)
def test_the_common_shape_takes_the_direct_path(
    address: str,
    ports: list[tuple[str, int]],
    labels: dict[str, str],
    weight: int,
    locality: str,
) -> None:
    """An IP address, valid labels, values that fit: written and checked directly, with the
    message's bytes and errors (port errors included)."""
    ports = [(name, number) for name, number in ports if 0 <= number <= 2**32 - 1]
    instance = Instance(
        address, tuple(ports), tuple(sorted(labels.items())), weight, locality, "n1", "sa"
    )
    names = frozenset({"http"})
    body = inline_endpoint_bytes(instance, "files")
    errors = validate_inline_endpoint(instance, "files", names)
    assert (body, errors) == message_path(instance, "files", names)


def test_labels_that_istio_refuses_go_the_message_path() -> None:
    """Their errors' order is the message map's: only the message path says it."""
    instance = Instance("10.0.0.1", labels=(("bad key!", "x"), ("ok", "bad value!")))
    assert validate_inline_endpoint(instance, "files", frozenset()) is None
    assert (
        inline_endpoint_bytes(instance, "files") == message_path(instance, "files", frozenset())[0]
    )


hosts = st.one_of(
    st.sampled_from(["a.mesh", "*.b.mesh", "*", "bad host", "a..b", "x" * 70 + ".mesh", "1.2"]),
    texts,
)
spec_ports = st.builds(
    Port,
    name=port_names,
    number=numbers,
    protocol=st.one_of(
        st.sampled_from(["TCP", "HTTP", "http2", "GRPC", "TLS", "", "bogus"]), texts
    ),
    target_port=st.one_of(st.just(0), numbers),
)
services = st.builds(
    Service,
    registry=registries,
    namespace=st.sampled_from(["ns", "Bad_NS", "", "\ud800"]),
    name=st.sampled_from(["s", "a.b", "Bad Name", "", "\ud800"]),
    hosts=st.lists(hosts, max_size=3).map(tuple),
    ports=st.lists(spec_ports, max_size=3).map(tuple),
    addresses=st.lists(
        st.sampled_from(["240.0.0.7", "10.9.0.0/16", "10.9.0.0/33", "::1", "bad", "a/b/c"]),
        max_size=2,
    ).map(tuple),
    export_to=st.lists(st.sampled_from([".", "*", "~", "ns", "other", "Bad_NS"]), max_size=3).map(
        tuple
    ),
    location=st.sampled_from(["MESH_INTERNAL", "MESH_EXTERNAL", "", "nowhere"]),
    resolution=st.sampled_from(["STATIC", "STATIC", "NONE", "DNS", "DNS_ROUND_ROBIN", "bogus"]),
)


@PROPERTY
@given(services)
def test_the_spec_written_directly_is_the_messages(service: Service) -> None:
    written = inline_spec(service)
    checked = validate_inline_spec(service)
    try:
        bare, head, tail = inline_parts(service)
    except (ValueError, TypeError):
        assert written is None  # the message refuses it: the caller fails as it always did
        return
    if written is not None:
        assert written == (head, tail)
    if checked is not None:
        assert checked == validate_name(service.namespace, service.name) + validate_service_entry(
            bare, service.namespace
        )


def test_a_usual_spec_is_written_and_checked_directly() -> None:
    service = Service(
        "files",
        "bench",
        "svc-1",
        ("svc-1.bench.svc.mesh", "alias.mesh"),
        (Port("http", 8080, "HTTP", 9090), Port("grpc", 9000, "GRPC")),
        addresses=("240.0.0.9",),
        export_to=(".", "other"),
    )
    _, head, tail = inline_parts(service)
    assert inline_spec(service) == (head, tail)
    assert validate_inline_spec(service) == []
    bad = Service("files", "Bad_NS", "s", ("a.mesh", "*"), (Port("x", 1, "TCP"), Port("x", 1)))
    errors = validate_name("Bad_NS", "s") + validate_service_entry(inline_parts(bad)[0], "Bad_NS")
    assert len(errors) >= 4
    assert validate_inline_spec(bad) == errors


plain_instances = st.builds(
    Instance,
    address=st.one_of(
        st.sampled_from(["10.0.0.1", "10.0.0.02", "::1", "", "unix:///x.sock", "a.b", "\ud800"]),
        st.sampled_from(["\uff11.2.3.4", "1.2.3.4\x00", "1.2.3.4%eth0", "fe80::1%eth0", "h" * 130]),
        st.ip_addresses().map(str),
    ),
    labels=st.one_of(
        st.sampled_from([(), (("version", "v1"),), (("version", "v1"), ("zone", "z0"))]),
        st.dictionaries(texts, texts, max_size=3).map(lambda d: tuple(sorted(d.items()))),
    ),
    weight=st.sampled_from([0, 0, 0, 1]),
    locality=st.sampled_from(["", "", "", "r1/z1"]),
)


def endpoint_by_endpoint(
    head: bytes, instances: list[Instance], registry: str, names: frozenset[str]
) -> tuple[bytes, list[str]] | None:
    """What the builder does one endpoint at a time (the direct path, or None where it
    takes the message path), joined as join_inline joins them, without the tail."""
    bodies: list[bytes] = []
    errors: list[str] = []
    for instance in instances:
        body = inline_endpoint_bytes(instance, registry)
        found = validate_inline_endpoint(instance, registry, names)
        if body is None or found is None:
            return None
        bodies.append(body)
        errors += found
    return join_inline(head, bodies, b""), errors


@PROPERTY
@given(st.lists(plain_instances, max_size=6), registries, st.sampled_from([b"", b"\x0a\x03a.b"]))
def test_plain_endpoints_say_what_each_endpoint_says(
    instances: list[Instance], registry: str, head: bytes
) -> None:
    """All at once or one by one: the same bytes and errors in the same order; and
    None only where some endpoint is not plain or leaves the direct path."""
    plain = plain_endpoints(head, instances, registry)
    each = endpoint_by_endpoint(head, instances, registry, frozenset({"http"}))
    if plain is None:
        assert each is None or any(
            i.weight or i.locality or i.ports or i.network or i.service_account for i in instances
        )
        return
    pieces, errors = plain
    assert (b"".join(pieces), errors) == each


def test_a_usual_service_takes_the_plain_path() -> None:
    labels = (("version", "v1"), ("zone", "z0"))
    instances = [Instance(f"10.0.0.{n}", (), labels) for n in range(1, 4)]
    instances.append(Instance("300.0.0.1", (), labels))
    plain = plain_endpoints(b"head", instances, "files")
    assert plain is not None
    assert (b"".join(plain[0]), plain[1]) == endpoint_by_endpoint(
        b"head", instances, "files", frozenset()
    )
    assert plain[1] == ["endpoint address '300.0.0.1' is not a valid IP address"]


def test_resources_carry_their_services_labels_and_the_registrys() -> None:
    """The registry label on every resource, over a service label of the same name; the
    same for every service with the same labels (made once per distinct value)."""
    labelled = Service("files", "ns", "a", ("a.mesh",), (), labels=(("team", "x"),))
    clash = Service("files", "ns", "b", ("b.mesh",), (), labels=(("registry", "z"), ("a", "1")))
    assert resource_labels(labelled) == (("registry", "files"), ("team", "x"))
    assert resource_labels(clash) == (("a", "1"), ("registry", "files"))
    assert resource_labels(Service("zk", "ns", "c", ("c.mesh",), ())) == (("registry", "zk"),)
