"""The soak, start to end: the real components, the churn, the samples, the verdict.

Timeline: populate the registries; start mcpserver (a subprocess: its memory, threads and
descriptors are its own), istiod on a real kube-apiserver, and the clients; churn for the
first WARMUP of the run; stop, let everything converge and settle, and take the baseline
(tasks, threads, descriptors, and each registry's service names); churn for the rest of the
run; step the registries back to the baseline's service names; converge, settle, compare.
Memory is fitted from the baseline to the end of the churn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kazoo.client import KazooClient

from bench.probe import Probe
from testbed.builds import consul_binary, istio_module_dir, kube_binaries, pilot_discovery_binary
from testbed.consulagent import ConsulAgent
from testbed.istiod import Istiod
from testbed.kube import ControlPlane
from testbed.ports import free_port
from testbed.process import Process, terminate
from testbed.zookeeper import ZooKeeper
from tests.resilience.soak.churn import ConsulChurn, DubboChurn, StaticChurn
from tests.resilience.soak.truth import (
    ClientView,
    Endpoints,
    configz_view,
    consul_truth,
    differences,
    dubbo_truth,
    static_truth,
)
from tests.resilience.soak.usage import Usage, sample, slope_per_hour

REPO = Path(__file__).resolve().parents[3]
WARMUP = 0.2  # share of the run before the baseline
CHANGES_PER_SECOND = 2.0  # per registry, on average (exponential gaps)
CONVERGE_WITHIN = 90.0  # seconds for every view to equal the registries once churn stops
SETTLE_FOR = 3.0  # seconds without a new snapshot: past debounce.max (500 ms) and a rebuild
# Leaks: tasks back to exactly the baseline; threads and descriptors within a small margin
# (a thread pool may grow by a worker late; an idle HTTP keep-alive may still be open)
EXTRA_THREADS = 2
EXTRA_FDS = 2
# RSS slope bound asserted by runs of 10 minutes or more (MiB/hour, fitted after warm-up).
# Measured: 28 MiB/h while each registry's delta log kept up to 4,096 dead Service copies
# alive (it took 20 minutes to fill); with the log bounded by the view's size, 5.7 MiB/h over
# minutes 2-10 and 2.8 MiB/h over a 32-minute run. A leak of one MiB per rebuild measures
# about 10,000. Shorter runs are mostly warm-up, so they assert only a generous bound.
MAX_SLOPE_LONG = 15.0
MAX_SLOPE_SHORT = 2000.0


@dataclass(frozen=True)
class Options:
    minutes: float
    out: Path
    seed: int
    clients: int = 16
    max_slope: float | None = None  # MiB/hour; None: by the run's length

    @property
    def slope_bound(self) -> float:
        if self.max_slope is not None:
            return self.max_slope
        return MAX_SLOPE_LONG if self.minutes >= 10 else MAX_SLOPE_SHORT

    @property
    def interval(self) -> float:
        """Seconds between samples: about 120 samples a run, every 1 to 5 s."""
        return max(1.0, min(5.0, self.minutes * 60 / 120))


@dataclass
class Mcpserver:
    """`python -m mcpserver serve` as a process of its own, run from this checkout."""

    workdir: Path
    registries: list[dict[str, Any]]
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "mcpserver.log"

    def start(self) -> None:
        config = self.workdir / "mcpserver.yaml"
        settings = {
            "server": {
                "listen": f"127.0.0.1:{self.port}",
                "admin": f"127.0.0.1:{self.admin_port}",
            },
            "shutdown": {"drain": "1s"},
            # Each update removes a few instances at most (churn.py), but the random walk
            # between LOW and HIGH, and the reshape at the end, can take more than half of a
            # registry within a minute: over protection.window that is a mass removal, held
            # for hold_for. The soak measures leaks and convergence, not the hold: judged per
            # update, as the churn was designed for.
            "protection": {"window": "0s"},
            "registries": self.registries,
        }
        config.write_text(yaml.safe_dump(settings))
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MCPSERVER_")}
        command = [sys.executable, "-m", "mcpserver", "serve", f"--config={config}"]
        self.process = Process(command, self.log_path, cwd=REPO, env=environ, die_with_us=True)
        self.process.wait_ready("mcpserver", self.ready)

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.admin_port}/readyz"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def registry_status(self) -> str:
        """Each registry's status and detail as mcpserver reports them (/debug/registries)."""
        url = f"http://127.0.0.1:{self.admin_port}/debug/registries"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                rows = json.loads(response.read())
        except (OSError, ValueError) as err:
            return f"/debug/registries: {err!r}"
        return "; ".join(f"{r['name']}: {r['status']} {r.get('detail', '')}".strip() for r in rows)

    def stop(self) -> None:
        terminate(self.process, grace=30)
        self.process = None


