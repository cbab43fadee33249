"""Benchmark: the ZooKeeper registry alone (no pipeline, no gRPC) against a real ZooKeeper,
each figure beside its baseline from the same run.

The registry is where issue 17's ZooKeeper figures start: a change cannot reach istiod
faster than the registry publishes it, and a cold start cannot beat the registry's first
view. So this measures the registry's own part, from ZooKeeper's ack (or the client's start)
to `Registry.publish()` of a view that holds the write, in this process:

- cold start: `start()` to the first synced view of N interfaces x M providers, beside the
  least work that gets the same ServiceEntries onto the wire (bench/bare.py, the suite's
  baseline): a kazoo walk of the same tree (500 listings in flight, each built into its
  ServiceEntry as it arrives) plus the serialization. Target: within
  1.5x. The registry's time is split into the walk (until the first assembly starts) and the
  assembly (`assemble()` on the loop);
- change latency: one provider added to (then removed from) an interface, one write at a
  time, from the write call to the view published, beside kazoo's own watch latency on the
  same write (a children watch on that providers node, from the write call to its callback).
  Target: p99 within 2x kazoo's p99 + 10 ms. Also reported from the ack;
- churn: provider adds and removals at a fixed rate for a while (each removal takes a
  provider added at least `REMOVE_AFTER` seconds before), written by a process of its own;
  lag = ZooKeeper's ack of a write to the first published view that holds it; then the final
  view must equal ZooKeeper's tree exactly. Target: lag p99 under 1 s, final state exact.
  Beside it, the same kind of churn followed by a bare kazoo watcher (`KazooFollower`: every
  providers node read with a watch, re-read when it fires, nothing else): the floor that
  kazoo's own I/O thread sets on this machine, which the registry cannot go below.

The registry, kazoo's watch of the latency part and the churn baseline run in this process,
the churn writer in another, ZooKeeper in its own JVM (its log not fsynced: see
JAVA_OPTIONS). Times of different processes compare: `time.perf_counter()` is Linux's
CLOCK_MONOTONIC, one clock for the whole machine.

    python -m bench.zookeeper [--interfaces 10000] [--providers 10] [--rounds 3]
        [--samples 100] [--churn-rate 1000] [--churn-seconds 20] [--parts cold,latency,churn]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import multiprocessing
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from kazoo.client import KazooClient

from bench import bare
from bench.workload import address, interface, provider_node, providers_path
from mcpserver.metrics import Metrics
from mcpserver.model import Service
from mcpserver.registry.dubbo.mapping import DubboOptions
from mcpserver.registry.zookeeper import assembly as assembly_module
from mcpserver.registry.zookeeper import watcher as watcher_module
from mcpserver.registry.zookeeper.assembly import EMPTY, Assembly, Changes
from mcpserver.registry.zookeeper.config import ZooKeeperRegistrySettings
from mcpserver.registry.zookeeper.watcher import ZooKeeperRegistry
from testbed.zookeeper import ZooKeeper

ROOT = "/dubbo"
# 110k znodes do not fit the tests' 256 MB heap; the JVM reads _JAVA_OPTIONS after its
# command line, so this overrides the launcher's -Xmx. A 50k-interface root lists more than
# jute's default 1 MB in one reply. No fsync of ZooKeeper's log: on a shared virtual disk an
# fsync took 100-500 ms under churn, which every write (and every read queued behind it)
# then waited for; that is the disk, not the registry, and it hit the baselines alike.
JAVA_OPTIONS = "-Xmx3g -Djute.maxbuffer=67108864 -Dzookeeper.forceSync=no"
WRITE_WINDOW = 500  # transactions in flight while writing the tree
REMOVE_AFTER = 2.0  # churn removes only providers added at least this long before
DEADLINE = 30.0  # seconds a sample or the final state may take before it counts as lost


# --------------------------------------------------------------------------- helpers


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default); NaN when empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(samples: Sequence[float]) -> dict[str, float]:
    """Milliseconds: count, p50, p90, p99, max."""
    return {
        "count": float(len(samples)),
        "p50_ms": percentile(samples, 50) * 1e3,
        "p90_ms": percentile(samples, 90) * 1e3,
        "p99_ms": percentile(samples, 99) * 1e3,
        "max_ms": (max(samples) if samples else math.nan) * 1e3,
    }


def on_done(result: Any, record: Callable[[float, Any], object]) -> None:
    """record(time, value or error) on kazoo's thread the moment ZooKeeper answers."""

    def done(outcome: Any) -> None:
        at = time.perf_counter()
        try:
            value: Any = outcome.get_nowait()
        except Exception as err:  # this call's ZooKeeper error, as a value
            value = err
        record(at, value)

    result.rawlink(done)


