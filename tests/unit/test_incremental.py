"""Incremental rebuilds give exactly what a build of everything gives.

The pipeline keeps its merge, VIP claims, conversions and per-kind sets between rebuilds and
touches only what changed (issue 17). These tests drive random sequences of registry changes
(services added, changed, removed, clashing names and hosts across and within registries,
TCP services wanting VIPs, users' own addresses) and compare every incremental result with a
fresh build of the same views: same snapshot version, same bytes, same problems.
"""

from __future__ import annotations

import gc
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from mcpserver.builder import Builder, BuildInputs, build, convert_service
from mcpserver.convert.merge import MergeIndex, merge
from mcpserver.metrics import Metrics
from mcpserver.model import Instance, Port, Service
from mcpserver.registry.base import Registry
from mcpserver.registry.table import LOG_MIN
from mcpserver.registry.view import Status, View
from mcpserver.xds.resources import encode_response, pack, pack_bytes
from mcpserver.xds.snapshot import SetChange, TypeIndex, TypeSet

pytestmark = pytest.mark.unit

CIDR = "240.241.0.0/28"  # 14 addresses for up to 16 names: collisions, probing, exhaustion
T0 = datetime(2024, 1, 1, tzinfo=UTC)
REGISTRIES = ("a", "b", "c")


def random_service(rng: random.Random, registry: str) -> Service:
    name = f"s{rng.randrange(16)}"
    host = f"h{rng.randrange(12)}.mesh"
    hosts = (host,) if rng.random() < 0.8 else (host, f"h{rng.randrange(12)}.mesh")
    tcp = rng.random() < 0.5
    instances = tuple(
        Instance(f"10.0.{rng.randrange(4)}.{j + 1}", labels=(("v", str(rng.randrange(2))),))
        for j in range(rng.randrange(3))
    )
    return Service(
        registry=registry,
        namespace="ns",
        name=name,
        hosts=tuple(dict.fromkeys(hosts)),
        ports=(Port("tcp", 20880, "TCP") if tcp else Port("http", 80, "HTTP"),),
        instances=instances,
        addresses=(f"240.241.0.{rng.randrange(1, 15)}",) if rng.random() < 0.1 else (),
        endpoints_mode="workloadentry" if rng.random() < 0.3 else "inline",
        create_time=T0 + timedelta(seconds=rng.randrange(5)),
    )


def step(rng: random.Random, services: list[Service], registry: str) -> list[Service]:
    """One registry update: a few services added, replaced or removed; the rest kept as the
    very same objects (as registries do)."""
    out = list(services)
    for _ in range(rng.randrange(1, 4)):
        action = rng.random()
        if action < 0.4 or not out:
            out.insert(rng.randrange(len(out) + 1), random_service(rng, registry))
        elif action < 0.7:
            at = rng.randrange(len(out))
            old = out[at]
            out[at] = replace(old, instances=random_service(rng, registry).instances)
        elif action < 0.8:
            at = rng.randrange(len(out))
            out[at] = replace(out[at])  # equal but a new object
        else:
            out.pop(rng.randrange(len(out)))
    return out


def views_of(state: dict[str, list[Service]]) -> list[View]:
    return [View(r, tuple(state[r]), synced=True, status=Status.READY) for r in REGISTRIES]


@pytest.mark.parametrize("policy", ["first", "union"])
@pytest.mark.parametrize("seed", range(6))
def test_incremental_builds_equal_full_builds(policy: str, seed: int) -> None:
    rng = random.Random(seed)
    inputs = BuildInputs({"c": True}, CIDR, policy)
    builder = Builder(inputs)
    state: dict[str, list[Service]] = {r: [] for r in REGISTRIES}
    previous = None
    for _ in range(60):
        registry = rng.choice(REGISTRIES)
        state[registry] = step(rng, state[registry], registry)
        views = views_of(state)
        got = builder.build(views)
        want = build(views, inputs)
        assert got.snapshot.version == want.snapshot.version
        for kind, wanted in want.snapshot.sets.items():
            have = got.snapshot.sets[kind]
            assert [r.name for r in have.resources] == [r.name for r in wanted.resources]
            assert have.blob == wanted.blob
            assert have.version == wanted.version
        assert sorted(map(repr, got.problems)) == sorted(map(repr, want.problems))
        assert got.vips == want.vips
        if previous is not None and got.snapshot is not previous:
            assert got.snapshot.base == previous.version
            for kind, type_set in got.snapshot.sets.items():
                before = {r.name: r.version for r in previous.sets[kind].resources}
                after = {r.name: r.version for r in type_set.resources}
                change = got.snapshot.changes.get(kind, SetChange())
                assert set(change.added) == after.keys() - before.keys()
                assert set(change.removed) == before.keys() - after.keys()
                assert set(change.changed) >= {
                    n for n in before.keys() & after.keys() if before[n] != after[n]
                }
        previous = got.snapshot


