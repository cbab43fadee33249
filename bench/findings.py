"""The suite's findings from its measured parts: each target with its figure, the baseline
measured in the same run and a verdict (`summarize`), the page docs/bench/README.md shows
them on (`markdown`), and how a run's parts replace an earlier run's (`merge`).

Pure: it reads result dictionaries only, so the unit tests of figures
(tests/unit/test_bench_figures.py) load none of the parts that start servers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.coldstart import SOURCES
from bench.stats import is_figure, shown


def _row(target: str, measured: str, baseline: str, goal: str, met: bool | None) -> dict[str, Any]:
    return {"target": target, "measured": measured, "baseline": baseline, "goal": goal, "met": met}


def _ms(seconds: object) -> str:
    return shown(seconds, ".1f", " ms", 1e3)


def _s(seconds: object) -> str:
    return shown(seconds, ".3f", " s")


def _at_most(value: object, limit: float) -> bool | None:
    """value <= limit, or None (no verdict) where the figure is missing."""
    return value <= limit if is_figure(value) else None


def _baseline(source: str, base: str, entry: dict[str, Any]) -> str:
    """What the baseline did; a ZooKeeper entry measured before issue 29 says the old walk."""
    if source == "zookeeper" and "walk" not in entry["baseline"]:
        return "async kazoo walk, all listings in flight + bare build"
    return base


def _walk(baseline: dict[str, Any]) -> str:
    """Which ZooKeeper walk the baseline figure is (client, window, stat or not)."""
    walk = baseline.get("walk")
    if not walk:
        return ""
    if walk == "previous":
        return ": all listings in flight, the whole walk held, then built"
    client, window, *rest = walk.split(":")
    return f": {client} client, {window} in flight, {'no stat' if rest else 'with stat'}"


def _previous(entry: dict[str, Any], key: str, spec: str, unit: str) -> str:
    """The baseline before issue 29 beside the new one, where it was measured."""
    previous = entry.get("previous_baseline")
    if not previous:
        return ""
    return (
        f"; previous baseline (all listings in flight, whole walk held) "
        f"{shown(previous[key], spec, unit)} = {shown(previous['ratio'], '.2f', 'x')}"
    )


def _previous_rss(entry: dict[str, Any]) -> str:
    if "previous_baseline_mib" not in entry:
        return ""
    return (
        f"; previous baseline {shown(entry['previous_baseline_mib'], '.0f', ' MiB')} = "
        f"{shown(entry.get('previous_ratio'), '.2f', 'x')}"
    )


def _latency(entry: dict[str, Any]) -> str:
    """Part b's figure for one server: from the write call, and from the ack. Results from
    before the write call was the origin kept `ours` from the ack, `ours_from_write` beside."""
    figures = entry["all"]
    write = figures.get("ours_from_write", figures["ours"])
    ack = figures["ours"] if "ours_from_write" in figures else figures.get("ours_from_ack", {})
    timed_out = entry.get("timed_out", 0)
    late = f"; {timed_out} timed out (counted as the time waited)" if timed_out else ""
    return (
        f"p50 {_ms(write['p50'])}, p99 {_ms(write['p99'])} from the write call (p99 "
        f"{_ms(ack.get('p99'))} from the ack){late}"
    )


def summarize(parts: dict[str, Any]) -> list[dict[str, Any]]:
    """The table of issue 17's targets: each with its figure, baseline and verdict."""
    rows: list[dict[str, Any]] = []
    cold = parts.get("cold_start", {})
    for source, (label, base) in SOURCES.items():
        for scale, entry in sorted(cold.get(source, {}).items(), key=lambda kv: int(kv[0])):
            rows.append(
                _row(
                    f"(a) cold start, {label}, {int(scale):,} services",
                    shown(entry["ours"]["seconds"], ".2f", " s"),
                    f"{shown(entry['baseline']['seconds'], '.2f', ' s')} "
                    f"({_baseline(source, base, entry)}{_walk(entry['baseline'])})"
                    f"{_previous(entry, 'seconds', '.2f', ' s')}",
                    "<= 1.5x baseline",
                    _at_most(entry.get("ratio"), 1.5),
                )
            )
    memory = parts.get("memory", {})
    for source, (label, _) in SOURCES.items():
        for scale, entry in sorted(memory.get(source, {}).items(), key=lambda kv: int(kv[0])):
            rows.append(
                _row(
                    f"(e) peak RSS, {label}, {int(scale):,} services",
                    shown(entry["ours_mib"], ".0f", " MiB"),
                    f"{shown(entry['baseline_mib'], '.0f', ' MiB')} (bare build"
                    f"{_walk({'walk': entry.get('baseline_walk')})})"
                    f"{_previous_rss(entry)}",
                    "<= 2x baseline",
                    _at_most(entry.get("ratio"), 2.0),
                )
            )
    change = parts.get("change_latency", {})
    servers = [("", change)] if "all" in change else []
    servers += [
        (f", {shards} shards", entry)
        for shards, entry in sorted(change.get("shards", {}).items(), key=lambda kv: int(kv[0]))
    ]
    for sharded, entry in servers:
        kazoo = entry["all"]["kazoo_watch"]
        rows.append(
            _row(
                f"(b) change latency, {change['services']:,} services, debounce 0{sharded}",
                _latency(entry),
                f"kazoo watch p50 {_ms(kazoo['p50'])}, p99 {_ms(kazoo['p99'])} "
                "(from the write call)",
                "p99 <= 2x kazoo p99 + 10 ms",
                entry["target"]["met"],
            )
        )
    for debounce, run in parts.get("churn", {}).get("runs", {}).items():
        lag, kazoo = run["lag"]["ours"], run["lag"]["kazoo_watch"]
        rate, seconds = run["rate_achieved"], run["seconds"]
        cpu = run.get("cpu_ms_per_write", {})  # absent from results before it was measured
        cpu_ours = f"; CPU {shown(cpu['ours'], '.2f', ' ms')} per write" if cpu else ""
        cpu_kazoo = f"; CPU {shown(cpu['kazoo_watch'], '.2f', ' ms')} per write" if cpu else ""
        since = run.get("lag_from", "the ack")
        lost = f"; {lag['censored']:.0f} never seen" if lag.get("censored") else ""
        rows.append(
            _row(
                f"(c) churn {rate:.0f}/s for {seconds:.0f} s, debounce {debounce}",
                f"lag p50 {_s(lag['p50'])}, p99 {_s(lag['p99'])} from {since}{lost}; "
                f"final equal: {run['final_equal']}{cpu_ours}",
                f"kazoo watcher p50 {_s(kazoo['p50'])}, p99 {_s(kazoo['p99'])}{cpu_kazoo}",
                "p99 < 1 s, final state exact"
                + (" (target: default debounce)" if debounce != "default" else ""),
                run["target"]["met"],
            )
        )
    for clients, entry in sorted(
        parts.get("fanout", {}).get("clients", {}).items(), key=lambda kv: int(kv[0])
    ):
        rows.append(
            _row(
                f"(d) fan-out of a new set to {clients} client(s)",
                _s(entry["ours"]["p50"]),
                f"{_s(entry['bare']['p50'])} (bare grpc.aio, same bytes)",
                "on par (<= 1.5x)",
                _at_most(entry.get("ratio"), 1.5),
            )
        )
    istiod = parts.get("istiod_cpu", {})
    if "versions" in istiod:
        rows.append(
            _row(
                f"(f) istiod CPU per push, {istiod['services']:,} ServiceEntries, one changed",
                f"{istiod['versions']['cpu_seconds']:.3f} s (our content versions)",
                f"{istiod['salted']['cpu_seconds']:.3f} s (every version changed)",
                "report",
                None,
            )
        )
    rows += sharded_rows(parts)
    for source, (label, _) in SOURCES.items():
        entry = cold.get(source, {}).get("50000")
        if entry:
            ours, base = entry["ours"], entry["baseline"]
            rows.append(
                _row(
                    f"50k services x {ours['endpoints'] // 50000} served from {label}",
                    f"{ours['seconds']:.1f} s to the full set, {ours['peak_rss_mib']:.0f} MiB",
                    f"{base['seconds']:.1f} s, {base['peak_rss_mib']:.0f} MiB",
                    "served; report",
                    True,
                )
            )
    return rows