def settle(result: Any) -> asyncio.Future[Any]:
    """An asyncio future for a kazoo async result (its value, or its error as a value)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def resolve(value: Any) -> None:
        if not future.done():
            future.set_result(value)

    on_done(result, lambda _at, value: loop.call_soon_threadsafe(resolve, value))
    return future


@contextlib.contextmanager
def zookeeper(workdir: Path) -> Iterator[ZooKeeper]:
    server = ZooKeeper(workdir)
    previous = os.environ.get("_JAVA_OPTIONS")
    os.environ["_JAVA_OPTIONS"] = JAVA_OPTIONS
    try:
        server.start()
    finally:
        if previous is None:
            del os.environ["_JAVA_OPTIONS"]
        else:
            os.environ["_JAVA_OPTIONS"] = previous
    try:
        yield server
    finally:
        server.stop()


def connect(hosts: str) -> KazooClient:
    client = KazooClient(hosts=hosts, timeout=30)
    client.start(30)
    return client


# ------------------------------------------------------------------------- the tree


async def populate(client: KazooClient, interfaces: int, providers: int) -> None:
    """One transaction per interface, a window of them in flight (one round trip at a time
    would take minutes at 10k)."""
    client.ensure_path(ROOT)
    for first in range(0, interfaces, WRITE_WINDOW):
        pending = []
        for i in range(first, min(first + WRITE_WINDOW, interfaces)):
            transaction = client.transaction()
            transaction.create(f"{ROOT}/{interface(i)}")
            transaction.create(providers_path(ROOT, i))
            for j in range(providers):
                transaction.create(provider_node(ROOT, i, address(i, j)))
            pending.append(settle(transaction.commit_async()))
        for outcome in await asyncio.gather(*pending):
            failed = [o for o in outcome if isinstance(o, Exception)]
            if isinstance(outcome, Exception) or failed:
                raise RuntimeError(f"writing the tree failed: {outcome!r}")


def populate_curator(client: KazooClient, apps: int, instances: int) -> None:
    """Curator/Spring Cloud layout: /services/<app>/<id> with JSON instance data."""
    client.ensure_path("/services")
    for i in range(apps):
        transaction = client.transaction()
        transaction.create(f"/services/app-{i}")
        for j in range(instances):
            data = {
                "name": f"app-{i}",
                "id": str(j),
                "address": address(i, j, 12),
                "port": 8080,
                "payload": {"metadata": {"zone": "z1"}},
            }
            transaction.create(f"/services/app-{i}/{j}", json.dumps(data).encode())
        transaction.commit()


async def zookeeper_state(client: KazooClient) -> dict[str, frozenset[str]]:
    """host -> provider addresses under ROOT as ZooKeeper holds them now."""
    names = await settle(client.get_children_async(ROOT))
    reads = [settle(client.get_children_async(f"{ROOT}/{n}/providers")) for n in names]
    state: dict[str, frozenset[str]] = {}
    for name, children in zip(names, await asyncio.gather(*reads), strict=True):
        if isinstance(children, Exception):
            raise children
        hosts = frozenset(unquote(c).split("://", 1)[1].split(":", 1)[0] for c in children)
        if hosts:
            state[name.lower()] = hosts
    return state


def view_state(services: Sequence[Service]) -> dict[str, frozenset[str]]:
    return {s.name: frozenset(i.address for i in s.instances) for s in services}


# --------------------------------------------------------------------- the registry


@dataclass
class Running:
    """Our registry, started, with a hook on every view it publishes."""

    registry: ZooKeeperRegistry
    on_publish: list[Callable[[float], None]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # seconds of each assemble()
    # interfaces assembled since the last published view: the only ones a view can have
    # changed (checking every interface with a write in flight at each view would make
    # the benchmark's own cost grow with the lag it measures)
    touched: set[str] = field(default_factory=set)

    def holds(self, iface: str, host: str, present: bool) -> bool:
        """Whether the last published view has (or lacks) `host` among `iface`'s instances.
        Looks up the one interface in the registry's assembly: a scan of every service per
        published view would be the benchmark's own O(all) cost."""
        result = self.registry._assembly.interfaces.get((ROOT, iface))
        found = result is not None and any(
            i.address == host for s in result.services for i in s.instances
        )
        return found == present