@pytest.mark.parametrize("port", [Port("http", 80, "HTTP"), Port("tcp", 20880, "TCP")])
def test_an_unchanged_view_costs_nothing(port: Port) -> None:
    """Also for TCP services, which get a VIP: whether a conversion wanted one is part of
    what makes it reusable."""
    services = [
        Service("a", "ns", f"s{i}", (f"s{i}.mesh",), (port,), (Instance("10.0.0.1"),))
        for i in range(12)
    ]
    builder = Builder(BuildInputs({}, CIDR))
    first = builder.build(views_of({"a": services, "b": [], "c": []}))
    again = builder.build(views_of({"a": services, "b": [], "c": []}))
    assert again.snapshot is first.snapshot
    assert again.encoded == 0
    # equal but new objects (a re-read registry): compared, and nothing converted again
    renewed = builder.build(views_of({"a": [replace(s) for s in services], "b": [], "c": []}))
    assert renewed.snapshot.version == first.snapshot.version
    assert renewed.encoded == 0


@pytest.mark.parametrize("seed", range(10))
def test_merge_index_equals_merge(seed: int) -> None:
    rng = random.Random(seed)
    policy = "union" if seed % 2 else "first"
    index = MergeIndex(policy)
    live: list[tuple[int, Service]] = []
    for _ in range(80):
        if live and rng.random() < 0.4:
            rank, service = live.pop(rng.randrange(len(live)))
        else:
            rank = rng.randrange(3)
            service = random_service(rng, REGISTRIES[rank])
            live.append((rank, service))
        # the registry of `rank` shows these under the key now
        shown = tuple(s for r, s in live if r == rank and s.key == service.key)
        index.put(rank, service.key, shown)
        index.settle()
        ordered = sorted(live, key=lambda c: (c[0], c[1].key, c[1].hosts, repr(c[1])))
        winners, problems = merge(
            [[s for r, s in ordered if r == rank] for rank in range(3)], policy
        )
        assert index.merged == {s.key: s for s in winners}
        assert sorted(map(repr, index.problems())) == sorted(map(repr, problems))


def resource(name: str, version: int) -> object:
    from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2

    spec = service_entry_pb2.ServiceEntry(hosts=[f"{name}.v{version}.mesh"])
    return pack("ServiceEntry", "ns", name, spec, T0)


@pytest.mark.parametrize("seed", range(4))
def test_type_index_equals_a_set_built_whole(seed: int) -> None:
    rng = random.Random(seed)
    index = TypeIndex("ServiceEntry")
    contents: dict[str, object] = {}
    for _ in range(40):
        for _ in range(rng.choice((1, 2, 30))):  # small commits insert, large ones re-sort
            name = f"r{rng.randrange(60)}"
            if rng.random() < 0.3:
                index.remove(f"ns/{name}")
                contents.pop(f"ns/{name}", None)
            else:
                packed = resource(name, rng.randrange(3))
                index.put(packed)  # type: ignore[arg-type]
                contents[f"ns/{name}"] = packed
        got, _ = index.commit()
        want = TypeSet.of("ServiceEntry", contents.values())  # type: ignore[arg-type]
        assert got.version == want.version
        assert got.blob == want.blob
        assert got.resources == want.resources


class _Source(Registry):
    """A registry whose publishes the test drives."""

    async def open(self) -> None:
        pass


def _differing(now: View, earlier: View) -> set[str]:
    """Keys whose Services differ by value between two views (compared whole)."""
    keys = now.by_key.keys() | earlier.by_key.keys()
    return {
        k
        for k in keys
        if sorted(map(repr, now.candidates(k))) != sorted(map(repr, earlier.candidates(k)))
    }