def start_istiod(binary: Path, workdir: Path, port: int, plane: ControlPlane) -> Istiod:
    """istiod with `configSources: [xds://mcpserver, k8s://]`, on new ports if another
    process took one of its free ports before it bound it."""
    istiod = Istiod(binary, workdir, port, kubeconfig=plane.istiod_kubeconfig())
    istiod.start_ready()
    return istiod


@dataclass
class Soak:
    options: Options
    server: Mcpserver
    istiod: Istiod
    truth: Callable[[], Endpoints]
    churners: dict[str, DubboChurn | ConsulChurn | StaticChurn]
    probes: list[Probe] = field(default_factory=list)
    views: list[ClientView] = field(default_factory=list)
    samples: list[Usage] = field(default_factory=list)
    started: float = 0.0
    converged: dict[str, float] = field(default_factory=dict)

    def now(self) -> float:
        return time.monotonic() - self.started

    async def sample(self) -> Usage:
        assert self.server.process is not None
        return await asyncio.to_thread(
            sample, self.server.process.pid, self.server.admin_port, self.now()
        )

    async def sampling(self) -> None:
        while True:
            self.samples.append(await self.sample())
            await asyncio.sleep(self.options.interval)  # the sampling period, not a sync

    async def churn(self, name: str, until: float) -> None:
        churner = self.churners[name]
        pace = random.Random(f"{self.options.seed}-pace-{name}")
        while self.now() < until:
            await asyncio.to_thread(churner.step)
            await asyncio.sleep(pace.expovariate(CHANGES_PER_SECOND))  # the churn's rate

    async def churn_all(self, until: float) -> None:
        await asyncio.gather(*(self.churn(name, until) for name in self.churners))

    async def reshape(self, shapes: dict[str, frozenset[str]]) -> int:
        """Step every registry back to its baseline service names, at the churn's rate."""
        steps = 0
        while True:
            moved = [
                await asyncio.to_thread(c.reshape, shapes[n]) for n, c in self.churners.items()
            ]
            if not any(moved):
                return steps
            steps += sum(moved)
            await asyncio.sleep(1 / CHANGES_PER_SECOND)  # the churn's rate

    async def converge(self, what: str) -> Endpoints:
        """Wait until all clients and istiod hold exactly what the registries hold."""
        began = time.monotonic()
        while True:
            self.alive()
            truth = await asyncio.to_thread(self.truth)
            stale = [i for i, v in enumerate(self.views) if v.endpoints != truth]
            configz: Endpoints | None = None
            if not stale:
                configz = await asyncio.to_thread(self.configz)
                if configz == truth:
                    self.converged[what] = round(time.monotonic() - began, 2)
                    return truth
            if time.monotonic() - began > CONVERGE_WITHIN:
                lines = [f"{what}: no convergence in {CONVERGE_WITHIN:.0f}s"]
                if stale:
                    lines.append(f"{len(stale)} of {len(self.views)} clients differ, client 0:")
                    lines += differences(truth, self.views[stale[0]].endpoints)
                if configz is not None:
                    lines.append("istiod's /debug/configz differs:")
                    lines += differences(truth, configz)
                lines.append(f"mcpserver's registries: {self.server.registry_status()}")
                raise AssertionError("\n".join(lines))
            await asyncio.sleep(0.25)  # polling the condition, with the deadline above

    def configz(self) -> Endpoints:
        return configz_view(self.istiod.configs("ServiceEntry").values())

    def alive(self) -> None:
        if not self.server.alive():
            raise AssertionError(f"mcpserver exited (log {self.server.log_path})")
        for i, probe in enumerate(self.probes):
            if (error := probe.failed()) is not None:
                raise AssertionError(f"client {i}'s stream ended: {error!r}")
        if self.istiod.process is None or self.istiod.process.poll() is not None:
            raise AssertionError(f"istiod exited (log {self.istiod.log_path})")

    async def settle(self) -> Usage:
        """Sample until no snapshot was published for SETTLE_FOR seconds; the settled
        figures are the window's minimum (a scrape can meet a transient task)."""
        began = time.monotonic()
        window = [await self.sample()]
        while window[-1].at - window[0].at < SETTLE_FOR:
            if time.monotonic() - began > 60:
                raise AssertionError("mcpserver kept rebuilding with the registries quiet")
            await asyncio.sleep(0.5)  # the sampling period of the window
            latest = await self.sample()
            window = [s for s in window if s.builds == latest.builds] + [latest]
        return Usage(
            at=window[-1].at,
            rss_mib=window[-1].rss_mib,
            threads=min(s.threads for s in window),
            fds=min(s.fds for s in window),
            tasks=min(s.tasks for s in window),
            builds=window[-1].builds,
        )

    async def run(self) -> dict[str, Any]:
        duration = self.options.minutes * 60
        for _ in range(self.options.clients):
            view = ClientView()
            probe = Probe(self.server.port)
            probe.listeners.append(view.apply)
            probe.start()
            self.probes.append(probe)
            self.views.append(view)
        self.started = time.monotonic()
        sampler = asyncio.create_task(self.sampling())
        result: dict[str, Any] = {"failures": []}
        try:
            await self.converge("start")
            await self.churn_all(duration * WARMUP)
            await self.converge("warm-up")
            baseline = await self.settle()
            shapes = {name: c.shape() for name, c in self.churners.items()}
            await self.churn_all(duration)
            churned = self.now()
            result["reshape_steps"] = await self.reshape(shapes)
            final = await self.converge("end")
            end = await self.settle()
            # nothing moved past the next rebuild: still exactly the registries' state
            await self.converge("end, settled")
            result.update(verdict(self.options, baseline, end, self.samples, churned))
            result["final_hosts"] = len(final)
            result["final_endpoints"] = sum(len(e) for e in final.values())
        except AssertionError as err:
            result["failures"].append(str(err))
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            for probe in self.probes:
                await probe.stop()
        result["converged_seconds"] = self.converged
        result["client_responses"] = [v.responses for v in self.views]
        result["client_decoded"] = [v.decoded for v in self.views]
        result["samples"] = [s.json() for s in self.samples]
        return result


