"""The JSON-lines protocol between the suite and the helper processes it drives in step
(the fan-out's swarm of clients, bench/swarm.py, and its bare server, bench/bareads.py):
the helper prints one JSON event per line and reads one command per line from stdin.

Both sides are here: `say` and `commands` for the helper, `LineProcess` for the suite."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any, Self


def say(event: str, **fields: object) -> None:
    """The helper's side: one event, flushed at once (the suite waits on it)."""
    print(json.dumps({"event": event, **fields}), flush=True)


async def commands() -> AsyncIterator[list[str]]:
    """The helper's side: each command from stdin as its words, until `quit` or the end.
    stdin is read on a thread, so the helper's loop keeps serving meanwhile."""
    loop = asyncio.get_running_loop()
    while words := (await loop.run_in_executor(None, sys.stdin.readline)).split():
        if words[0] == "quit":
            return
        yield words


class LineProcess:
    """The suite's side: a helper subprocess, its events and its commands."""

    name = "helper"

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def spawn(cls, command: list[str]) -> Self:
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        return cls(process)

    async def _expect_event(self, name: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited (status {await self.process.wait()})")
        event: dict[str, Any] = json.loads(line)
        if event.get("event") != name:
            raise RuntimeError(f"{self.name} said {event}, expected {name}")
        return event

    async def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def quit(self) -> None:
        await self._send("quit")
        await self.process.wait()
