"""A loopback TCP forwarder whose target can be changed: the one address istiod dials,
standing in for a Kubernetes Service in front of mcpserver replicas. New connections go to
the current target; open ones stay where they are until either side closes (a replica
killed closes its own)."""

from __future__ import annotations

import asyncio
import contextlib


class Forwarder:
    """127.0.0.1:<port> -> 127.0.0.1:<target>."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.connections: list[int] = []  # the target each connection went to, in order
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def point_at(self, target: int) -> None:
        self.target = target

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        target = self.target
        self.connections.append(target)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
            except OSError:
                writer.close()
                return
            await asyncio.gather(
                pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True
            )
        finally:
            self._tasks.discard(task)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy `reader` to `writer` until it ends, then close `writer` (one direction of a
    proxied connection; tlsproxy.py uses it too)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()
