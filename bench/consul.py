"""Benchmark: the Consul registry's first listing against a real Consul agent, as a ratio to
a baseline measured in the same run (one plain health query per service with the same client
library, `WINDOWS` tried for how many are in flight: the fastest counts. Before issue 29 all
were sent at once, which on one agent is not the fastest a client can do).

    python -m bench.consul [--services 500] [--instances 4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import consul.aio

from mcpserver.metrics import Metrics
from mcpserver.registry.consul.config import ConsulRegistrySettings
from mcpserver.registry.consul.watcher import ConsulRegistry
from testbed.builds import consul_binary
from testbed.consulagent import ConsulAgent

WINDOWS = (16, 64, 256, 0)
"""Health queries in flight the baseline tries; 0: all at once."""


async def baseline(port: int, names: list[str], window: int = 0) -> float:
    client = consul.aio.Consul(host="127.0.0.1", port=port)
    limit = asyncio.Semaphore(window or len(names) or 1)

    async def health(name: str) -> None:
        async with limit:
            await client.health.service(name, passing=True)

    started = time.perf_counter()
    await client.catalog.services()
    await asyncio.gather(*(health(name) for name in names))
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


async def ours(address: str) -> tuple[float, int]:
    settings = ConsulRegistrySettings(kind="consul", name="bench", address=address)
    registry = ConsulRegistry(settings, Metrics(), {})
    changed = asyncio.Event()
    started = time.perf_counter()
    await registry.start(changed.set)
    while not registry.view().synced:
        changed.clear()
        await changed.wait()
    elapsed = time.perf_counter() - started
    count = len(registry.view().services)
    await registry.stop()
    return elapsed, count


def register_all(agent: ConsulAgent, names: list[str], instances: int) -> None:
    """Straight into the catalog in transactions (agent registration syncs one by one)."""
    import json
    import urllib.request

    # on a node of their own: the agent's anti-entropy would delete services registered on
    # its own node that it does not know locally
    node = {"Node": {"Verb": "set", "Node": {"Node": "bench-external", "Address": "127.0.0.9"}}}
    operations = [node] + [
        {
            "Service": {
                "Verb": "set",
                "Node": "bench-external",
                "Service": {
                    "ID": f"{name}-{j}",
                    "Service": name,
                    "Address": f"10.{i // 250}.{i % 250}.{j + 1}",
                    "Port": 8080,
                },
            }
        }
        for i, name in enumerate(names)
        for j in range(instances)
    ]
    for start in range(0, len(operations), 64):
        request = urllib.request.Request(
            f"{agent.address}/v1/txn",
            data=json.dumps(operations[start : start + 64]).encode(),
            method="PUT",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=500)
    parser.add_argument("--instances", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # one connection per watched service: raise Consul's per-client limit (default 200)
        agent = ConsulAgent(
            consul_binary(), Path(tmp), extra_hcl=("limits { http_max_conns_per_client = 4096 }",)
        )
        agent.start()
        try:
            names = [f"svc-{i}" for i in range(args.services)]
            for i, name in enumerate(names):
                for j in range(args.instances):
                    agent.register(
                        Name=name,
                        ID=f"{name}-{j}",
                        Address=f"10.{i // 250}.{i % 250}.{j + 1}",
                        Port=8080,
                    )
            tried = {w: asyncio.run(baseline(agent.http_port, names, w)) for w in WINDOWS}
            window = min(tried, key=lambda w: tried[w])
            base = tried[window]
            elapsed, count = asyncio.run(ours(agent.address))
        finally:
            agent.stop()
    print(f"services={args.services} instances={args.services * args.instances}")
    shown = ", ".join(f"{w or 'all'}: {t:.2f}s" for w, t in tried.items())
    print(f"plain health queries, {window or 'all'} in flight: {base:.2f}s (baseline; {shown})")
    print(
        f"registry first listing (watches running, services built): {elapsed:.2f}s = "
        f"{elapsed / base:.2f}x; services={count}"
    )


if __name__ == "__main__":
    main()