def verdict(
    options: Options, baseline: Usage, end: Usage, samples: list[Usage], churned: float
) -> dict[str, Any]:
    fitted = [s for s in samples if baseline.at <= s.at <= churned]
    slope = slope_per_hour(fitted)
    failures = []
    if slope > options.slope_bound:
        failures.append(f"RSS grows {slope:.1f} MiB/h after warm-up (bound {options.slope_bound})")
    if end.tasks != baseline.tasks:
        failures.append(f"asyncio tasks: {baseline.tasks} after warm-up, {end.tasks} at the end")
    if end.threads > baseline.threads + EXTRA_THREADS:
        failures.append(f"threads: {baseline.threads} after warm-up, {end.threads} at the end")
    if end.fds > baseline.fds + EXTRA_FDS:
        failures.append(f"open fds: {baseline.fds} after warm-up, {end.fds} at the end")
    return {
        "failures": failures,
        "rss_slope_mib_per_hour": round(slope, 2),
        "rss_slope_bound": options.slope_bound,
        "rss_fitted_samples": len(fitted),
        "baseline": baseline.json(),
        "end": end.json(),
    }


def registries_config(zk: ZooKeeper, consul: ConsulAgent, static: Path) -> list[dict[str, Any]]:
    return [
        {"kind": "static", "name": "files", "path": str(static), "poll_interval": "200ms"},
        {"kind": "zookeeper", "name": "zk", "hosts": zk.address, "namespace": "dubbo"},
        {
            "kind": "consul",
            "name": "consul",
            "address": consul.address,
            "namespace": "consul",
            "wait": "5s",
        },
    ]