@pytest.mark.parametrize("seed", range(6))
def test_view_changed_since_any_earlier_view_covers_the_difference(seed: int) -> None:
    """Registries replace parts of their table; each flush is one revision. From whichever
    earlier view a reader built last, changed_since names every key that differs, and
    through the log only keys that were touched in between."""
    rng = random.Random(seed)
    source = _Source("r", Metrics())
    parts: dict[int, list[Service]] = {}
    kept: list[View] = [source.view()]
    touched: list[set[str]] = [set()]
    for _ in range(200):
        keys: set[str] = set()
        for _ in range(rng.randrange(4)):
            part = rng.randrange(12)
            old = parts.pop(part, [])
            new = [random_service(rng, "r") for _ in range(rng.randrange(3))]
            if old and rng.random() < 0.3:
                new.append(replace(old[0]))  # equal by value, another object: no change
            if new:
                parts[part] = new
            keys |= {s.key for s in old} | {s.key for s in new}
            source.table.replace(part, new)
        source.flush(synced=True)
        if rng.random() < 0.2:
            source.degrade("flaky")  # status changes keep the services (and revision)
        now = source.view()
        assert sorted(map(repr, now.services)) == sorted(
            repr(s) for ss in parts.values() for s in ss
        )
        touched = [t | keys for t in touched]
        for n in rng.sample(range(len(kept)), min(3, len(kept))):
            earlier = kept[n]
            changed = set(now.changed_since(earlier))
            assert _differing(now, earlier) <= changed
            assert changed <= touched[n] | _differing(now, earlier)
        kept.append(now)
        touched.append(set())


def live_services() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Service))


def test_a_small_registry_under_churn_keeps_few_removed_services_alive() -> None:
    """The table's log names keys, never Services: a registry whose 16 services change one
    at a time keeps no old copy alive (a log of Services kept ~950 here, and the soak's RSS
    grew until its logs were full)."""
    rng = random.Random(7)
    source = _Source("r", Metrics())
    services = [replace(random_service(rng, "r"), name=f"s{i}") for i in range(16)]
    source.publish(services)
    before = live_services()
    for n in range(3000):
        at = n % len(services)
        old = services[at]
        services[at] = replace(old, instances=random_service(rng, "r").instances)
        source.publish(services)
    kept = live_services() - before
    assert kept <= 4 * LOG_MIN, f"{kept} Services alive for a view of {len(services)}"


def test_a_whole_publish_logs_only_the_keys_that_changed() -> None:
    source = _Source("r", Metrics())
    a, b = random_service(random.Random(1), "r"), random_service(random.Random(2), "r")
    source.publish([a])
    first = source.view()
    # the same service again, as another object, and a new one
    source.publish([replace(a), b])
    assert source.view().changed_since(first) == {b.key}
    assert source.view().by_key[a.key] is a  # equal: the table keeps the object it had


def varied_service(rng: random.Random) -> Service:
    """Services with every field the inline path writes, some of them invalid."""

    def instance(j: int) -> Instance:
        address = rng.choice([f"10.1.{j}.{rng.randrange(1, 9)}", "not-an-ip", "::1", "10.0.0.01"])
        return Instance(
            address,
            ports=(("tcp", 20000 + j),)
            if rng.random() < 0.3
            else (("nope", 7),)
            if rng.random() < 0.05
            else (),
            labels=tuple(
                sorted(
                    {"v": str(j % 2), **({"bad key!": "x"} if rng.random() < 0.05 else {})}.items()
                )
            ),
            weight=rng.choice([0, 1, 50]),
            locality=rng.choice(["", "r1/z1"]),
            network=rng.choice(["", "n1"]),
            service_account=rng.choice(["", "spiffe://x/sa"]),
        )

    return Service(
        registry=rng.choice(["a", "b"]),
        namespace=rng.choice(["ns", "Bad_NS"]) if rng.random() < 0.1 else "ns",
        name=f"s{rng.randrange(5)}",
        hosts=tuple(rng.sample(["a.mesh", "b.mesh", "*.c.mesh", "bad host"], rng.randrange(0, 3))),
        ports=(Port("tcp", 20880, "TCP", rng.choice([0, 20881])), Port("http", 80, "HTTP")),
        instances=tuple(instance(j) for j in range(rng.randrange(0, 6))),
        addresses=rng.choice([(), ("240.0.0.7",), ("10.9.0.0/16",)]),
        labels=(("team", "x"),) if rng.random() < 0.5 else (),
        annotations=(("note", "y"),) if rng.random() < 0.3 else (),
        export_to=rng.choice([(), ("*",), (".", "other")]),
        create_time=T0 + timedelta(seconds=rng.randrange(100)),
    )


