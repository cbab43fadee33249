"""Part (b), change latency: one provider added to (then removed from) a random interface of
the 10k estate, with debounce 0; the time from the write call to the istiod-like client
holding it, beside kazoo's own watch latency on the same write: from the write call to a
kazoo children watch on that providers node firing (the least any ZooKeeper watcher can
take to learn of the write). Both sides from the write call: a duration that cannot go
negative.

Writes go one at a time: the next starts when both sides have seen the last (and the write
is acked), so samples do not queue behind each other. The client side is stamped when gRPC
hands over the response. The ack is stamped on kazoo's thread as ZooKeeper answers, and
reported too (`ours_from_ack`): ZooKeeper sends watch events before the writer's reply, and
on a loaded machine kazoo's thread may stamp the ack after the client already holds the
write, so that figure is measured from the later of the call and the ack and floored at 0
(`held_before_ack` counts the samples where the client was first). A side that does not see
its write within the deadline is a timed-out sample: counted (`timed_out`), and in the
percentiles as the time waited (censored), never a NaN.

With shards (issue 23), the server runs with server.shards: N and a probe reads every shard,
as istiod reads N sources; a write is held when the probe of its service's shard holds it.
Each shard count is its own server and pass over the same writes, N = 1 in the same run.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient

from bench.context import Bench
from bench.probe import EndpointView, Probe
from bench.serving import zookeeper_serving
from bench.stats import cdf_points, summary
from bench.workload import Estate, fresh_address, provider_node, providers_path, zk_host
from bench.zk import on_done, settle


@dataclass(slots=True)
class Sample:
    kind: str  # add | remove
    issued: float
    acked: float = math.nan
    fired: float = math.nan  # NaN: kazoo's watch did not fire within the deadline
    held: float = math.nan  # NaN: the client did not hold the write within the deadline
    gave_up: float = math.nan  # when waiting stopped, if a side timed out

    def figures(self) -> dict[str, float]:
        """Each figure of this sample; NaN where a side timed out (see `waited`)."""
        return {
            "ours": self.held - self.issued,
            "ours_from_ack": max(0.0, self.held - max(self.issued, self.acked)),
            "kazoo_watch": self.fired - self.issued,
            "kazoo_watch_from_ack": max(0.0, self.fired - max(self.issued, self.acked)),
            "write_rtt": self.acked - self.issued,
        }

    def waited(self) -> dict[str, float]:
        """For each figure whose side timed out: how long it was waited for (censored)."""
        waited = self.gave_up - self.issued
        return {
            name: waited
            for name, value in self.figures().items()
            if math.isnan(value) and not math.isnan(waited)
        }


async def one_write(
    bench: Bench,
    probe: Probe,
    watcher: KazooClient,
    writer: KazooClient,
    path: str,
    node: str,
    kind: str,
    held: Callable[[], bool],
) -> Sample:
    """Arm a watch, write, and wait for the watch, the ack and for the client to hold the
    result; a side that does not answer within the deadline is left NaN (timed out)."""
    loop = asyncio.get_running_loop()
    fired = asyncio.Event()
    acked = asyncio.Event()
    sample = Sample(kind, 0.0)

    def watch(_event: object) -> None:
        sample.fired = time.perf_counter()
        loop.call_soon_threadsafe(fired.set)

    await settle(watcher.get_children_async(path, watch=watch))
    waiting = asyncio.create_task(probe.until(held, bench.config.deadline))
    await asyncio.sleep(0)  # the probe checks after every response from here on

    failed: list[str] = []

    def answered(at: float, value: object) -> None:
        sample.acked = at
        if isinstance(value, Exception):
            failed.append(repr(value))
            loop.call_soon_threadsafe(waiting.cancel)
        loop.call_soon_threadsafe(acked.set)

    sample.issued = time.perf_counter()
    write = writer.create_async(node) if kind == "add" else writer.delete_async(node)
    on_done(write, answered)
    try:
        sample.held = await waiting
    except asyncio.CancelledError:
        if failed:
            raise RuntimeError(f"the {kind} of {node} failed: {failed[0]}") from None
        raise
    except TimeoutError:
        sample.gave_up = time.perf_counter()
        bench.log(f"change latency: the client did not hold the {kind} of {node} in time")
    # the rest of the deadline (from the write call) for the watch and the ack
    left = max(0.0, sample.issued + bench.config.deadline - time.perf_counter())
    try:
        async with asyncio.timeout(left):
            await asyncio.gather(fired.wait(), acked.wait())
    except TimeoutError:
        sample.gave_up = time.perf_counter()
        bench.log(f"change latency: the watch or the ack of the {kind} of {node} timed out")
    if failed:
        raise RuntimeError(f"the {kind} of {node} failed: {failed[0]}")
    return sample


def summarize(samples: list[Sample]) -> dict[str, Any]:
    """Per kind (add, remove, all) and figure: the summary with timed-out samples counted
    and censored at the time waited; and the counts behind the figures."""
    figures = [s.figures() for s in samples]
    waits = [s.waited() for s in samples]
    names = list(Sample("add", 0.0).figures())
    result: dict[str, Any] = {}
    for kind in ("add", "remove", "all"):
        chosen = [i for i, s in enumerate(samples) if kind in ("all", s.kind)]
        result[kind] = {
            name: summary(
                [figures[i][name] for i in chosen if name not in waits[i]],
                [waits[i][name] for i in chosen if name in waits[i]],
            )
            for name in names
        }
    result["cdf"] = {
        name: cdf_points([f[name] if name not in w else w[name] for f, w in zip(figures, waits,
                          strict=True)])
        for name in names
    }  # fmt: skip
    result["timed_out"] = sum(1 for s in samples if not math.isnan(s.gave_up))
    result["held_before_ack"] = sum(1 for s in samples if s.held < s.acked)
    return result


async def measure(bench: Bench, estate: Estate, shards: int) -> dict[str, Any]:
    """The samples against a server serving `shards` shards; each write is waited for on
    the probe of the shard that serves its service."""
    config = bench.config
    serving = await zookeeper_serving(bench, estate, "0", shards)
    home = serving.shard_of_host()
    watcher = KazooClient(hosts=bench.zookeeper.address, timeout=30)
    watcher.start(30)
    rng = random.Random(17)
    samples: list[Sample] = []
    try:
        for n in range(config.latency_samples):
            service = rng.randrange(estate.services)
            address = fresh_address(1_000_000 + n)  # apart from churn's
            host = zk_host(service)
            path = providers_path(serving.root, service)
            node = provider_node(serving.root, service, address)
            shard = home[host]
            view = serving.views[shard]
            for kind in ("add", "remove"):
                present = kind == "add"

                def held(
                    h: str = host, a: str = address, p: bool = present, v: EndpointView = view
                ) -> bool:
                    return (a in v.endpoints.get(h, ())) == p

                probe = serving.probes[shard]
                writer = bench.zookeeper.admin
                samples.append(
                    await one_write(bench, probe, watcher, writer, path, node, kind, held)
                )
    finally:
        watcher.stop()
        watcher.close()
    result: dict[str, Any] = {"shards": shards, "samples": len(samples), **summarize(samples)}
    ours, kazoo = result["all"]["ours"], result["all"]["kazoo_watch"]
    limit = 2 * kazoo["p99"] + 0.010
    result["target"] = {
        "rule": "p99 <= 2 x kazoo watch p99 + 10 ms, both from the write call",
        "limit_s": limit,
        "met": bool(result["all"]["ours"]["p99"] <= limit),
    }
    bench.log(
        f"change latency ({shards} shard(s)): p50 {ours['p50'] * 1e3:.1f} ms p99 "
        f"{ours['p99'] * 1e3:.1f} ms; kazoo watch p50 {kazoo['p50'] * 1e3:.1f} ms p99 "
        f"{kazoo['p99'] * 1e3:.1f} ms"
    )
    return result


async def run(bench: Bench) -> dict[str, Any]:
    """Every shard count of config.latency_shards; N = 1's figures at the top (as before
    shards), the others under `shards`. N = 1 is measured last: its server (debounce 0)
    is the one part c's first pass reuses."""
    config = bench.config
    estate = Estate(config.scale, config.instances)
    result: dict[str, Any] = {
        "what": "the write call of one provider add/remove -> the client holds it; debounce 0",
        "baseline": "kazoo's watch latency on the same write: the write call -> a kazoo "
        "children watch on that providers node fires",
        "services": estate.services,
        "shards": {},
    }
    for shards in sorted(set(config.latency_shards), key=lambda n: (n == 1, n)):
        measured = await measure(bench, estate, shards)
        if shards == 1:
            result.update({k: v for k, v in measured.items() if k != "shards"})
        else:
            result["shards"][str(shards)] = measured
    return result