def run(options: Options) -> dict[str, Any]:
    """The whole soak; the result (written to OUT/result.json) lists its failures."""
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    load = os.getloadavg()
    with contextlib.ExitStack() as stack:
        # built or taken from the cache first: a cold build is not part of the soak
        pilot = pilot_discovery_binary()
        kube = kube_binaries()
        crds = istio_module_dir() / "manifests" / "charts" / "base" / "files" / "crd-all.gen.yaml"
        consul_bin = consul_binary()
        zookeeper = ZooKeeper(out / "zk")
        zookeeper.start()
        stack.callback(zookeeper.stop)
        consul = ConsulAgent(consul_bin, out / "consul")
        consul.start()
        stack.callback(consul.stop)
        writer = KazooClient(hosts=zookeeper.address, timeout=10)
        writer.start(15)
        stack.callback(writer.close)
        stack.callback(writer.stop)
        static = out / "static.yaml"
        churners: dict[str, DubboChurn | ConsulChurn | StaticChurn] = {
            "zookeeper": DubboChurn(random.Random(f"{options.seed}-zookeeper"), zk=writer),
            "consul": ConsulChurn(random.Random(f"{options.seed}-consul"), agent=consul),
            "static": StaticChurn(random.Random(f"{options.seed}-static"), path=static),
        }
        for churner in churners.values():
            churner.populate()
        server = Mcpserver(out, registries_config(zookeeper, consul, static))
        server.start()
        stack.callback(server.stop)
        plane = ControlPlane(kube, out / "kube")
        stack.callback(plane.stop)
        plane.start(crds)
        (out / "istiod").mkdir(exist_ok=True)
        istiod = start_istiod(pilot, out / "istiod", server.port, plane)
        stack.callback(istiod.stop)
        setup = time.monotonic() - began

        def truth() -> Endpoints:
            return {**dubbo_truth(writer), **consul_truth(consul), **static_truth(static)}

        soak = Soak(options, server, istiod, truth, churners)
        result = asyncio.run(soak.run())
    result.update(
        seed=options.seed,
        minutes=options.minutes,
        clients=options.clients,
        setup_seconds=round(setup, 1),
        total_seconds=round(time.monotonic() - began, 1),
        load_before=load,
        load_after=os.getloadavg(),
        churn={name: dict(sorted(c.counts.items())) for name, c in churners.items()},
        changes=sum(sum(c.counts.values()) for c in churners.values()),
        istiod_ready_seconds=round(istiod.ready_seconds, 2),
        out=str(out),
    )
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def summary(result: dict[str, Any]) -> str:
    lines = [
        f"soak: {result['minutes']} min, seed {result['seed']}, {result['clients']} clients "
        f"+ istiod, {result['changes']} changes {result['churn']}",
        f"load before {result['load_before'][0]:.2f}, after {result['load_after'][0]:.2f}; "
        f"setup {result['setup_seconds']} s, total {result['total_seconds']} s; "
        f"converged in {result['converged_seconds']} s",
    ]
    if "baseline" in result:
        b, e = result["baseline"], result["end"]
        lines.append(
            f"RSS slope {result['rss_slope_mib_per_hour']} MiB/h after warm-up "
            f"(bound {result['rss_slope_bound']}; {b['rss_mib']:.1f} -> {e['rss_mib']:.1f} MiB); "
            f"tasks {b['tasks']} -> {e['tasks']}, threads {b['threads']} -> {e['threads']}, "
            f"fds {b['fds']} -> {e['fds']}; final {result['final_hosts']} hosts, "
            f"{result['final_endpoints']} endpoints"
        )
    lines += [f"FAILED: {failure}" for failure in result["failures"]]
    lines.append(f"result: {result['out']}/result.json")
    return "\n".join(lines)
