"""PNG figures from a results file, each measured figure drawn beside its baseline from the
same run; written next to results.json. Rendering only: every number comes from the JSON, so
`python -m bench.plots docs/bench` redraws without measuring again.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import NullFormatter

from bench.coldstart import SOURCES
from bench.stats import is_figure, shown

OURS = "#c0392b"
BASE = "#2c3e50"
SHARD_COLORS = ("#e67e22", "#27ae60", "#8e44ad")


def _machine_line(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    return (
        f"{m.get('cores')} cores, {m.get('ram_mib', 0) / 1024:.0f} GiB, Python {m.get('python')}, "
        f"grpcio {m.get('grpcio')}, protobuf {m.get('protobuf')}"
    )


def _finish(fig: Any, results: dict[str, Any], title: str, path: Path) -> None:
    fig.suptitle(f"{title}\n{_machine_line(results)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cdf(
    ax: Axes, points: list[list[float | None]] | None, label: str, color: str, scale: float
) -> None:
    """A CDF's step line, drawn from the points that have both a value and a fraction
    (a results file writes a NaN as null); nothing when none has."""
    kept = [
        (v, f) for v, f in (p for p in points or () if len(p) == 2) if is_figure(v) and is_figure(f)
    ]
    if kept:
        ax.step(
            [v * scale for v, _ in kept], [f for _, f in kept], where="post", label=label,
            color=color,
        )  # fmt: skip


def _values(figures: Iterable[object]) -> list[float]:
    """Figures to draw, a missing one (null in results.json) as NaN: matplotlib leaves a gap."""
    return [float(v) if is_figure(v) else math.nan for v in figures]


def cold_start(results: dict[str, Any], out: Path) -> Path | None:
    cold = results["parts"].get("cold_start", {})
    sources = [s for s in SOURCES if s in cold]
    if not sources:
        return None
    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 4.2), squeeze=False)
    for ax, source in zip(axes[0], sources, strict=True):
        scales = sorted(cold[source], key=int)
        xs = [int(s) for s in scales]
        ax.plot(
            xs,
            _values(cold[source][s]["ours"]["seconds"] for s in scales),
            "o-",
            color=OURS,
            label="mcpserver: spawn -> client holds full set",
        )
        base = SOURCES[source][1]
        ax.plot(
            xs,
            _values(cold[source][s]["baseline"]["seconds"] for s in scales),
            "s--",
            color=BASE,
            label=f"baseline: {base}",
        )
        for x, s in zip(xs, scales, strict=True):
            if not is_figure(cold[source][s]["ours"]["seconds"]):
                continue
            ax.annotate(
                shown(cold[source][s].get("ratio"), ".1f", "x"),
                (x, cold[source][s]["ours"]["seconds"]),
                textcoords="offset points",
                xytext=(4, 6),
                fontsize=8,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.margins(x=0.12, y=0.15)  # room for the ratio labels
        ax.set_xlabel(f"services ({cold.get('instances_per_service', 10)} instances each)")
        ax.set_ylabel("seconds")
        ax.set_title(f"cold start, {SOURCES[source][0]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    path = out / "cold_start.png"
    _finish(
        fig, results, "Cold start to the full set vs the least work that gets it on the wire", path
    )
    return path


def memory(results: dict[str, Any], out: Path) -> Path | None:
    mem = results["parts"].get("memory", {})
    sources = [s for s in SOURCES if s in mem]
    if not sources:
        return None
    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 4.2), squeeze=False)
    for ax, source in zip(axes[0], sources, strict=True):
        scales = sorted(mem[source], key=int)
        xs = [int(s) for s in scales]
        ax.plot(
            xs,
            _values(mem[source][s]["ours_mib"] for s in scales),
            "o-",
            color=OURS,
            label="mcpserver peak RSS (VmHWM at full set)",
        )
        ax.plot(
            xs,
            _values(mem[source][s]["baseline_mib"] for s in scales),
            "s--",
            color=BASE,
            label="baseline: bare build of the same resources",
        )
        for x, s in zip(xs, scales, strict=True):
            if not is_figure(mem[source][s]["ours_mib"]):
                continue
            ax.annotate(
                shown(mem[source][s].get("ratio"), ".1f", "x"),
                (x, mem[source][s]["ours_mib"]),
                textcoords="offset points",
                xytext=(4, 6),
                fontsize=8,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.margins(x=0.12, y=0.15)  # room for the ratio labels
        ax.set_xlabel("services")
        ax.set_ylabel("MiB")
        ax.set_title(f"peak RSS, {SOURCES[source][0]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    path = out / "memory.png"
    _finish(fig, results, "Peak memory vs a bare build of the same resources", path)
    return path


def change_latency(results: dict[str, Any], out: Path) -> Path | None:
    part = results["parts"].get("change_latency")
    if not part or "cdf" not in part:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    _cdf(ax, part["cdf"]["ours"], "mcpserver, whole set: write call -> client holds it", OURS, 1e3)
    _cdf(ax, part["cdf"]["kazoo_watch"], "baseline: write call -> kazoo watch fires", BASE, 1e3)
    _cdf(ax, part["cdf"].get("kazoo_watch_from_ack"), "kazoo watch, from the ack", "#7f8c8d", 1e3)
    for (shards, entry), color in zip(
        sorted(part.get("shards", {}).items(), key=lambda kv: int(kv[0])),
        SHARD_COLORS,
        strict=False,
    ):
        p99 = shown(entry["all"]["ours"]["p99"], ".0f", " ms", 1e3)
        label = f"mcpserver, {shards} shards (probe on the service's shard), p99 {p99}"
        _cdf(ax, entry["cdf"]["ours"], label, color, 1e3)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("milliseconds")
    ax.set_ylabel("fraction of writes")
    ours = shown(part["all"]["ours"]["p99"], ".0f", " ms", 1e3)
    kazoo = shown(part["all"]["kazoo_watch"]["p99"], ".1f", " ms", 1e3)
    ax.set_title(
        f"change latency, {part['services']} services, debounce 0, {part['samples']} writes; "
        f"p99 {ours} vs {kazoo}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    path = out / "change_latency_cdf.png"
    _finish(fig, results, "One provider added/removed: latency CDF", path)
    return path


def churn(results: dict[str, Any], out: Path) -> Path | None:
    runs = results["parts"].get("churn", {}).get("runs", {})
    if not runs:
        return None
    fig, axes = plt.subplots(len(runs), 2, figsize=(12, 4 * len(runs)), squeeze=False)
    for row, (debounce, run) in zip(axes, runs.items(), strict=True):
        since = run.get("lag_from", "the ack")  # results before the write call was the origin
        _cdf(row[0], run["cdf"]["ours"], f"mcpserver: {since} -> client holds it", OURS, 1.0)
        _cdf(
            row[0], run["cdf"]["kazoo_watch"], f"baseline: {since} -> kazoo watcher holds it",
            BASE, 1.0,
        )  # fmt: skip
        row[0].set_xscale("log")
        row[0].set_xlabel("lag, seconds")
        row[0].set_ylabel("fraction of writes")
        row[0].set_title(
            f"debounce {debounce}: {run['rate_achieved']:.0f} writes/s for {run['seconds']:.0f}s, "
            f"p99 {shown(run['lag']['ours']['p99'], '.2f', 's')}, "
            f"final equal: {run['final_equal']}",
            fontsize=9,
        )
        row[0].grid(True, which="both", alpha=0.3)
        row[0].legend(fontsize=8)
        timeline = [t for t in run["timeline"] if is_figure(t[0]) and is_figure(t[1])]
        row[1].plot(
            [t[0] for t in timeline], [t[1] for t in timeline], ".", markersize=2, color=OURS
        )
        row[1].set_xlabel("write issued at, seconds into the churn")
        row[1].set_ylabel("lag, seconds")
        row[1].set_title(f"lag over time (debounce {debounce})", fontsize=9)
        row[1].grid(True, alpha=0.3)
    path = out / "churn_lag.png"
    _finish(fig, results, "Churn: lag of every write, and its CDF beside a kazoo watcher's", path)
    return path


def fanout(results: dict[str, Any], out: Path) -> Path | None:
    part = results["parts"].get("fanout", {})
    clients = part.get("clients", {})
    if not clients:
        return None
    keys = sorted(clients, key=int)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = range(len(keys))
    width = 0.38
    ax.bar(
        [x - width / 2 for x in xs],
        _values(clients[k]["ours"]["p50"] for k in keys),
        width,
        color=OURS,
        label="mcpserver: publish -> every client holds the set",
    )
    ax.bar(
        [x + width / 2 for x in xs],
        _values(clients[k]["bare"]["p50"] for k in keys),
        width,
        color=BASE,
        label="baseline: bare grpc.aio server, same bytes",
    )
    for x, k in zip(xs, keys, strict=True):
        if not is_figure(clients[k]["ours"]["p50"]):
            continue
        ax.annotate(
            shown(clients[k].get("ratio"), ".2f", "x"),
            (x - width / 2, clients[k]["ours"]["p50"]),
            textcoords="offset points",
            xytext=(0, 3),
            fontsize=8,
            ha="center",
        )
    ax.set_xticks(list(xs), [f"{k} clients" for k in keys])
    ax.set_ylabel("seconds (median of rounds)")
    ax.set_title(
        f"fan-out of a new {part['services']}-service set ({part['response_bytes'] / 1e6:.1f} MB)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    path = out / "fanout.png"
    _finish(fig, results, "Fan-out vs a bare gRPC server sending the same bytes", path)
    return path


def istiod_cpu(results: dict[str, Any], out: Path) -> Path | None:
    part = results["parts"].get("istiod_cpu", {})
    if "versions" not in part:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.2))
    values = [part["versions"]["cpu_seconds"], part["salted"]["cpu_seconds"]]
    ax.bar(
        ["our content versions\n(1 of N changed)", "every version changed\n(no versions)"],
        values,
        color=[OURS, BASE],
    )
    for x, v in enumerate(values):
        ax.annotate(f"{v:.2f}s", (x, v), textcoords="offset points", xytext=(0, 3), ha="center")
    ax.set_ylabel("istiod CPU seconds per push (median)")
    ax.set_title(
        f"istiod taking a push of {part['services']} ServiceEntries, one changed", fontsize=9
    )
    ax.grid(True, axis="y", alpha=0.3)
    path = out / "istiod_cpu.png"
    _finish(fig, results, "What content versions save istiod", path)
    return path


def shards_istiod(results: dict[str, Any], out: Path) -> Path | None:
    """Part f with shards: istiod CPU and bytes per one-service change, per shard count."""
    part = results["parts"].get("istiod_cpu", {}).get("sharded", {})
    layouts = part.get("layouts", {})
    if not layouts:
        return None
    keys = sorted(layouts, key=int)
    fig, (cpu, wire) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = range(len(keys))
    width = 0.38
    amortized = [layouts[k]["cpu_seconds_amortized"] for k in keys]
    medians = [layouts[k]["cpu_seconds_median"] for k in keys]
    cpu.bar([x - width / 2 for x in xs], amortized, width, color=OURS, label="amortized")
    cpu.bar([x + width / 2 for x in xs], medians, width, color=BASE, label="median push")
    for x, k, v in zip(xs, keys, amortized, strict=True):
        ratio = layouts[k].get("cpu_ratio", 1.0)
        cpu.annotate(f"{v:.3f}s\n{ratio:.3f}x", (x - width / 2, v), textcoords="offset points",
                     xytext=(0, 3), ha="center", fontsize=8)  # fmt: skip
    cpu.set_xticks(list(xs), [f"{k} source(s)" for k in keys])
    cpu.margins(y=0.15)  # room for the labels
    cpu.set_ylabel("istiod CPU seconds per push")
    cpu.set_title(
        f"istiod CPU per one-change push, {part['services']} services "
        "(amortized: Go's collections included)",
        fontsize=9,
    )
    cpu.legend(fontsize=8)
    cpu.grid(True, axis="y", alpha=0.3)
    sent = [layouts[k]["bytes_per_change"] / 1e6 for k in keys]
    wire.bar(list(xs), sent, color=OURS)
    for x, v in zip(xs, sent, strict=True):
        wire.annotate(f"{v:.2f} MB", (x, v), textcoords="offset points", xytext=(0, 3),
                      ha="center", fontsize=8)  # fmt: skip
    wire.set_xticks(list(xs), [f"{k} source(s)" for k in keys])
    wire.margins(y=0.1)
    wire.set_ylabel("MB sent per one-service change")
    wire.set_title("bytes on the wire per one-service change", fontsize=9)
    wire.grid(True, axis="y", alpha=0.3)
    path = out / "shards_istiod_cpu.png"
    _finish(fig, results, "istiod reading the set as N shards: the cost of one change", path)
    return path


def istiod_churn(results: dict[str, Any], out: Path) -> Path | None:
    """Part g: per scale and pattern, the sidecar lag CDF and istiod's CPU over time, per
    shard count."""
    scales = results["parts"].get("istiod_churn", {}).get("scales", {})
    rows = [
        (scale, pattern, entry["layouts"])
        for scale, entry in sorted(scales.items(), key=lambda kv: int(kv[0]))
        for pattern in next(iter(entry["layouts"].values()))["patterns"]
    ]
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), 2, figsize=(12, 4 * len(rows)), squeeze=False)
    for (scale, pattern, layouts), (lag, cpu) in zip(rows, axes, strict=True):
        for (shards, layout), color in zip(
            sorted(layouts.items(), key=lambda kv: int(kv[0])), (BASE, *SHARD_COLORS), strict=False
        ):
            run = layout["patterns"][pattern]
            p99 = shown(run["lag"]["p99"], ".2f", "s")
            _cdf(lag, run["cdf"], f"{shards} source(s): p99 {p99}", color, 1.0)
            timeline = run["cpu_timeline"]
            cpu.plot(
                [t[0] for t in timeline],
                [t[1] for t in timeline],
                "-",
                color=color,
                label=f"istiod, {shards} source(s): {run['istiod_cpu_per_second']:.2f} CPU-s/s",
            )
            cpu.plot([t[0] for t in timeline], [t[2] for t in timeline], ":", color=color,
                     label=f"mcpserver, {shards} shard(s)")  # fmt: skip
        lag.axvline(1.0, color="#7f8c8d", linestyle="--", linewidth=0.8)
        lag.set_xscale("log")
        lag.xaxis.set_minor_formatter(NullFormatter())
        lag.set_xlabel("ZooKeeper ack -> a sidecar's endpoints from istiod, seconds")
        lag.set_ylabel("fraction of writes")
        what = pattern.replace("@", ", ") + "/s"
        lag.set_title(f"{int(scale):,} services, {what}: lag at the sidecar", fontsize=9)
        lag.grid(True, which="both", alpha=0.3)
        lag.legend(fontsize=8)
        cpu.set_xlabel("seconds since the first write")
        cpu.set_ylabel("CPU seconds per second")
        cpu.set_title(f"{int(scale):,} services, {what}: CPU over time", fontsize=9)
        cpu.grid(True, alpha=0.3)
        cpu.legend(fontsize=7)
    path = out / "istiod_churn.png"
    _finish(fig, results, "Churn with the real istiod consuming: one source vs shards", path)
    return path


def draw(results: dict[str, Any], out: Path) -> list[Path]:
    """Every figure the results allow; returns the files written."""
    figures = (
        cold_start, memory, change_latency, churn, fanout, istiod_cpu, shards_istiod, istiod_churn,
    )  # fmt: skip
    drawn = [f(results, out) for f in figures]
    return [p for p in drawn if p is not None]


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/bench")
    for path in draw(json.loads((out / "results.json").read_text()), out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
