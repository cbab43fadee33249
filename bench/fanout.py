"""Part (d), fan-out: the time from the server publishing a whole new 10k-service set until
each of 1, 8 and 32 istiod-like clients holds it, beside a bare grpc.aio server sending the
very same bytes (captured from our server's responses) to as many clients.

The clock starts at the publish: for mcpserver, a listener on its snapshot store stamps it;
for the bare server, the call that hands the bytes to every stream. What comes before (the
rebuild of 10k services) is not fan-out and is measured elsewhere. The clients live in one
subprocess (bench/swarm.py), the same for both servers. Ours runs in the suite's process
with serve's settings (bench/inprocess.py); the bare server in a process of its own
(bench/bareads.py) with CPython's and glibc's defaults, as anyone would run it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from bench.context import Bench
from bench.inprocess import InProcessServer, services
from bench.lines import LineProcess
from bench.stats import median, summary
from bench.workload import Estate, address

SETS = (12, 14)
"""First octets of the two sets the server alternates between (every endpoint changes)."""


class SwarmProcess(LineProcess):
    """The swarm subprocess (bench/swarm.py)."""

    name = "swarm"

    @classmethod
    async def start(
        cls, port: int, clients: int, first: str, within: float, dump: Path | None
    ) -> SwarmProcess:
        command = [sys.executable, "-m", "bench.swarm", "--port", str(port)]
        command += ["--clients", str(clients), "--marker", first, "--within", str(within)]
        if dump is not None:
            command += ["--dump", str(dump)]
        swarm = await cls.spawn(command)
        await swarm._expect_event("ready")
        return swarm

    async def arm(self, marker: str, dump: Path | None) -> None:
        await self._send(f"expect {marker}" + (f" {dump}" if dump else ""))
        await self._expect_event("armed")

    async def held(self) -> list[float]:
        arrivals: list[float] = (await self._expect_event("held"))["arrivals"]
        return arrivals


class BareProcess(LineProcess):
    """The bare server's subprocess (bench/bareads.py), serving the sets in `payloads`."""

    name = "bare server"

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        super().__init__(process)
        self.port = 0
        self.octets: list[int] = []

    @classmethod
    async def start(cls, payloads: dict[int, Path], first: int) -> BareProcess:
        octets = [first, *(octet for octet in payloads if octet != first)]
        command = [sys.executable, "-m", "bench.bareads", *(str(payloads[o]) for o in octets)]
        bare = await cls.spawn(command)
        bare.octets = octets
        bare.port = (await bare._expect_event("ready"))["port"]
        return bare

    async def publish(self, octet: int) -> float:
        """Hand set `octet` to every stream; when that call was made, in its process."""
        await self._send(f"publish {self.octets.index(octet)}")
        at: float = (await self._expect_event("published"))["at"]
        return at


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
    bare = await BareProcess.start(dumps, SETS[0])
    current = SETS[0]
    try:
        for clients in config.fanout_clients:
            times, current = await rounds(bench, bare.port, clients, current, bare.publish, dumps)
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
        await bare.quit()
    result["response_bytes"] = dumps[SETS[0]].stat().st_size
    return result
