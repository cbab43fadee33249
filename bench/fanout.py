"""Part (d), fan-out: the time from the server publishing a whole new 10k-service set until
each of 1, 8 and 32 istiod-like clients holds it, beside a bare grpc.aio server sending the
very same bytes (captured from our server's responses) to as many clients.

The clock starts at the publish: for mcpserver, a listener on its snapshot store stamps it;
for the bare server, the call that hands the bytes to every stream. What comes before (the
rebuild of 10k services) is not fan-out and is measured elsewhere. The clients live in one
subprocess (bench/swarm.py), the same for both servers. Ours runs with serve's settings
(bench/inprocess.py); the bare server runs after it in the same process, so under the same
ones: a 1 ms switch interval, and large blocks reused from the heap.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.bare import BareAdsServer
from bench.context import Bench
from bench.inprocess import InProcessServer, services
from bench.probe import SERVICE_ENTRY_URL
from bench.stats import median, summary
from bench.workload import Estate, address

SETS = (12, 14)
"""First octets of the two sets the server alternates between (every endpoint changes)."""


class SwarmProcess:
    """The swarm subprocess and its line protocol."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(
        cls, port: int, clients: int, first: str, within: float, dump: Path | None
    ) -> SwarmProcess:
        command = [sys.executable, "-m", "bench.swarm", "--port", str(port)]
        command += ["--clients", str(clients), "--marker", first, "--within", str(within)]
        if dump is not None:
            command += ["--dump", str(dump)]
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        swarm = cls(process)
        await swarm._expect_event("ready")
        return swarm

    async def _expect_event(self, name: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"swarm exited (status {await self.process.wait()})")
        event: dict[str, Any] = json.loads(line)
        if event.get("event") != name:
            raise RuntimeError(f"swarm said {event}, expected {name}")
        return event

    async def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def arm(self, marker: str, dump: Path | None) -> None:
        await self._send(f"expect {marker}" + (f" {dump}" if dump else ""))
        await self._expect_event("armed")

    async def held(self) -> list[float]:
        arrivals: list[float] = (await self._expect_event("held"))["arrivals"]
        return arrivals

    async def quit(self) -> None:
        await self._send("quit")
        await self.process.wait()


async def rounds(
    bench: Bench,
    port: int,
    clients: int,
    current: int,
    publish: Any,
    dumps: dict[int, Path],
) -> tuple[list[dict[str, float]], int]:
    """Each round: arm the swarm for the other set, publish it, time until all hold it."""
    estate = Estate(bench.config.scale, bench.config.instances)

    def marker(octet: int) -> str:
        return address(estate.services - 1, estate.instances - 1, octet)

    first_dump = None if current in dumps else bench.workdir / f"fanout-set-{current}.bin"
    swarm = await SwarmProcess.start(
        port, clients, marker(current), bench.config.deadline, first_dump
    )
    if first_dump is not None:
        dumps[current] = first_dump
    times = []
    try:
        for _ in range(bench.config.fanout_rounds):
            target = SETS[1] if current == SETS[0] else SETS[0]
            dump = None if target in dumps else bench.workdir / f"fanout-set-{target}.bin"
            await swarm.arm(marker(target), dump)
            published = await publish(target)
            arrivals = await swarm.held()
            if dump is not None:
                dumps[target] = dump
            times.append({"all": max(arrivals) - published, "first": min(arrivals) - published})
            current = target
    finally:
        await swarm.quit()
    return times, current


async def run(bench: Bench) -> dict[str, Any]:
    config = bench.config
    estate = Estate(config.scale, config.instances)
    sets = {octet: services(estate, octet) for octet in SETS}
    dumps: dict[int, Path] = {}
    result: dict[str, Any] = {
        "what": "server publishes a new set of every service -> every client holds it",
        "baseline": "a bare grpc.aio server streaming the same bytes to as many clients",
        "services": estate.services,
        "clients": {},
    }
    server = InProcessServer(bench.scratch("fanout-ours"), sets[SETS[0]])
    await server.start()
    current = SETS[0]
    ours: dict[int, list[dict[str, float]]] = {}

    async def publish_ours(octet: int) -> float:
        return await server.next_publish(sets[octet], config.deadline)

    try:
        for clients in config.fanout_clients:
            ours[clients], current = await rounds(
                bench, server.port, clients, current, publish_ours, dumps
            )
            bench.log(
                f"fan-out ours {clients} clients: {[round(t['all'], 3) for t in ours[clients]]}"
            )
    finally:
        await server.stop()
    payloads = {octet: path.read_bytes() for octet, path in dumps.items()}
    bare = BareAdsServer(payloads[SETS[0]], SERVICE_ENTRY_URL)
    await bare.start()
    current = SETS[0]

    async def publish_bare(octet: int) -> float:
        at = time.perf_counter()
        bare.publish(payloads[octet])
        return at

    try:
        for clients in config.fanout_clients:
            times, current = await rounds(bench, bare.port, clients, current, publish_bare, dumps)
            ours_all = [t["all"] for t in ours[clients]]
            bare_all = [t["all"] for t in times]
            result["clients"][str(clients)] = {
                "ours": summary(ours_all),
                "ours_first": summary([t["first"] for t in ours[clients]]),
                "bare": summary(bare_all),
                "bare_first": summary([t["first"] for t in times]),
                "ratio": median(ours_all) / median(bare_all),
            }
            bench.log(f"fan-out bare {clients} clients: {[round(t, 3) for t in bare_all]}")
    finally:
        await bare.stop()
    result["response_bytes"] = len(payloads[SETS[0]])
    return result
