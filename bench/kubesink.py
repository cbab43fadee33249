"""The Kubernetes sink at scale against the real kube-apiserver (issue 26's figures).

`python -m bench.kubesink --scales 1000,10000 --out docs/bench/kubesink.json` measures, per
scale, beside a baseline taken in the same run on the same apiserver:
- first sync: from the first snapshot to the apiserver holding every object, against a bare
  loop of server-side applies of the very same objects (pre-built, same concurrency, no rate
  limit, no listing): the fastest anyone could write them;
- a restart: a new leader's sync that must write nothing (it lists what it owns);
- churn: `rate` services changed per second for `seconds`: writes per change and apiserver
  requests per second (from the sink's own count), and lag from a change to the apiserver
  holding it.
The sink runs unthrottled here (writes_per_second far above what the apiserver takes) so the
figure is its own cost; the default 100 writes/s makes a 10k first sync take 100 s by design.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.inprocess import FixedRegistry, service, services
from bench.workload import STATIC_NAMESPACE, Estate
from mcpserver.app import App
from mcpserver.metrics import Metrics
from mcpserver.settings import load_settings
from mcpserver.sink.client import KubeClient
from mcpserver.sink.objects import KINDS, desired, to_object
from testbed.builds import istio_module_dir, kube_binaries
from testbed.kube import ADMIN_TOKEN, ControlPlane

CONCURRENCY = 16
BASELINE_NAMESPACE = "bench-baseline"


def sink_config(directory: Path, plane: ControlPlane, owner: str) -> Path:
    token = directory / "token"
    token.write_text(ADMIN_TOKEN)
    config = directory / f"{owner}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"listen": "127.0.0.1:0", "admin": "127.0.0.1:0"},
                "log_level": "warning",
                "sink": ["mcp", "kubernetes"],
                "kubernetes": {
                    "apiserver": plane.server.url,
                    "token_file": str(token),
                    "ca_file": str(plane.server.cert),
                    "owner": owner,
                    "lease_namespace": STATIC_NAMESPACE,
                    "writes_per_second": 100000,
                    "burst": 1000,
                    "concurrency": CONCURRENCY,
                },
                "registries": [],
            }
        )
    )
    return config


async def baseline(app: App, plane: ControlPlane, directory: Path) -> float:
    """Seconds a bare loop takes to server-side apply the same objects (pre-built)."""
    snapshot = app.store.snapshot
    assert snapshot is not None
    objects = []
    for resource in desired(snapshot).values():
        obj = to_object(resource, "baseline")
        obj["metadata"]["namespace"] = BASELINE_NAMESPACE
        objects.append(obj)
    client = KubeClient(load_settings(sink_config(directory, plane, "baseline"), {}).kubernetes, {})
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def put(obj: dict[str, Any]) -> None:
        kind = KINDS[obj["kind"]]
        async with semaphore:
            await client.apply(
                kind.path(BASELINE_NAMESPACE, obj["metadata"]["name"]), obj, "baseline"
            )

    began = time.perf_counter()
    await asyncio.gather(*(put(o) for o in objects))
    took = time.perf_counter() - began
    for kind in KINDS.values():  # leave etcd as the measured run will find it
        await client.request("DELETE", kind.path(BASELINE_NAMESPACE))
    await client.close()
    return took


async def synced(app: App, within: float, after: str = "") -> float:
    """When the apiserver holds the current snapshot (one other than `after`)."""
    sink = app.sink
    assert sink is not None
    deadline = time.monotonic() + within
    while True:  # polled: the figure is when it holds, not when something is told
        snapshot = app.store.snapshot
        if (
            snapshot is not None
            and snapshot.version != after
            and sink.synced == snapshot.version
            and not sink.error
        ):
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"sink not synced in {within}s: {sink.status()['error']}")
        await asyncio.sleep(0.005)


async def scale(
    plane: ControlPlane, directory: Path, n: int, rate: int, seconds: float
) -> dict[str, Any]:
    estate = Estate(n)
    owner = f"bench-{n}"
    settings = load_settings(sink_config(directory, plane, owner), {})
    mcp_only = App(
        settings.model_copy(update={"sink": ["mcp"]}),
        Metrics(),
        [FixedRegistry(Metrics(), services(estate, 10))],
    )
    await mcp_only.start()
    await _published(mcp_only)
    baseline_seconds = await baseline(mcp_only, plane, directory)
    await mcp_only.stop()
    metrics = Metrics()
    current = services(estate, 10)
    registry = FixedRegistry(metrics, list(current))
    app = App(settings, metrics, [registry])
    began = time.perf_counter()
    await app.start()
    await _published(app)
    first_snapshot = time.perf_counter()
    await synced(app, within=1800)
    first_sync = time.perf_counter() - first_snapshot
    assert app.sink is not None
    result: dict[str, Any] = {
        "objects": len(desired(app.store.snapshot)) if app.store.snapshot else 0,
        "first_snapshot_seconds": first_snapshot - began,
        "first_sync_seconds": first_sync,
        "first_sync_requests": app.sink.client.requests,
    }
    result["baseline_seconds"] = baseline_seconds
    result["first_sync_ratio"] = first_sync / result["baseline_seconds"]

    # churn: `rate` services a second, each change one edit of one service
    requests, writes = app.sink.client.requests, app.sink.writes
    lags: list[float] = []
    moved: set[int] = set()
    start = time.perf_counter()
    step = 0
    while time.perf_counter() - start < seconds:
        i = step % n
        moved ^= {i}
        step += 1
        current[i] = service(estate, i, 10, moved=i in moved)
        before = app.store.snapshot.version if app.store.snapshot else ""
        changed = time.perf_counter()
        registry.replace(list(current))
        if step % rate == 0:  # once a second: how long until the apiserver holds it
            lags.append(await synced(app, within=120, after=before) - changed)
        else:
            await asyncio.sleep(max(0.0, start + step / rate - time.perf_counter()))
    await synced(app, within=120)
    elapsed = time.perf_counter() - start
    result["churn"] = {
        "rate": rate,
        "seconds": elapsed,
        "changes": step,
        "writes": app.sink.writes - writes,
        "writes_per_change": (app.sink.writes - writes) / step,
        "requests_per_second": (app.sink.client.requests - requests) / elapsed,
        "lag_p50": statistics.median(lags) if lags else None,
        "lag_max": max(lags) if lags else None,
    }
    await app.stop()

    # a restart: a new leader lists what it owns and writes nothing unchanged
    again_metrics = Metrics()
    again = App(settings, again_metrics, [FixedRegistry(again_metrics, list(current))])
    began = time.perf_counter()
    await again.start()
    await synced(again, within=600)
    assert again.sink is not None
    result["restart"] = {
        "seconds": time.perf_counter() - began,
        "writes": again.sink.writes,
        "requests": again.sink.client.requests,
    }
    await again.stop()
    return result


async def _published(app: App) -> None:
    published = asyncio.Event()
    unsubscribe = app.store.subscribe(published.set)
    if app.store.snapshot is None:
        await published.wait()
    unsubscribe()


async def run(scales: list[int], rate: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kubesink-") as scratch:
        directory = Path(scratch)
        plane = ControlPlane(kube_binaries(), directory / "kube")
        crds = istio_module_dir() / "manifests" / "charts" / "base" / "files" / "crd-all.gen.yaml"
        await asyncio.to_thread(plane.start, crds)
        try:
            kubectl = plane.kubectl()
            kubectl.ensure_namespace(STATIC_NAMESPACE)
            kubectl.ensure_namespace(BASELINE_NAMESPACE)
            return {str(n): await scale(plane, directory, n, rate, seconds) for n in scales}
        finally:
            plane.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="1000", help="comma list of service counts")
    parser.add_argument("--rate", type=int, default=20, help="changed services per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="churn duration")
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    args = parser.parse_args()
    scales = [int(s) for s in args.scales.split(",")]
    figures = asyncio.run(run(scales, args.rate, args.seconds))
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
