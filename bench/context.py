"""What every part of the suite is given: its configuration (scales, durations, deadlines),
a scratch directory, the shared ZooKeeper, and a progress log.

The full configuration and the smoke configuration differ only in numbers, so the smoke
(tests/component/test_bench_smoke.py) runs the very code the full suite runs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.machine import zookeeper_version

if TYPE_CHECKING:
    from bench.controlplane import IstiodKit
    from bench.serving import Serving
    from bench.zkserver import BenchZooKeeper


class SkipPart(Exception):  # noqa: N818  # an outcome, not an error
    """A part cannot run here (a component it needs cannot be built): recorded as skipped."""


@dataclass(frozen=True)
class SuiteConfig:
    """Scales and durations; the defaults are the full suite (issue 17's design scale)."""

    instances: int = 10
    cold_scales: tuple[int, ...] = (1_000, 10_000, 50_000)
    cold_sources: tuple[str, ...] = ("static", "static-json", "zookeeper")
    cold_repeats: int = 2  # at scales up to `scale`; the fastest run counts
    # the ZooKeeper baseline's walks, client:window[:nostat] (bench/bare.py), each tried in
    # every repeat; the fastest counts for time, the leanest for peak RSS
    zk_walks: tuple[str, ...] = ("own:250", "own:500", "own:1000", "kazoo:500")
    scale: int = 10_000  # services for change latency, churn, fan-out and istiod
    latency_samples: int = 40  # provider additions; as many removals
    latency_shards: tuple[int, ...] = (1, 16)  # server.shards for part b
    churn_seconds: float = 60.0  # issue 29: the target is 1,000 writes/s for 60 s
    churn_rate: float = 1_000.0
    churn_debounces: tuple[str, ...] = ("0", "default")  # "0" first: reuses part b's server
    istiod_churn_scales: tuple[int, ...] = (10_000,)  # services for part g
    istiod_churn_shards: tuple[int, ...] = (1, 16)  # server.shards for part g
    istiod_churn_seconds: float = 60.0
    istiod_churn_rates: tuple[float, ...] = (1_000.0,)  # writes per second, part g
    churn_patterns: tuple[str, ...] = ("uniform", "rolling")  # part g (bench/zkwriter.py)
    rolling_services: int = 4  # services a rolling restart replaces at a time
    istiod_profile_seconds: float = 20.0  # > 0: a CPU profile of istiod in each pass of g
    fanout_clients: tuple[int, ...] = (1, 8, 32)
    fanout_rounds: int = 15  # a ~10 ms figure: three rounds were too few to read it
    istiod_pushes: int = 3
    istiod_shards: tuple[int, ...] = (1, 4, 16)  # part f's layouts (at most two above 1)
    istiod_shard_pushes: int = 64  # per layout: Go's collections amortize over a series
    istiod_required: bool = True  # False: part f skips (not fails) without Go to build istiod
    deadline: float = 900.0  # for any one wait on a condition

    @classmethod
    def smoke(cls) -> SuiteConfig:
        """Tiny scales: every part runs in a few seconds."""
        return cls(
            instances=3,
            cold_scales=(50, 200),
            cold_repeats=1,
            zk_walks=("own:100", "kazoo:100:nostat"),
            scale=200,
            latency_samples=3,
            latency_shards=(1, 4),
            churn_seconds=2.0,
            churn_rate=100.0,
            churn_debounces=("0",),
            istiod_churn_scales=(200,),
            istiod_churn_shards=(1, 4),
            istiod_churn_seconds=2.0,
            istiod_churn_rates=(100.0,),
            istiod_profile_seconds=0.0,
            fanout_clients=(1, 4),
            fanout_rounds=1,
            istiod_pushes=1,
            istiod_shards=(1, 4),
            istiod_shard_pushes=2,
            istiod_required=False,
            deadline=60.0,
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Bench:
    config: SuiteConfig
    workdir: Path
    out: Path
    started: float = field(default_factory=time.perf_counter)
    servings: dict[tuple[int, str, int], Serving] = field(default_factory=dict)
    """Servers under test kept for the run, by (services, debounce, shards)
    (bench/serving.py)."""
    zookeeper_version: str = ""  # what the shared ZooKeeper said it is, once started
    _zk: BenchZooKeeper | None = None
    _istiod: IstiodKit | str | None = None

    @property
    def zookeeper(self) -> BenchZooKeeper:
        """The shared ZooKeeper, started on first use."""
        if self._zk is None:
            # imported on first use, as istiod's below: the launchers are the test bed's,
            # and the suite's pure figures code (and its unit tests) must not load them
            from bench.zkserver import BenchZooKeeper

            self._zk = BenchZooKeeper(self.workdir)
            self._zk.start()
            self.zookeeper_version = zookeeper_version(self._zk.address)
        return self._zk

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f}s] {message}", file=sys.stderr)

    def scratch(self, name: str) -> Path:
        """A fresh directory for one measurement (`name`, or `name-2`, ... if taken: a
        server closed to make room for another may be started again)."""
        path, n = self.workdir / name, 1
        while path.exists():
            n += 1
            path = self.workdir / f"{name}-{n}"
        path.mkdir(parents=True)
        return path

    async def istiod(self) -> IstiodKit:
        """istiod and its control plane, started on first use; raises if they cannot be
        (SkipPart when Go is missing and config.istiod_required is False)."""
        if self._istiod is None:
            from bench import controlplane

            self._istiod = await controlplane.start(self.scratch("kube"))
        if isinstance(self._istiod, str):
            if self.config.istiod_required:
                raise RuntimeError(self._istiod)
            raise SkipPart(self._istiod)
        return self._istiod

    async def close_servings(self, services: int) -> None:
        """Stop the kept servers of one scale (each takes every write to its estate)."""
        for key in [k for k in self.servings if k[0] == services]:
            await self.servings.pop(key).close()

    async def close(self) -> None:
        for serving in self.servings.values():
            await serving.close()
        self.servings.clear()
        if self._zk is not None:
            self._zk.stop()
            self._zk = None
        if self._istiod is not None and not isinstance(self._istiod, str):
            self._istiod.plane.stop()
        self._istiod = None
