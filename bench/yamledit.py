"""A one-service edit of a large static YAML file, and the admin server's latency meanwhile
(issue 29's figures).

`python -m bench.yamledit --services 10000 --edits 10 --out docs/bench/yamledit.json` writes
the estate as one YAML file, starts `mcpserver serve` on it (a process of its own, as
deployed), and once it is ready replaces the file `edits` times, each time with one service's
instance moved to a fresh address, as an editor or a config-management run would. Per edit:
from the file's replacement to the server's next snapshot build (polled from /metrics), and
the server's CPU. Throughout, a thread asks /healthz every 10 ms: its latency during the edits
beside the same during as long an idle window before them (the baseline: the admin server of
this process when nothing happens). Beside the edit's CPU, in this process: libyaml parsing
the whole file (what an edit cost before files were read entry by entry) and the changed
entry alone (the least any reader could parse).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench.machine import describe as describe_machine
from bench.process import ServerProcess, bench_settings, cpu_seconds
from bench.scrape import total
from bench.workload import Estate, fresh_address, static_entry, write_static

POLL = 0.01
DEADLINE = 120.0


class HealthProbe:
    """A thread asking /healthz every POLL seconds, keeping (when asked, seconds taken)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/healthz"
        self.samples: list[tuple[float, float]] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as response:
                    response.read()
                self.samples.append((at, time.perf_counter() - at))
            except OSError:
                self.failures += 1
            self._stop.wait(POLL)

    def between(self, start: float, end: float) -> list[float]:
        return [taken for at, taken in self.samples if start <= at < end]


def latency_summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    if not ordered:
        return {"count": 0}
    return {
        "count": len(ordered),
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max_ms": 1000 * ordered[-1],
    }


def builds(server: ServerProcess) -> float:
    return total(server.metrics(), "mcpserver_snapshot_builds_total")


def wait_for(condition: Any, what: str, within: float = DEADLINE) -> None:
    """Poll `condition` every 50 ms (a scrape of /metrics each: not every 10 ms, which would
    load the admin server the probe measures) until it holds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def edited_text(estate: Estate, service: int, counter: int) -> str:
    """The estate's file with service `service`'s first instance at a fresh address."""
    entries = [static_entry(i, estate.instances) for i in range(estate.services)]
    first = static_entry(service, estate.instances).split("\n")
    first[4] = first[4].replace(
        first[4].split("address: ")[1].split(",")[0], fresh_address(counter)
    )
    entries[service] = "\n".join(first)
    return "\n".join(["services:", *entries]) + "\n"


def replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def reference_parses(path: Path, estate: Estate) -> dict[str, float]:
    """libyaml's parse of the whole file and of one entry, seconds of CPU (best of 3)."""
    loader = yaml.CSafeLoader
    text = path.read_text()
    entry = "services:\n" + static_entry(estate.services // 2, estate.instances) + "\n"

    def best(source: str, times: int) -> float:
        runs = []
        for _ in range(3):
            start = time.process_time()
            for _ in range(times):
                yaml.load(source, Loader=loader)
            runs.append((time.process_time() - start) / times)
        return min(runs)

    return {"whole_file_s": best(text, 1), "one_entry_s": best(entry, 200)}


def run(services: int, edits: int, directory: Path) -> dict[str, Any]:
    estate = Estate(services)
    path = directory / "services.yaml"
    write_static(path, estate)
    registry = {"kind": "static", "name": "files", "path": str(path), "namespace": "bench"}
    settings = bench_settings(directory, [registry], None)
    settings["registries"][0]["poll_interval"] = "1s"
    texts = [edited_text(estate, (k * 997) % services, k) for k in range(edits)]
    result: dict[str, Any] = {"services": services, "instances": estate.instances}
    with ServerProcess(directory, settings) as server:
        wait_for(server.ready, "the first snapshot")
        result["first_load_s"] = time.perf_counter() - server.spawned_at
        probe = HealthProbe(server.admin_port)
        probe.start()
        idle_start = time.perf_counter()
        done: list[tuple[float, float, float, float]] = []  # start, end, seconds, cpu
        try:
            for text in texts:
                # idle first: at least as long as the last edit took (the baseline's window)
                time.sleep(max(1.5, done[-1][2] if done else 1.5))
                before, cpu = builds(server), cpu_seconds(server.pid)
                start = time.perf_counter()
                replace(path, text)
                wait_for(lambda b=before: builds(server) > b, "the edit's snapshot")
                end = time.perf_counter()
                done.append((start, end, end - start, cpu_seconds(server.pid) - cpu))
        finally:
            probe.stop()
        during = [s for start, end, _, _ in done for s in probe.between(start, end)]
        idle_starts = [idle_start, *(end for _, end, _, _ in done[:-1])]
        idle = [
            s
            for a, (b, _, _, _) in zip(idle_starts, done, strict=True)
            for s in probe.between(a, b)
        ]
    # an edit's seconds include up to one poll interval (1 s) before the server looks
    result["edits"] = [{"seconds": e[2], "cpu_seconds": e[3]} for e in done]
    result["edit_cpu_seconds"] = {
        "median": statistics.median(e[3] for e in done),
        "max": max(e[3] for e in done),
    }
    result["healthz_during_edits"] = latency_summary(during)
    result["healthz_idle_baseline"] = latency_summary(idle)
    result["healthz_failures"] = probe.failures
    result["libyaml"] = reference_parses(path, estate)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--edits", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    machine = describe_machine()  # the load average before the run
    with tempfile.TemporaryDirectory(prefix="mcpserver-yamledit-") as scratch:
        result = run(args.services, args.edits, Path(scratch))
    result["machine"] = machine
    result["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