async def start_registry(hosts: str, services_roots: list[str]) -> tuple[Running, float]:
    """Start a registry; return it and the seconds from start() to its first synced view."""
    settings = ZooKeeperRegistrySettings(
        kind="zookeeper",
        name="bench",
        hosts=hosts,
        roots=[ROOT],
        services_roots=services_roots,
        namespace="dubbo",
    )
    registry = ZooKeeperRegistry(settings, Metrics(), {})
    running = Running(registry)
    synced = asyncio.Event()

    def changed() -> None:
        now = time.perf_counter()
        if registry.view().synced:
            synced.set()
        for hook in running.on_publish:
            hook(now)

    started = time.perf_counter()
    await registry.start(changed)
    await asyncio.wait_for(synced.wait(), 600)
    return running, time.perf_counter() - started


@contextlib.contextmanager
def instrumented(times: list[float], touched: set[str]) -> Iterator[None]:
    """Time every assemble() the watcher makes (on the loop) and note the interfaces it
    assembled. The watcher looks `assemble` up in its module at each call (the crash test
    patches it the same way)."""
    real = assembly_module.assemble

    def timed(
        options: DubboOptions, changes: Changes, previous: Assembly = EMPTY, handover: bool = False
    ) -> Assembly:
        began = time.perf_counter()
        try:
            return real(options, changes, previous, handover)
        finally:
            times.append(time.perf_counter() - began)
            touched.update(key[1] for key in changes.interfaces)

    namespace = vars(watcher_module)
    namespace["assemble"] = timed
    try:
        yield
    finally:
        namespace["assemble"] = real


# ----------------------------------------------------------------------- cold start


async def cold_start(hosts: str, rounds: int, services_roots: list[str]) -> dict[str, Any]:
    """Baseline and ours, alternately, `rounds` times; medians."""
    base: list[dict[str, float]] = []
    ours: list[dict[str, float]] = []
    for _ in range(rounds):
        base.append(await asyncio.to_thread(bare.measure, "zk", hosts, ROOT, "bench"))
        times: list[float] = []
        with instrumented(times, set()):
            running, total = await start_registry(hosts, services_roots)
        services = len(running.registry.view().services)
        await running.registry.stop()
        ours.append(
            {
                "total": total,
                "assemble": sum(times),
                "walk": total - sum(times),
                "services": float(services),
            }
        )
        print(
            f"  cold start: ours {total:.2f}s (assemble {sum(times):.2f}s); baseline "
            f"walk {base[-1]['walk']:.2f}s + build {base[-1]['work'] - base[-1]['walk']:.2f}s"
        )
    med = {k: percentile([o[k] for o in ours], 50) for k in ours[0]}
    walk = percentile([b["walk"] for b in base], 50)
    work = percentile([b["work"] for b in base], 50)
    return {
        "ours_s": med,
        "baseline_s": {"walk": walk, "bare_build": work - walk, "total": work},
        "ratio": med["total"] / work,
        "walk_ratio": med["walk"] / walk,
        "target": {
            "rule": "ours <= 1.5 x (async walk + bare build)",
            "met": med["total"] <= 1.5 * work,
        },
    }


