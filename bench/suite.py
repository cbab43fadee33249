"""The benchmark suite of issue 17, in one command:

    make bench            # = .venv/bin/python -m bench.suite --out docs/bench

Parts (each alone with --parts; letters or names):
  a cold_start     spawn -> client holds the full set, 1k/10k/50k services, static (YAML;
                   JSON) and ZooKeeper, vs CSafeLoader parse / json.loads / async kazoo
                   walk, each + a bare protobuf build of the same ServiceEntries
  e memory         peak RSS of those same server runs vs the bare build's
  b change_latency one provider added/removed, debounce 0, vs kazoo's own watch on the write;
                   unsharded and with 16 shards (the probe reading the service's shard)
  c churn          1,000 writes/s for N seconds: lag p50/p99 and exact final equality, vs a
                   kazoo watcher on the same writes
  d fanout         1/8/32 clients take a new 10k set, vs a bare grpc.aio server, same bytes
  f istiod_cpu     real istiod's CPU for a push where one of 10k changed, our versions vs
                   every version changed; and istiod reading 1, 4 and 16 shards: CPU and
                   bytes per one-service change
  g istiod_churn   churn with the real istiod consuming, 1 and 16 shards, uniform and a
                   rolling restart: istiod CPU-s per second, lag to a sidecar's endpoints

Writes results.json (every figure with its baseline, the machine, the configuration), the PNG
plots and README.md (the table) into --out. A part given alone is merged into an existing
results.json (each part carries its own timestamp) unless --fresh. `--smoke` runs every part
at tiny scale (tests/component/test_bench_smoke.py); `--render` rewrites README.md and the
plots from results.json without measuring. Exit status 1 if any part failed.

The older single-purpose scripts stay runnable alone: `python -m bench.snapshot` (rebuild
cost of one changed service), `bench.zookeeper` and `bench.consul` (first listing).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import churn, coldstart, fanout, istiodchurn, istiodcpu, latency
from bench.context import Bench, SkipPart, SuiteConfig
from bench.findings import clean, markdown, merge, summarize
from bench.machine import REPO, describe, pin_code
from bench.plots import draw

PARTS: dict[str, str] = {
    "a": "cold_start",
    "e": "memory",
    "b": "change_latency",
    "c": "churn",
    "d": "fanout",
    "f": "istiod_cpu",
    "g": "istiod_churn",
}
ORDER = list(PARTS.values())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.suite", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("docs/bench"))
    parser.add_argument("--parts", default="all", help="comma list of letters or names")
    parser.add_argument("--smoke", action="store_true", help="tiny scales, seconds per part")
    parser.add_argument("--fresh", action="store_true", help="do not merge into results.json")
    parser.add_argument(
        "--render", action="store_true", help="rewrite README.md and plots from results.json"
    )
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temp dir)")
    parser.add_argument("--scales", type=_ints, help="cold start scales, e.g. 1000,10000,50000")
    parser.add_argument("--sources", help="cold start sources: static,static-json,zookeeper")
    parser.add_argument("--cold-repeats", type=int, help="runs per scale up to --scale")
    parser.add_argument(
        "--zk-walks", help="ZooKeeper baseline walks, e.g. own:500,kazoo:1000:nostat"
    )
    parser.add_argument("--scale", type=int, help="services for parts b, c, d, f")
    parser.add_argument("--instances", type=int, help="instances per service")
    parser.add_argument("--latency-samples", type=int)
    parser.add_argument("--churn-seconds", type=float)
    parser.add_argument("--churn-rate", type=float)
    parser.add_argument("--churn-debounces", help="comma list of default,0")
    parser.add_argument("--clients", type=_ints, help="fan-out client counts, e.g. 1,8,32")
    parser.add_argument("--fanout-rounds", type=int)
    parser.add_argument("--istiod-pushes", type=int)
    parser.add_argument(
        "--shards",
        type=_ints,
        help="shard counts for parts b, f and g, e.g. 1,16 (f: at most two above 1)",
    )
    parser.add_argument("--istiod-shard-pushes", type=int, help="part f: pushes per layout")
    parser.add_argument("--istiod-churn-scales", type=_ints, help="part g: services, e.g. 30000")
    parser.add_argument("--istiod-churn-seconds", type=float)
    parser.add_argument(
        "--istiod-churn-rates", type=_floats, help="part g: writes per second, e.g. 1000,100"
    )
    parser.add_argument("--churn-patterns", help="part g: comma list of uniform,rolling")
    parser.add_argument("--rolling-services", type=int, help="rolling restart: services at once")
    parser.add_argument(
        "--istiod-profile", type=float, help="part g: seconds of istiod CPU profile per pass"
    )
    parser.add_argument("--deadline", type=float, help="seconds any one wait may take")
    return parser.parse_args(argv)


def configure(args: argparse.Namespace) -> SuiteConfig:
    config = SuiteConfig.smoke() if args.smoke else SuiteConfig()
    overrides: dict[str, Any] = {
        "cold_scales": args.scales,
        "cold_sources": tuple(args.sources.split(",")) if args.sources else None,
        "cold_repeats": args.cold_repeats,
        "zk_walks": tuple(args.zk_walks.split(",")) if args.zk_walks else None,
        "scale": args.scale,
        "instances": args.instances,
        "latency_samples": args.latency_samples,
        "churn_seconds": args.churn_seconds,
        "churn_rate": args.churn_rate,
        "churn_debounces": tuple(args.churn_debounces.split(",")) if args.churn_debounces else None,
        "fanout_clients": args.clients,
        "fanout_rounds": args.fanout_rounds,
        "istiod_pushes": args.istiod_pushes,
        "latency_shards": args.shards,
        "istiod_shards": args.shards,
        "istiod_churn_shards": args.shards,
        "istiod_shard_pushes": args.istiod_shard_pushes,
        "istiod_churn_scales": args.istiod_churn_scales,
        "istiod_churn_seconds": args.istiod_churn_seconds,
        "istiod_churn_rates": args.istiod_churn_rates,
        "churn_patterns": tuple(args.churn_patterns.split(",")) if args.churn_patterns else None,
        "rolling_services": args.rolling_services,
        "istiod_profile_seconds": args.istiod_profile,
        "deadline": args.deadline,
    }
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def selected(text: str) -> list[str]:
    if text == "all":
        return ORDER
    names = {PARTS.get(p.strip(), p.strip()) for p in text.split(",") if p.strip()}
    unknown = names - set(ORDER)
    if unknown:
        raise SystemExit(f"unknown parts: {', '.join(sorted(unknown))}; known: {PARTS}")
    return [p for p in ORDER if p in names]


async def run_parts(bench: Bench, parts: list[str]) -> dict[str, Any]:
    """Each selected part in order; a failing part is recorded and the rest still run."""
    results: dict[str, Any] = {}
    runners: dict[str, Callable[[Bench], Awaitable[dict[str, Any]]]] = {
        "cold_start": coldstart.run,
        "change_latency": latency.run,
        "churn": churn.run,
        "fanout": fanout.run,
        "istiod_cpu": istiodcpu.run,
        "istiod_churn": istiodchurn.run,
    }
    try:
        for part in parts:
            started = time.perf_counter()
            bench.log(f"part {part}")
            try:
                if part == "memory":
                    cold = results.get("cold_start")
                    if cold is None or "error" in cold:
                        cold = await coldstart.run(bench)
                    result = coldstart.memory(cold)
                else:
                    result = await runners[part](bench)
            except SkipPart as skipped:
                result = {"skipped": str(skipped)}
            except Exception:
                result = {"error": traceback.format_exc()}
                bench.log(f"part {part} failed:\n{result['error']}")
            result["measured_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            result["part_seconds"] = time.perf_counter() - started
            results[part] = result
    finally:
        await bench.close()
    return results


def render(out: Path) -> None:
    """The summary, README.md and plots again from results.json, measuring nothing (after a
    change to how figures are shown)."""
    path = out / "results.json"
    results = json.loads(path.read_text())
    results["summary"] = summarize(results["parts"])
    path.write_text(json.dumps(clean(results), indent=1) + "\n")
    images = draw(results, out)
    (out / "README.md").write_text(markdown(results, images))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = configure(args)
    parts = selected(args.parts)
    out: Path = args.out.resolve()
    if args.render:
        render(out)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="mcpserver-bench-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    machine = describe()
    machine["mcpserver_digest"] = pin_code(workdir / "code")
    # the processes the suite starts run in the scratch directory, so `python -m` puts no
    # live checkout ahead of the pinned copy on their sys.path
    home = Path.cwd()
    sys.path.append(str(REPO))
    os.chdir(workdir)
    bench = Bench(config, workdir, out)
    started = time.perf_counter()
    bench.log(f"suite: parts {', '.join(parts)}; scratch {workdir}")
    try:
        measured = asyncio.run(run_parts(bench, parts))
    finally:
        os.chdir(home)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if bench.zookeeper_version:
        machine["zookeeper"] = bench.zookeeper_version
    machine["load_average_end"] = list(os.getloadavg())
    path = out / "results.json"
    previous: dict[str, Any] = {}
    if path.exists() and not args.fresh:
        previous = json.loads(path.read_text())
    run = {
        "command": " ".join(
            ["python -m bench.suite", *(argv if argv is not None else sys.argv[1:])]
        ),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "suite_seconds": time.perf_counter() - started,
        "smoke": args.smoke,
        "parts": list(measured),
        "config": config.as_json(),
        "machine": machine,
    }
    results: dict[str, Any] = {
        "schema": 1,
        **{k: run[k] for k in ("command", "finished_at", "suite_seconds", "smoke", "config")},
        "machine": machine,
        "runs": [*previous.get("runs", []), run],
        "parts": merge(previous.get("parts", {}), measured),
    }
    results["summary"] = summarize(results["parts"])
    results = clean(results)
    path.write_text(json.dumps(results, indent=1) + "\n")
    images = draw(results, out)
    (out / "README.md").write_text(markdown(results, images))
    bench.log(f"wrote {path} and {len(images)} plots in {results['suite_seconds']:.0f}s")
    return 1 if any("error" in measured[p] for p in measured) else 0


if __name__ == "__main__":
    sys.exit(main())
