"""The ADS stream handler: state of the world, one stream per istiod connection.

Two sources drive a stream: requests from istiod and new snapshots from the store. This module
only moves them: a reader task pulls requests from gRPC into a bounded intake, the store's
wake-up sets one coalesced "snapshot changed" flag there, and the loop takes one item at a
time, asks protocol.reduce() what it means and carries out the effects (yield a pre-serialized
DiscoveryResponse, abort the stream, or tell the callbacks). Every decision is in reduce().

The intake holds at most MAX_PENDING_REQUESTS requests: while one waits, the reader stops
pulling from gRPC, so HTTP/2 flow control pushes back on a client that sends faster than we
answer, instead of our memory growing (istiod's own server keeps one pending request per
stream too, pkg/xds/server.go). Snapshot wake-ups never queue up: they are one flag.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Final

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from mcpserver.metrics import Metrics
from mcpserver.xds.callbacks import (
    ClientInfo,
    Clients,
    DefaultCallbacks,
    EndedByServer,
    StreamCallbacks,
)
from mcpserver.xds.protocol import (
    Abort,
    Nacked,
    NodeLearned,
    Request,
    Send,
    SnapshotChanged,
    StreamState,
    reduce,
)
from mcpserver.xds.shards import WHOLE
from mcpserver.xds.store import SnapshotSource

# Clients and ClientInfo live in callbacks.py; app.py and admin.py import them from here.
__all__ = [
    "DEFAULT_SEND_TIMEOUT",
    "MAX_PENDING_REQUESTS",
    "AdsHandler",
    "ClientInfo",
    "Clients",
    "Intake",
    "request_event",
]

MAX_PENDING_REQUESTS: Final = 1
DEFAULT_SEND_TIMEOUT: Final = 60.0
"""Seconds a response may wait for the client to take it (server.send_timeout)."""


class _Snapshot:
    """The intake item for "the store published since the loop last looked"."""


SNAPSHOT: Final = _Snapshot()


@dataclass(frozen=True, slots=True)
class End:
    """The intake item for "no more requests": `error` is None when the client closed."""

    error: BaseException | None


class Intake:
    """Where the reader task and the stream loop meet: few requests, one snapshot flag.

    The reader awaits put(), which returns only once fewer than `limit` requests wait; the
    loop awaits take(). A snapshot flag is taken before requests, so a request is always
    decided against the latest snapshot and never answered with an older one first.
    """

    def __init__(self, limit: int = MAX_PENDING_REQUESTS) -> None:
        self._limit = limit
        self._requests: deque[discovery_pb2.DiscoveryRequest] = deque()
        self._snapshot = False
        self._end: End | None = None
        self._ready = asyncio.Event()  # the loop has something to take
        self._room = asyncio.Event()  # the reader may put a request
        self._room.set()

    @property
    def pending(self) -> int:
        """Requests read from gRPC and not yet taken by the loop."""
        return len(self._requests)

    async def put(self, request: discovery_pb2.DiscoveryRequest) -> int:
        """Hold a request for the loop, after waiting for room; returns the pending count."""
        while len(self._requests) >= self._limit:
            self._room.clear()
            await self._room.wait()
        self._requests.append(request)
        self._ready.set()
        return len(self._requests)

    def snapshot_changed(self) -> None:
        """The store's listener: coalesced, so any number of publishes is one item."""
        self._snapshot = True
        self._ready.set()

    def close(self, error: BaseException | None) -> None:
        """No more requests will come; taken after those still pending. The first end
        stands (a stream the server ends sees its client go next)."""
        if self._end is None:
            self._end = End(error)
        self._ready.set()

    async def take(self) -> discovery_pb2.DiscoveryRequest | _Snapshot | End:
        """The next item for the loop: a snapshot wake-up, a request, or the end."""
        while True:
            if self._snapshot:
                self._snapshot = False
                return SNAPSHOT
            if self._requests:
                request = self._requests.popleft()
                self._room.set()
                return request
            if self._end is not None:
                return self._end
            self._ready.clear()
            await self._ready.wait()


def request_event(request: discovery_pb2.DiscoveryRequest) -> Request:
    """The fields of a DiscoveryRequest that the protocol reads."""
    has_error = request.HasField("error_detail")
    return Request(
        type_url=request.type_url,
        response_nonce=request.response_nonce,
        version_info=request.version_info,
        has_error=has_error,
        error_message=request.error_detail.message if has_error else "",
        node_id=request.node.id if request.HasField("node") else "",
    )