# --------------------------------------------------------------------- change latency


@dataclass(slots=True)
class Sample:
    kind: str
    issued: float = math.nan
    acked: float = math.nan
    fired: float = math.nan
    published: float = math.nan


async def latency(running: Running, hosts: str, samples: int, interfaces: int) -> dict[str, Any]:
    writer, watcher = connect(hosts), connect(hosts)
    loop = asyncio.get_running_loop()
    rng = random.Random(17)
    done: list[Sample] = []
    try:
        for n in range(samples):
            service = rng.randrange(interfaces)
            host = address(1_000_000 + n, 0, 11)
            path = providers_path(ROOT, service)
            node = provider_node(ROOT, service, host)
            for kind in ("add", "remove"):
                sample = Sample(kind)
                seen = asyncio.Event()
                fired = asyncio.Event()

                def watch(_event: object, s: Sample = sample, f: asyncio.Event = fired) -> None:
                    s.fired = time.perf_counter()
                    loop.call_soon_threadsafe(f.set)

                def published(
                    at: float,
                    s: Sample = sample,
                    e: asyncio.Event = seen,
                    i: str = interface(service),
                    h: str = host,
                ) -> None:
                    if math.isnan(s.published) and running.holds(i, h, s.kind == "add"):
                        s.published = at
                        e.set()

                def acked(at: float, _value: object, s: Sample = sample) -> None:
                    s.acked = at

                await settle(watcher.get_children_async(path, watch=watch))
                running.on_publish.append(published)
                sample.issued = time.perf_counter()
                write = writer.create_async(node) if kind == "add" else writer.delete_async(node)
                on_done(write, acked)
                await asyncio.wait_for(asyncio.gather(seen.wait(), fired.wait()), DEADLINE)
                running.on_publish.remove(published)
                done.append(sample)
    finally:
        for client in (writer, watcher):
            client.stop()
            client.close()
    ours = [s.published - s.issued for s in done]
    kazoo = [s.fired - s.issued for s in done]
    limit = 2 * percentile(kazoo, 99) + 0.010
    return {
        "samples": len(done),
        "ours_from_write": summary(ours),
        "ours_from_ack": summary([s.published - s.acked for s in done]),
        "kazoo_watch_from_write": summary(kazoo),
        "write_rtt": summary([s.acked - s.issued for s in done]),
        "target": {
            "rule": "ours p99 <= 2 x kazoo watch p99 + 10 ms (from the write call)",
            "limit_ms": limit * 1e3,
            "met": percentile(ours, 99) <= limit,
        },
    }


# ----------------------------------------------------------------------------- churn


@dataclass(frozen=True, slots=True)
class Op:
    """One churn write: `at` seconds after the start, add or remove one provider."""

    at: float
    service: int
    host: str
    add: bool


def churn_schedule(rate: float, seconds: float, interfaces: int, first: int) -> list[Op]:
    """Adds of new providers (fresh addresses from `first` on) to random interfaces; about
    half the writes once under way remove a provider added at least REMOVE_AFTER before."""
    rng = random.Random(first)
    ops: list[Op] = []
    added: collections.deque[Op] = collections.deque()
    for n in range(int(rate * seconds)):
        at = n / rate
        if added and added[0].at <= at - REMOVE_AFTER and rng.random() < 0.5:
            oldest = added.popleft()
            ops.append(Op(at, oldest.service, oldest.host, add=False))
        else:
            op = Op(at, rng.randrange(interfaces), address(first + n, 0, 11), add=True)
            added.append(op)
            ops.append(op)
    return ops


