"""N istiod-like clients in one process of their own, for the fan-out part.

The clients run apart from the server under test (in-process mcpserver, or the bare
grpc.aio server) so they do not share its GIL, and identically for both, so the comparison
is of the servers. Each client's arrival is stamped with time.perf_counter(), which on Linux
is CLOCK_MONOTONIC and so comparable with the server process's own stamps.

Line protocol: prints `{"event": "ready"}` once every client holds a set containing the
--marker address (writing client 0's raw response to --dump if given); then reads commands
from stdin: `expect ADDRESS [DUMP]` answers `{"event": "armed"}`, and `{"event": "held",
"arrivals": [...]}` once every client holds a set containing ADDRESS (writing client 0's raw
response to DUMP if given); `quit` ends.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

from bench.lines import commands, say
from bench.probe import Arrival, Probe


def marker(address: str) -> bytes:
    """An endpoint address as protobuf frames it (WorkloadEntry.address is field 1): found
    only as that exact address, never as a prefix of a longer one."""
    data = address.encode()
    return b"\x0a" + bytes([len(data)]) + data


class Swarm:
    def __init__(self, port: int, clients: int) -> None:
        self.probes = [Probe(port) for _ in range(clients)]
        self.expected = b""
        self.held: list[float | None] = [None] * clients
        self.changed = asyncio.Event()
        for n, probe in enumerate(self.probes):
            probe.listeners.append(self._listener(n))

    def _listener(self, n: int) -> Callable[[Arrival], None]:
        def check(arrival: Arrival) -> None:
            if self.held[n] is None and self.expected and self.expected in arrival.raw:
                self.held[n] = arrival.at
                self.changed.set()

        return check

    def expect(self, address: str) -> None:
        self.expected = marker(address)
        self.held = [None] * len(self.probes)
        for n, probe in enumerate(self.probes):
            if probe.latest is not None and self.expected in probe.latest.raw:
                self.held[n] = probe.latest.at

    async def all_held(self, within: float) -> list[float]:
        async with asyncio.timeout(within):
            while any(h is None for h in self.held):
                self.changed.clear()
                await self.changed.wait()
        return [h for h in self.held if h is not None]


async def main_async(port: int, clients: int, first: str, within: float, dump: Path | None) -> None:
    swarm = Swarm(port, clients)
    swarm.expect(first)
    for probe in swarm.probes:
        probe.start()
    try:
        await swarm.all_held(within)
        if dump is not None:
            latest = swarm.probes[0].latest
            assert latest is not None
            await asyncio.to_thread(dump.write_bytes, latest.raw)
        say("ready")
        async for line in commands():
            swarm.expect(line[1])
            say("armed")
            arrivals = await swarm.all_held(within)
            if len(line) > 2:
                latest = swarm.probes[0].latest
                assert latest is not None
                await asyncio.to_thread(Path(line[2]).write_bytes, latest.raw)
            say("held", arrivals=arrivals)
    finally:
        for probe in swarm.probes:
            await probe.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.swarm")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--marker", required=True, help="an address the first set holds")
    parser.add_argument("--within", type=float, default=300.0)
    parser.add_argument("--dump", type=Path, help="write client 0's first full response here")
    args = parser.parse_args()
    asyncio.run(main_async(args.port, args.clients, args.marker, args.within, args.dump))
    return 0


if __name__ == "__main__":
    sys.exit(main())
