"""Benchmark: the Nacos registry (gRPC API) against a real Nacos-protocol server (r-nacos).

Two figures, each beside a baseline measured in the same run:
- time to the first complete view (every service listed, subscribed and converted), as a
  ratio to a plain gRPC listing of the same services over one connection with the same
  client (`ServiceListRequest` pages, then one `ServiceQueryRequest` per service, 32 in
  flight, nothing converted);
- one change's latency: an instance's weight changed over the HTTP API until the registry's
  view shows it (Nacos' push, our conversion, a new view), median and worst of `--changes`,
  beside the same push's arrival at a plain subscriber (r-nacos delays pushes by 0.5-1 s).

    python -m bench.nacos [--services 2000] [--instances 10] [--changes 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from mcpserver.metrics import Metrics
from mcpserver.registry.nacos.client import Connection
from mcpserver.registry.nacos.config import NacosRegistrySettings
from mcpserver.registry.nacos.parser import ServiceKey, service_names
from mcpserver.registry.nacos.watcher import NacosRegistry, run_bounded
from testbed.nacos import RNacos, rnacos_binary


def address(i: int, j: int) -> str:
    return f"10.{i // 250}.{i % 250}.{j + 1}"


async def register_all(server: RNacos, services: int, instances: int) -> None:
    """Persistent instances over the HTTP API, 64 requests in flight."""
    semaphore = asyncio.Semaphore(64)
    async with aiohttp.ClientSession() as session:

        async def one(i: int, j: int) -> None:
            params = {
                "serviceName": f"svc-{i}",
                "ip": address(i, j),
                "port": "8080",
                "ephemeral": "false",
                "weight": "1",
            }
            async with (
                semaphore,
                session.post(server.address + "/nacos/v1/ns/instance", params=params) as reply,
            ):
                reply.raise_for_status()
                await reply.read()

        await asyncio.gather(*(one(i, j) for i in range(services) for j in range(instances)))


WINDOWS = (8, 32, 128, 512)
"""Queries in flight the baseline tries (issue 29: a baseline is the fastest of several
windows, not one fixed guess); the fastest counts."""


async def baseline(server: RNacos, page_size: int, window: int = 32) -> tuple[float, int]:
    """A plain listing: every service name, then every service's instances (`window`
    queries in flight), converted to nothing."""
    started = time.perf_counter()
    connection = Connection(f"127.0.0.1:{server.grpc_port}", "public", lambda _: None)
    await connection.open()
    keys: list[ServiceKey] = []
    number = 1
    while True:
        body = await connection.request(
            "ServiceListRequest",
            {
                "module": "naming",
                "namespace": "public",
                "groupName": "DEFAULT_GROUP",
                "pageNo": number,
                "pageSize": page_size,
            },
        )
        names = service_names(body, "DEFAULT_GROUP")
        keys += [ServiceKey("public", g, n) for g, n in names]
        if len(names) < page_size:
            break
        number += 1
    found = 0

    async def query(key: ServiceKey) -> None:
        nonlocal found
        reply = await connection.request(
            "ServiceQueryRequest",
            {
                "module": "naming",
                "namespace": key.namespace,
                "groupName": key.group,
                "serviceName": key.name,
                "cluster": "",
                "healthyOnly": False,
                "udpPort": 0,
            },
        )
        info: Any = reply.get("serviceInfo") or {}
        found += len(info.get("hosts") or [])

    await run_bounded(keys, query, window)
    elapsed = time.perf_counter() - started
    await connection.close()
    return elapsed, found


async def ours(server: RNacos, changes: int) -> tuple[float, int, int, list[float], list[float]]:
    settings = NacosRegistrySettings(
        kind="nacos", name="bench", address=server.address, list_interval=3600
    )
    registry = NacosRegistry(settings, Metrics(), {})
    changed = asyncio.Event()
    started = time.perf_counter()
    await registry.start(changed.set)
    while not registry.view().synced:
        changed.clear()
        await changed.wait()
    elapsed = time.perf_counter() - started
    view = registry.view()
    count, endpoints = len(view.services), sum(len(s.instances) for s in view.services)
    latencies: list[float] = []
    plain: list[float] = []
    pushed: dict[float, float] = {}  # weight seen by a plain subscriber -> when

    def on_push(info: Mapping[str, Any]) -> None:
        for host in info.get("hosts") or []:
            if host.get("ip") == address(7, 0):
                pushed.setdefault(float(host.get("weight", 0)), time.perf_counter())

    subscriber = Connection(f"127.0.0.1:{server.grpc_port}", "public", on_push)
    await subscriber.open()
    await subscriber.request(
        "SubscribeServiceRequest",
        {
            "module": "naming",
            "namespace": "public",
            "groupName": "DEFAULT_GROUP",
            "serviceName": "svc-7",
            "subscribe": True,
            "clusters": "",
        },
    )
    async with aiohttp.ClientSession() as session:
        for n in range(changes):
            weight = 2 + n
            target = "svc-7.default-group.public.nacos"
            params = {
                "serviceName": "svc-7",
                "ip": address(7, 0),
                "port": "8080",
                "ephemeral": "false",
                "weight": str(weight),
            }
            began = time.perf_counter()
            async with session.put(server.address + "/nacos/v1/ns/instance", params=params) as r:
                r.raise_for_status()
            while True:
                changed.clear()  # before looking: a change while we look still wakes us
                service = next(s for s in registry.view().services if s.name == target)
                if any(i.weight == weight * 100 for i in service.instances):
                    break
                await asyncio.wait_for(changed.wait(), 30)
            latencies.append(time.perf_counter() - began)
            plain.append(pushed.get(float(weight), time.perf_counter()) - began)
    await subscriber.close()
    await registry.stop()
    return elapsed, count, endpoints, latencies, plain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RNacos(rnacos_binary(), Path(tmp))
        server.start()
        try:
            began = time.perf_counter()
            asyncio.run(register_all(server, args.services, args.instances))
            registered = time.perf_counter() - began
            tried = {w: asyncio.run(baseline(server, 500, w)) for w in WINDOWS}
            window = min(tried, key=lambda w: tried[w][0])
            base, base_found = tried[window]
            elapsed, count, endpoints, latencies, plain = asyncio.run(ours(server, args.changes))
        finally:
            server.stop()
    result = {
        "services": args.services,
        "instances": args.services * args.instances,
        "register_seconds": round(registered, 2),
        "baseline_seconds": round(base, 3),
        "baseline_window": window,
        "baseline_windows": {w: round(t, 3) for w, (t, _) in tried.items()},
        "baseline_instances": base_found,
        "first_view_seconds": round(elapsed, 3),
        "ratio": round(elapsed / base, 2),
        "served_services": count,
        "served_endpoints": endpoints,
        "change_latency_median_ms": round(statistics.median(latencies) * 1000, 1),
        "change_latency_max_ms": round(max(latencies) * 1000, 1),
        "push_latency_median_ms": round(statistics.median(plain) * 1000, 1),
        "push_latency_max_ms": round(max(plain) * 1000, 1),
    }
    if args.json:
        json.dump(result, sys.stdout)
        print()
        return
    print(
        f"services={args.services} instances={result['instances']} "
        f"(registered in {registered:.1f}s)"
    )
    print(
        f"plain gRPC listing (list + one query per service, {window} in flight, the fastest "
        f"of {result['baseline_windows']}): {base:.2f}s (baseline)"
    )
    print(
        f"registry first complete view (subscribed, converted): {elapsed:.2f}s = "
        f"{result['ratio']}x; services={count} endpoints={endpoints}"
    )
    print(
        f"one change (weight via HTTP -> push -> view): median "
        f"{result['change_latency_median_ms']} ms, max {result['change_latency_max_ms']} ms "
        f"over {len(latencies)}; the same push at a plain subscriber (baseline): median "
        f"{result['push_latency_median_ms']} ms, max {result['push_latency_max_ms']} ms"
    )


if __name__ == "__main__":
    main()