def write_churn(hosts: str, ops: list[Op], conn: Connection) -> None:
    """The churn writer, in a process of its own (the providers are elsewhere, and their
    client must not take the registry's GIL): writes on schedule, stamps each write's
    issue and ack on the system-wide monotonic clock `time.perf_counter()` reads, and sends
    the stamps back."""
    client = connect(hosts)
    issued = [math.nan] * len(ops)
    acked = [math.nan] * len(ops)
    errors: dict[int, str] = {}
    done = threading.Semaphore(0)

    def stamp(i: int) -> Callable[[float, object], None]:
        def record(at: float, value: object) -> None:
            acked[i] = at
            if isinstance(value, Exception):
                errors[i] = repr(value)
            done.release()

        return record

    started = time.perf_counter() + 0.2
    for i, op in enumerate(ops):
        delay = started + op.at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        path = provider_node(ROOT, op.service, op.host)
        issued[i] = time.perf_counter()
        on_done(client.create_async(path) if op.add else client.delete_async(path), stamp(i))
    for _ in ops:
        done.acquire(timeout=DEADLINE)
    client.stop()
    client.close()
    conn.send((issued, acked, errors))


@dataclass
class Written:
    ops: list[Op]
    issued: list[float]
    acked: list[float]
    errors: dict[int, str]


async def write(hosts: str, ops: list[Op]) -> Written:
    """Run the writer process to the end."""
    parent, child = multiprocessing.get_context("spawn").Pipe()
    writer = multiprocessing.get_context("spawn").Process(
        target=write_churn, args=(hosts, ops, child), daemon=True
    )
    writer.start()
    issued, acked, errors = await asyncio.to_thread(parent.recv)
    await asyncio.to_thread(writer.join, DEADLINE)
    return Written(ops, issued, acked, errors)


Seen = dict[str, list[tuple[float, frozenset[str]]]]
"""Per interface, each time a follower saw it: (when, the provider addresses)."""


def lags(written: Written, seen: Seen) -> tuple[list[float], int]:
    """For each write, ZooKeeper's ack to the first sighting after it that holds it (a
    removal: after its add was seen); and how many writes were never seen so."""
    found: list[float] = []
    never = 0
    seen_at: dict[str, float] = {}
    for i, op in enumerate(written.ops):
        after = written.issued[i] if op.add else max(written.issued[i], seen_at.get(op.host, 0))
        first = next(
            (t for t, hosts in seen.get(interface(op.service), ()) if t >= after
             and (op.host in hosts) == op.add),
            None,
        )  # fmt: skip
        if first is None or (not op.add and op.host not in seen_at):
            never += 1
            continue
        if op.add:
            seen_at[op.host] = first
        found.append(first - written.acked[i])
    return found, never


def churn_figures(written: Written, seen: Seen) -> dict[str, Any]:
    found, never = lags(written, seen)
    return {
        "writes": len(written.ops),
        "rate_per_s": len(written.ops) / (max(written.issued) - min(written.issued)),
        "errors": len(written.errors),
        "never_seen": never,
        "lag_from_ack": summary(found),
        "write_rtt": summary([a - i for i, a in zip(written.issued, written.acked, strict=True)]),
    }