def sharded_rows(parts: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 23's targets: istiod reading N shards (part f), churn with istiod (part g)."""
    rows: list[dict[str, Any]] = []
    sharded = parts.get("istiod_cpu", {}).get("sharded", {})
    layouts = sharded.get("layouts", {})
    one = layouts.get("1")
    for shards, entry in sorted(layouts.items(), key=lambda kv: int(kv[0])):
        if one is None or shards == "1":
            continue
        pushes = len(entry["pushes"])
        rows.append(
            _row(
                f"(f) istiod CPU per one-change push, {sharded['services']:,} services, "
                f"{shards} shards",
                f"{entry['cpu_seconds_amortized']:.3f} s amortized over {pushes} pushes "
                f"(median {entry['cpu_seconds_median']:.3f} s; {entry['go_collections']} Go "
                f"collections) = {entry['cpu_ratio']:.3f}x",
                f"{one['cpu_seconds_amortized']:.3f} s (median "
                f"{one['cpu_seconds_median']:.3f} s; {one['go_collections']} collections), "
                "istiod reading 1 source",
                "<= 1/8 of N = 1" if shards == "16" else "report",
                entry["cpu_ratio"] <= 1 / 8 if shards == "16" else None,
            )
        )
        rows.append(
            _row(
                f"(f) bytes sent per one-service change, {shards} shards",
                f"{entry['bytes_per_change'] / 1e3:,.0f} kB = {entry['bytes_ratio']:.3f}x",
                f"{one['bytes_per_change'] / 1e3:,.0f} kB, 1 source",
                "<= 1/10 of N = 1" if shards == "16" else "report",
                entry["bytes_ratio"] <= 1 / 10 if shards == "16" else None,
            )
        )
    churn = parts.get("istiod_churn", {}).get("scales", {})
    for scale, entry in sorted(churn.items(), key=lambda kv: int(kv[0])):
        layouts = entry["layouts"]
        most = max(layouts, key=int)
        for pattern, goal in entry["targets"].items():
            run = layouts[most]["patterns"][pattern]
            base = layouts.get("1", {}).get("patterns", {}).get(pattern)
            what = f"{run['pattern']} {run['rate_achieved']:.0f}/s for {run['seconds']:.0f} s"
            load = run["load_average"]["end"][0]
            if "cpu" in goal and base is not None:
                spread = run["writes_spread"]
                rows.append(
                    _row(
                        f"(c) istiod CPU under churn, {int(scale):,} services, {what}, "
                        f"{most} shards",
                        f"{run['istiod_cpu_per_second']:.2f} CPU-s/s = "
                        f"{goal['cpu']['ratio']:.2f}x ({spread['shards_per_window']:.1f} of "
                        f"{most} shards written per {spread['window_seconds']:g} s; machine "
                        f"busy {run['machine_busy_share']:.0%}, load {load:.1f})",
                        f"{base['istiod_cpu_per_second']:.2f} CPU-s/s, 1 source (machine busy "
                        f"{base['machine_busy_share']:.0%}, load "
                        f"{base['load_average']['end'][0]:.1f})",
                        "<= 1/4 of N = 1" if goal["cpu"]["met"] is not None else "report",
                        goal["cpu"]["met"],
                    )
                )
            lag = run["lag"]
            baseline = "-"
            if base is not None and most != "1":
                baseline = (
                    f"1 source: p50 {base['lag']['p50']:.3f} s, p99 {base['lag']['p99']:.3f} s"
                )
            rows.append(
                _row(
                    f"(c) registry write -> sidecar endpoints from istiod, {int(scale):,} "
                    f"services, {what}, {most} shards",
                    f"p50 {lag['p50']:.3f} s, p99 {lag['p99']:.3f} s; final equal: "
                    f"{run['final_equal']}",
                    baseline,
                    "p99 < 1 s" if goal["end_to_end"]["met"] is not None else "report",
                    goal["end_to_end"]["met"],
                )
            )
    return rows


def _metric(run: dict[str, Any], key: str) -> float:
    """One of istiod's counters over a pass (`name{label=value}`), 0 if it did not move."""
    return float(run["istiod_metrics"].get(key, 0.0))


def _profiled(run: dict[str, Any]) -> str:
    """handleMCP's and GC marking's shares of istiod's CPU in the pass's profile."""
    found = run.get("istiod_profile_shares")
    if not found:
        return "-"
    mcp = next((v for k, v in found.items() if k.startswith("adsc.handleMCP")), 0.0)
    gc = next((v for k, v in found.items() if k.startswith("Go garbage")), 0.0)
    return f"{mcp:.0%}, {gc:.0%}"


def sharded_details(parts: dict[str, Any]) -> list[str]:
    """Issue 23's figures behind the summary rows: per layout, istiod's cost of one change
    (part f), and per churn pass what istiod, mcpserver and the machine did (part g)."""
    lines: list[str] = []
    layouts = parts.get("istiod_cpu", {}).get("sharded", {}).get("layouts", {})
    if layouts:
        lines += [
            "",
            "### istiod reading N sources: one changed service (part f)",
            "",
            "| sources | istiod CPU per push, amortized | median push | Go collections "
            "(CPU) | bytes per change | pushes sent on the service's shard only |",
            "|---|---|---|---|---|---|",
        ]
        for shards, e in sorted(layouts.items(), key=lambda kv: int(kv[0])):
            lines.append(
                f"| {shards} | {e['cpu_seconds_amortized']:.4f} s | "
                f"{e['cpu_seconds_median']:.4f} s | {e['go_collections']} "
                f"({e['go_collection_cpu_seconds']:.2f} s) | "
                f"{e['bytes_per_change'] / 1e3:,.0f} kB | "
                f"{e['pushes_on_the_home_shard_only']} of {len(e['pushes'])} |"
            )
    scales = parts.get("istiod_churn", {}).get("scales", {})
    for scale, entry in sorted(scales.items(), key=lambda kv: int(kv[0])):
        lines += [
            "",
            f"### Churn with the real istiod, {int(scale):,} services (part g)",
            "",
            "| sources | churn | istiod CPU-s/s (to converged) | mcpserver CPU-s/s | "
            "ZooKeeper + writer | machine busy (load) | sidecar lag p50 / p99 | final equal "
            "| shards written per 0.5 s | snapshots / ServiceEntry responses | istiod: "
            "config updates in, EDS pushes, Go collections | istiod profile: adsc.handleMCP, "
            "GC marking |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for shards, layout in sorted(entry["layouts"].items(), key=lambda kv: int(kv[0])):
            for run in layout["patterns"].values():
                spread = run["writes_spread"]
                lines.append(
                    f"| {shards} | {run['pattern']} {run['rate_achieved']:.0f}/s x "
                    f"{run['seconds']:.0f} s | {run['istiod_cpu_per_second']:.2f} "
                    f"({run['istiod_cpu_per_churn_second_to_converged']:.2f}) | "
                    f"{run['server_cpu_per_second']:.2f} | "
                    f"{run['zookeeper_cpu_per_second'] + run['writer_cpu_per_second']:.2f} | "
                    f"{run['machine_busy_share']:.0%} ({run['load_average']['end'][0]:.1f}) | "
                    f"{run['lag']['p50']:.2f} s / {run['lag']['p99']:.2f} s | "
                    f"{run['final_equal']} | {spread['shards_per_window']:.1f} of {shards} "
                    f"({spread['services_per_window']:.0f} services) | "
                    f"{run['server_snapshots']:.0f} / "
                    f"{sum(run['server_entry_responses_by_shard'].values()):.0f} | "
                    f"{_metric(run, 'pilot_inbound_updates_total{type=config}'):.0f}, "
                    f"{_metric(run, 'pilot_xds_pushes_total{type=eds}'):.0f}, "
                    f"{run['istiod_go_collections']} | {_profiled(run)} |"
                )
    return lines


def markdown(results: dict[str, Any], images: list[Path]) -> str:
    m = results["machine"]
    lines = [
        "# Benchmark results (issues 17 and 23)",
        "",
        "Generated by `make bench` (`python -m bench.suite`); every figure beside its baseline",
        "measured in the same run. Numbers: `results.json`.",
        "",
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['ram_mib'] / 1024:.0f} GiB RAM, kernel "
        f"{m['kernel']}; Python {m['python']}, grpcio {m['grpcio']}, protobuf {m['protobuf']}, "
        f"kazoo {m['kazoo']}, PyYAML {m['pyyaml']}, ZooKeeper {m.get('zookeeper', '?')}. Load "
        f"average at start {[round(x, 1) for x in m['load_average_start']]}, at end "
        f"{[round(x, 1) for x in m.get('load_average_end', [])]} (other work shares the machine). "
        f"Commit {m['git_head'][:12]}{' with uncommitted changes' if m['git_dirty'] else ''}.",
        "",
        "Runs (a part measured again replaces the earlier figures; cold start and memory are",
        "kept per scale):",
        "",
        *(
            f"- `{r['command']}`: {', '.join(r['parts'])}; {r['suite_seconds']:.0f} s, "
            f"finished {r['finished_at']}, mcpserver sources "
            f"{r['machine'].get('mcpserver_digest', '?')}, load average "
            f"{[round(x, 1) for x in r['machine']['load_average_start']]}"
            for r in results["runs"]
        ),
        "",
        "| target | measured | baseline (same run) | goal | met |",
        "|---|---|---|---|---|",
    ]
    for row in results["summary"]:
        verdict = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        cells = (row["target"], row["measured"], row["baseline"], row["goal"], verdict)
        lines.append("| " + " | ".join(cells) + " |")
    lines += sharded_details(results["parts"])
    failed = [p for p, r in results["parts"].items() if "error" in r]
    skipped = [f"{p}: {r['skipped']}" for p, r in results["parts"].items() if "skipped" in r]
    if failed:
        lines += ["", f"Failed parts (see results.json): {', '.join(failed)}."]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped) + "."]
    lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines) + "\n"


def clean(value: Any) -> Any:
    """NaN/inf are not JSON: written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def merge(previous: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """Parts measured now replace earlier ones; cold start and memory are merged per source
    and scale, so one scale can be measured on its own (e.g. 50k, capped from the full run);
    istiod churn per scale (a scale's shard counts and patterns always come from one run)."""
    parts = dict(previous)
    for name, part in measured.items():
        old = previous.get(name)
        fine = old and "error" not in old and "error" not in part and "skipped" not in part
        if name in ("cold_start", "memory") and fine:
            assert old is not None
            merged = {**old, **part}
            for source in SOURCES:
                if source in old and source in part:
                    merged[source] = {**old[source], **part[source]}
            parts[name] = merged
        elif name == "istiod_churn" and fine and "scales" in (old or {}):
            assert old is not None
            parts[name] = {**old, **part, "scales": {**old["scales"], **part["scales"]}}
        else:
            parts[name] = part
    return parts
