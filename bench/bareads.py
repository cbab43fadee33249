"""The fan-out baseline's server (bench/bare.py's BareAdsServer) in a process of its own.

The suite's process runs our server with `mcpserver serve`'s interpreter and allocator
settings (bench/inprocess.py), which last the process; a baseline run there afterwards
would run under them too. Here it runs as anyone would run a bare grpc.aio server:
CPython's and glibc's defaults.

Line protocol (bench/lines.py): prints `{"event": "ready", "port": N}` once serving the
first file given; then reads commands from stdin: `publish K` sends the K-th file given
(0-based) to every open stream and answers `{"event": "published", "at": T}`, T the
time.perf_counter() of the call that handed it over (CLOCK_MONOTONIC on Linux: comparable
with the swarm's stamps); `quit` ends.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import time
from pathlib import Path

from bench.bare import BareAdsServer
from bench.lines import commands, say
from bench.probe import SERVICE_ENTRY_URL


async def serve(payloads: list[bytes]) -> None:
    server = BareAdsServer(payloads[0], SERVICE_ENTRY_URL)
    await server.start()
    say("ready", port=server.port)
    loop = asyncio.get_running_loop()
    try:
        async for line in commands():
            payload = payloads[int(line[1])]
            at = time.perf_counter()
            server.publish(payload)
            # said after the stream's step (scheduled by the publish): it writes first
            loop.call_soon(functools.partial(say, "published", at=at))
    finally:
        await server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bareads")
    parser.add_argument("payloads", type=Path, nargs="+", help="raw DiscoveryResponses")
    args = parser.parse_args()
    asyncio.run(serve([path.read_bytes() for path in args.payloads]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