class KazooFollower:
    """The baseline: the least a kazoo watcher does to follow the same churn. Every
    providers node read with a children watch (pipelined), re-read when it fires, each
    answer noted with the addresses in it; no parsing beyond the address, no services."""

    def __init__(self, hosts: str, interfaces: int) -> None:
        self.client = connect(hosts)
        self.seen: Seen = collections.defaultdict(list)
        self._paths = {providers_path(ROOT, i): interface(i) for i in range(interfaces)}
        self._first = threading.Semaphore(0)

    def start(self) -> None:
        """Read every providers node, and wait for the answers."""
        for path in self._paths:
            self._read(path)
        for _ in self._paths:
            self._first.acquire(timeout=DEADLINE)

    def stop(self) -> None:
        self.client.stop()
        self.client.close()

    def _read(self, path: str) -> None:
        def fired(event: Any) -> None:
            if event.type != "NONE":
                self._read(path)

        def answered(result: Any) -> None:
            at = time.perf_counter()
            try:
                children = result.get_nowait()
            except Exception:  # the node went; not part of this churn
                return
            hosts = frozenset(unquote(c).split("://", 1)[1].split(":", 1)[0] for c in children)
            self.seen[self._paths[path]].append((at, hosts))  # one append: atomic
            self._first.release()

        self.client.get_children_async(path, watch=fired).rawlink(answered)


async def churn_baseline(hosts: str, ops: list[Op], interfaces: int) -> dict[str, Any]:
    follower = KazooFollower(hosts, interfaces)
    try:
        await asyncio.to_thread(follower.start)
        written = await write(hosts, ops)
        await asyncio.sleep(2.0)  # the last re-reads
    finally:
        follower.stop()
    return churn_figures(written, follower.seen)


async def churn(running: Running, hosts: str, ops: list[Op]) -> dict[str, Any]:
    ifaces = {interface(op.service) for op in ops}
    # (time, addresses) of every published view of an interface the churn writes to
    seen: Seen = {i: [] for i in ifaces}
    truth: dict[str, frozenset[str]] | None = None  # ZooKeeper's tree once the writer is done
    caught_up = asyncio.Event()

    def published(at: float) -> None:
        if truth is not None and view_state(running.registry.view().services) == truth:
            caught_up.set()
        interfaces_now = running.registry._assembly.interfaces
        for iface in running.touched & seen.keys():
            result = interfaces_now.get((ROOT, iface))
            hosts = (
                frozenset(i.address for s in result.services for i in s.instances)
                if result is not None
                else frozenset()
            )
            seen[iface].append((at, hosts))
        running.touched.clear()

    running.touched.clear()
    times_before = len(running.times), sum(running.times)
    running.on_publish.append(published)
    reader = connect(hosts)
    try:
        written = await write(hosts, ops)
        truth = await zookeeper_state(reader)
        if view_state(running.registry.view().services) != truth:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(caught_up.wait(), DEADLINE)
        await asyncio.sleep(0.5)  # anything late (a wrong extra view) lands before we compare
    finally:
        running.on_publish.remove(published)
        reader.stop()
        reader.close()
    view = view_state(running.registry.view().services)
    exact = view == truth
    assert truth is not None
    found, never = lags(written, seen)
    return {
        **churn_figures(written, seen),
        "assembles": len(running.times) - times_before[0],
        "assemble_seconds": sum(running.times) - times_before[1],
        "final_state_exact": exact,
        "final_differences": 0 if exact else len(set(view.items()) ^ set(truth.items())),
        "target": {
            "rule": "lag p99 < 1 s and the final view equals ZooKeeper's tree",
            "met": exact and not never and percentile(found, 99) < 1.0,
        },
    }


# ------------------------------------------------------------------------------ main


async def run(args: argparse.Namespace, hosts: str) -> dict[str, Any]:
    parts = set(args.parts.split(","))
    services_roots = ["/services"]
    result: dict[str, Any] = {"interfaces": args.interfaces, "providers": args.providers}
    if "cold" in parts:
        result["cold_start"] = await cold_start(hosts, args.rounds, services_roots)
    if "churn" in parts:  # first, without our registry in the process
        ops = churn_schedule(args.churn_rate, args.churn_seconds, args.interfaces, 2_000_000)
        result["churn_kazoo"] = await churn_baseline(hosts, ops, args.interfaces)
    if parts & {"latency", "churn"}:
        touched: set[str] = set()
        times: list[float] = []
        with instrumented(times, touched):
            running, _ = await start_registry(hosts, services_roots)
            running.touched, running.times = touched, times
            try:
                if "latency" in parts:
                    result["latency"] = await latency(running, hosts, args.samples, args.interfaces)
                if "churn" in parts:
                    ops = churn_schedule(
                        args.churn_rate, args.churn_seconds, args.interfaces, 3_000_000
                    )
                    result["churn"] = await churn(running, hosts, ops)
            finally:
                await running.registry.stop()
    return result