@pytest.mark.parametrize("seed", range(8))
def test_inline_conversion_equals_converting_the_whole_spec(seed: int) -> None:
    """The endpoint-by-endpoint path (with and without endpoints reused from the last
    conversion) gives the bytes and the errors of converting and checking the whole spec."""
    from mcpserver.builder import _convert_service, convert_service

    rng = random.Random(seed)
    previous = None
    for _ in range(60):
        service = varied_service(rng)
        if previous is not None and rng.random() < 0.5 and previous.service.instances:
            # the same Instance objects, one replaced: the case reuse is for
            kept = list(previous.service.instances)
            kept[rng.randrange(len(kept))] = Instance(f"10.7.0.{rng.randrange(1, 9)}")
            service = replace(previous.service, instances=tuple(kept))
            if rng.random() < 0.3:  # what the endpoints' bytes depend on changes too
                service = replace(service, registry="c", ports=(Port("tcp", 1, "TCP"),))
        vip = rng.choice([None, "240.0.0.9"])
        want = _convert_service(service, vip)
        fresh = convert_service(service, vip)
        reused = convert_service(service, vip, previous=previous)
        for got in (fresh, reused):
            assert [p.framed for p in got.packed] == [p.framed for p in want.packed]
            assert [(p.subject, sorted(p.message.split("; "))) for p in got.problems] == [
                (p.subject, sorted(p.message.split("; "))) for p in want.problems
            ]
        previous = reused


def test_a_spec_past_64_kib_reuses_its_endpoints_as_a_short_one_does() -> None:
    """Thousands of endpoints, lengths past two-byte varints: the endpoints found again in
    the spec's bytes (`endpoint_spans`) are its own, and reusing them gives the bytes of
    converting it afresh."""
    from mcpserver.builder import _convert_service

    instances = tuple(
        Instance(f"10.{n // 250}.{n % 250}.1", labels=(("zone", "z1"),)) for n in range(3000)
    )
    service = Service("a", "ns", "big", ("big.mesh",), (Port("http", 80, "HTTP"),), instances)
    first = convert_service(service)
    assert first.packed and first.body_length > 0xFFFF
    kept = list(instances)
    kept[-1] = Instance("10.99.0.1")
    changed = replace(service, instances=tuple(kept))
    again = convert_service(changed, previous=first)
    want = _convert_service(changed, None)
    assert [p.framed for p in again.packed] == [p.framed for p in want.packed]


def test_a_packed_service_entry_shares_its_services_key() -> None:
    """The resource's name is the Service's own key string, not a copy per resource (10k
    of them at 10k services), also when the ServiceEntry carries a VIP."""
    from mcpserver.builder import _convert_service

    service = Service(
        "a", "ns", "tcp", ("tcp.mesh",), (Port("tcp", 20880, "TCP"),), (Instance("10.0.0.1"),)
    )
    for vip in (None, "240.0.0.9"):
        converted = convert_service(service, vip, wants_vip=vip is not None)
        assert converted.packed[0].name is service.key
        want = _convert_service(service, vip)
        assert [p.framed for p in converted.packed] == [p.framed for p in want.packed]


def test_a_new_set_comes_with_the_responses_streams_asked_its_predecessor_for() -> None:
    index = TypeIndex("ServiceEntry")
    index.put(resource("a", 1))  # type: ignore[arg-type]
    first, _ = index.commit()
    url = "networking.istio.io/v1/ServiceEntry"
    first.response(url)
    index.put(resource("b", 1))  # type: ignore[arg-type]
    second, _ = index.commit()
    assert list(second._responses) == [url]
    assert second.response(url) == encode_response(second.version, url, second.version, second.blob)