class AdsHandler:
    """StreamAggregatedResources: request iterator in, serialized DiscoveryResponses out.

    `callbacks` replaces the default observers (metrics, logs and `clients`) when given.
    """

    def __init__(
        self,
        store: SnapshotSource,
        metrics: Metrics,
        clients: Clients,
        *,
        callbacks: StreamCallbacks | None = None,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        ids: Iterator[int] | None = None,
        shard: str = WHOLE,
    ) -> None:
        self._store = store
        self._callbacks: StreamCallbacks = callbacks or DefaultCallbacks(metrics, clients)
        # stream ids are unique across the handlers of every port (one Clients for all)
        self._ids = ids or itertools.count(1)
        self._send_timeout = send_timeout
        self.shard = shard
        self.metadata: tuple[tuple[str, str], ...] = ()
        """Initial metadata of every stream (which shard this is, where the others are:
        `mcpserver dump` reads it; istiod ignores it); set once the ports are bound."""
        self._intakes: dict[int, Intake] = {}  # open streams
        self._ending = ""  # why every stream ends (shutdown), once it does

    def end_streams(self, why: str) -> None:
        """End every open stream, and any that opens from now on, with UNAVAILABLE and
        `why` (shutdown: istiod reconnects, to another replica behind the address). A
        stream busy writing to a client that does not read ends when gRPC cancels it."""
        self._ending = why
        for intake in self._intakes.values():
            intake.close(EndedByServer(why))

    async def stream(
        self,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[discovery_pb2.DiscoveryRequest, bytes],
    ) -> None:
        """The stream's loop. Responses are written with context.write() under
        `send_timeout`: a client that stops reading fills HTTP/2's flow-control window, the
        write then waits, and without a bound the stream would go on holding responses for as
        long as the connection lives. Past the bound the stream ends (UNAVAILABLE, after what
        the client had buffered); a client that reads again reconnects and gets the current
        set."""
        callbacks = self._callbacks
        stream_id = next(self._ids)
        intake = Intake()
        # Seeded with the current snapshot; no await until subscribe(), so no publish is missed.
        state = StreamState(stream_id, snapshot=self._store.snapshot)
        callbacks.on_stream_open(stream_id, context.peer())
        unsubscribe = self._store.subscribe(intake.snapshot_changed)
        reader = asyncio.create_task(
            self._read(stream_id, requests, intake), name=f"ads-read-{stream_id}"
        )
        reason: BaseException | None = None
        self._intakes[stream_id] = intake  # no await since the start: end_streams sees it
        if self._ending:
            intake.close(EndedByServer(self._ending))
        try:
            if self.metadata:
                await context.send_initial_metadata(self.metadata)
            while True:
                item = await intake.take()
                if isinstance(item, End):
                    reason = item.error
                    if isinstance(reason, EndedByServer):
                        context.set_code(grpc.StatusCode.UNAVAILABLE)
                        context.set_details(str(reason))
                    return
                if isinstance(item, _Snapshot):
                    event: Request | SnapshotChanged = SnapshotChanged(self._store.snapshot)
                else:
                    event = request_event(item)
                # The set this stream held is kept until its responses are written: it may
                # be the last reference to a whole snapshot, whose release (10k resources:
                # milliseconds) must not come between a new set and the client.
                previous = state
                state, effects = reduce(state, event)
                for effect in effects:
                    if isinstance(effect, Send):
                        payload = effect.type_set.response(effect.type_url)
                        callbacks.on_response(state, effect, len(payload))
                        try:
                            # a timeout scope, not wait_for: the write starts in this step
                            # instead of in a task of its own one loop turn later
                            async with asyncio.timeout(self._send_timeout):
                                await context.write(payload)
                        except TimeoutError:
                            # Not context.abort(): gRPC sends the status only after the
                            # message it is still writing, which waits on this very client;
                            # the stream ends here for us (unsubscribed, forgotten) and the
                            # status follows whenever the client reads again.
                            callbacks.on_send_timeout(stream_id, self._send_timeout, len(payload))
                            reason = EndedByServer(
                                f"the client took no response within {self._send_timeout:g}s "
                                "(server.send_timeout)"
                            )
                            context.set_code(grpc.StatusCode.UNAVAILABLE)
                            context.set_details(
                                f"a response was not read within {self._send_timeout:g}s"
                            )
                            return
                    elif isinstance(effect, Abort):
                        callbacks.on_bad_request(stream_id, effect.message)
                        reason = EndedByServer(f"bad request: {effect.message}")
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, effect.message)
                    elif isinstance(effect, NodeLearned):
                        callbacks.on_node(state)
                    else:
                        callbacks.on_request(state, effect)
                        if isinstance(effect, Nacked):
                            callbacks.on_nack(state, effect)
                del previous
        finally:
            unsubscribe()
            reader.cancel()
            del self._intakes[stream_id]
            if reason is None and self._ending:
                # cancelled by gRPC's stop after its grace (or closed by the client while
                # the server was ending it): ended by the server either way
                reason = EndedByServer(self._ending)
            callbacks.on_stream_close(stream_id, reason)

    async def _read(
        self,
        stream_id: int,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        intake: Intake,
    ) -> None:
        """Pull requests from gRPC, never more than the intake has room for."""
        try:
            async for request in requests:
                pending = await intake.put(request)
                self._callbacks.on_request_received(stream_id, pending)
        except Exception as err:  # handed to the loop, which ends the stream
            intake.close(err)
            return
        intake.close(None)