def report(result: dict[str, Any]) -> None:
    cold = result.get("cold_start")
    if cold:
        ours, base = cold["ours_s"], cold["baseline_s"]
        print(
            f"cold start: ours {ours['total']:.2f}s (walk {ours['walk']:.2f}s, assemble "
            f"{ours['assemble']:.2f}s); baseline {base['total']:.2f}s (async walk "
            f"{base['walk']:.2f}s + bare build {base['bare_build']:.2f}s) = "
            f"{cold['ratio']:.2f}x (walk alone {cold['walk_ratio']:.2f}x); "
            f"target met: {cold['target']['met']}"
        )
    lat = result.get("latency")
    if lat:
        ours, kazoo = lat["ours_from_write"], lat["kazoo_watch_from_write"]
        print(
            f"change latency ({lat['samples']} writes): ours p50 {ours['p50_ms']:.1f} ms p99 "
            f"{ours['p99_ms']:.1f} ms; kazoo watch p50 {kazoo['p50_ms']:.1f} ms p99 "
            f"{kazoo['p99_ms']:.1f} ms; limit {lat['target']['limit_ms']:.1f} ms; "
            f"target met: {lat['target']['met']}"
        )
    base = result.get("churn_kazoo")
    if base:
        lag = base["lag_from_ack"]
        print(
            f"churn baseline (a bare kazoo watcher re-reading each fired node): "
            f"{base['rate_per_s']:.0f}/s x {base['writes']} writes: lag p50 "
            f"{lag['p50_ms']:.1f} ms p99 {lag['p99_ms']:.1f} ms max {lag['max_ms']:.1f} ms; "
            f"never seen {base['never_seen']}"
        )
    ch = result.get("churn")
    if ch:
        lag = ch["lag_from_ack"]
        print(
            f"churn {ch['rate_per_s']:.0f}/s x {ch['writes']} writes: lag p50 "
            f"{lag['p50_ms']:.1f} ms p99 {lag['p99_ms']:.1f} ms max {lag['max_ms']:.1f} ms; "
            f"never seen {ch['never_seen']}; {ch['assembles']} assemblies took "
            f"{ch['assemble_seconds']:.2f}s; final state exact: {ch['final_state_exact']}; "
            f"target met: {ch['target']['met']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.zookeeper")
    parser.add_argument("--interfaces", type=int, default=10_000)
    parser.add_argument("--providers", type=int, default=10)
    parser.add_argument("--apps", type=int, default=0, help="Curator applications")
    parser.add_argument("--instances", type=int, default=10, help="instances per application")
    parser.add_argument("--rounds", type=int, default=3, help="cold starts (medians reported)")
    parser.add_argument("--samples", type=int, default=100, help="add+remove pairs")
    parser.add_argument("--churn-rate", type=float, default=1000.0, help="writes per second")
    parser.add_argument("--churn-seconds", type=float, default=20.0)
    parser.add_argument("--parts", default="cold,latency,churn")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, zookeeper(Path(tmp)) as server:
        client = connect(server.address)
        try:
            began = time.perf_counter()
            asyncio.run(populate(client, args.interfaces, args.providers))
            populate_curator(client, args.apps, args.instances)
            print(
                f"tree: {args.interfaces} interfaces x {args.providers} providers, {args.apps} "
                f"applications, written in {time.perf_counter() - began:.1f}s"
            )
        finally:
            client.stop()
            client.close()
        result = asyncio.run(run(args, server.address))
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