def test_a_set_nobody_takes_stops_being_encoded_ahead() -> None:
    """Encoded ahead only under the type URLs streams took one of the last two sets under:
    a set nobody reads any more (the whole set while istiods read shards, after a dump)
    must not cost a join of every resource on each rebuild."""
    index = TypeIndex("ServiceEntry")
    url = "networking.istio.io/v1/ServiceEntry"
    index.put(resource("a", 1))  # type: ignore[arg-type]
    first, _ = index.commit()
    first.response(url)  # a stream took it, then went away
    encoded = []
    for n in range(4):
        index.put(resource(f"n{n}", 1))  # type: ignore[arg-type]
        later, _ = index.commit()
        encoded.append(list(later._responses))
    assert encoded == [[url], [url], [], []]
    # a stream that takes a set again brings it back
    later.response(url)
    index.put(resource("z", 1))  # type: ignore[arg-type]
    again, _ = index.commit()
    assert list(again._responses) == [url]


@pytest.mark.parametrize("seed", range(4))
def test_resources_served_from_responses_keep_their_packed_bytes(seed: int) -> None:
    """Once a set's response is joined, its resources keep their bytes as views of it
    (xds/resources.py, `PackedResource.rehome`): across rebuilds that reuse them (and splice
    endpoints out of them), every resource and every response still holds the bytes a
    fresh build packs, and a response already sent never changes."""
    rng = random.Random(seed)
    inputs = BuildInputs({"c": True}, CIDR, "first")
    builder = Builder(inputs)
    state: dict[str, list[Service]] = {r: [] for r in REGISTRIES}
    url = "networking.istio.io/v1/ServiceEntry"
    sent: list[tuple[TypeSet, bytes]] = []
    for _ in range(40):
        registry = rng.choice(REGISTRIES)
        state[registry] = step(rng, state[registry], registry)
        views = views_of(state)
        have = builder.build(views).snapshot.sets["ServiceEntry"]
        want = build(views, inputs).snapshot.sets["ServiceEntry"]
        payload = have.response(url)  # as a stream takes it: rehomes the resources
        assert payload == encode_response(want.version, url, want.version, want.blob)
        assert [(r.name, r.framed) for r in have.resources] == [
            (r.name, r.framed) for r in want.resources
        ]
        assert all(isinstance(r.piece, memoryview) for r in have.resources)
        sent.append((have, bytes(payload)))
        for type_set, before in sent:
            assert type_set.response(url) == before


def test_the_heap_is_trimmed_for_what_a_first_response_frees_not_for_each_rebuild(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A response re-homes its set's resources (mcpserver/heap.py says why it then trims):
    what it reports freed is the bytes of the resources that still held their own, all of
    them for a cold start's set, only the changed ones on a rebuild."""
    freed: list[int] = []
    monkeypatch.setattr("mcpserver.xds.snapshot.release", freed.append)
    url = "networking.istio.io/v1/ServiceEntry"
    index = TypeIndex("ServiceEntry")
    first = [pack_bytes("ServiceEntry", "ns", f"s{n}", b"x" * n, T0) for n in range(5)]
    for packed in first:
        index.put(packed)
    index.commit()[0].response(url)
    changed = pack_bytes("ServiceEntry", "ns", "s2", b"y", T0)
    index.put(changed)
    index.commit()  # encoded ahead under the URL the first set was taken under
    assert freed == [sum(len(p.framed) for p in first), len(changed.framed)]


def test_services_with_equal_ports_share_one_endpoint_context() -> None:
    """Every inline conversion keeps its (registry, port names); equal ones are one object,
    not one per service (10k services, one port set)."""
    ports = (Port("http", 80, "HTTP"),)
    a, b = (
        convert_service(
            Service(
                registry="a",
                namespace="ns",
                name=name,
                hosts=(f"{name}.mesh",),
                ports=tuple(replace(p) for p in ports),
                instances=(Instance("10.0.0.1"),),
            )
        )
        for name in ("s1", "s2")
    )
    assert a.packed and b.packed
    assert a.endpoint_context == ("a", frozenset({"http"}))
    assert a.endpoint_context is b.endpoint_context
