"""The ADS stream handler: state of the world, one stream per istiod connection.

Two sources drive a stream: requests from istiod and new snapshots from the store. A reader
task turns requests into queue items and the store's wake-up adds one coalesced "snapshot
changed" item; the handler takes items one at a time, asks protocol.decide_request() or
should_push() what to do, and yields pre-serialized DiscoveryResponse bytes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from mcpserver.metrics import Metrics
from mcpserver.xds.protocol import Action, TypeState, decide_request, sent, should_push
from mcpserver.xds.resources import encode_response
from mcpserver.xds.snapshot import Snapshot
from mcpserver.xds.store import SnapshotStore

log = logging.getLogger("mcpserver.xds")

_SNAPSHOT = object()
_END = object()


@dataclass
class ClientInfo:
    """What /debug/clients shows about one stream."""

    stream_id: int
    peer: str
    connected_at: float
    node_id: str = ""
    types: dict[str, TypeState] = field(default_factory=dict)
    responses: int = 0

    def describe(self) -> dict[str, object]:
        return {
            "stream": self.stream_id,
            "peer": self.peer,
            "node": self.node_id,
            "connected_seconds": round(time.time() - self.connected_at, 1),
            "responses": self.responses,
            "types": {
                url: {"sent": s.version, "nonce": s.nonce, "acked": s.acked, "nacked": s.nacked}
                for url, s in sorted(self.types.items())
            },
        }


class Clients:
    """The open streams, for debugging and metrics."""

    def __init__(self) -> None:
        self.open: dict[int, ClientInfo] = {}
        self._ids = itertools.count(1)

    def add(self, peer: str) -> ClientInfo:
        info = ClientInfo(stream_id=next(self._ids), peer=peer, connected_at=time.time())
        self.open[info.stream_id] = info
        return info

    def remove(self, info: ClientInfo) -> None:
        self.open.pop(info.stream_id, None)


class AdsHandler:
    """StreamAggregatedResources: request iterator in, serialized DiscoveryResponses out."""

    def __init__(self, store: SnapshotStore, metrics: Metrics, clients: Clients) -> None:
        self._store = store
        self._metrics = metrics
        self._clients = clients

    async def stream(
        self,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[discovery_pb2.DiscoveryRequest, bytes],
    ) -> AsyncIterator[bytes]:
        info = self._clients.add(context.peer())
        queue: asyncio.Queue[object] = asyncio.Queue()
        pending = False

        def wake() -> None:
            nonlocal pending
            if not pending:
                pending = True
                queue.put_nowait(_SNAPSHOT)

        async def read() -> None:
            try:
                async for request in requests:
                    queue.put_nowait(request)
            except Exception as err:  # handed to the handler, which ends the stream
                queue.put_nowait(err)
            queue.put_nowait(_END)

        unsubscribe = self._store.subscribe(wake)
        reader = asyncio.create_task(read(), name=f"ads-read-{info.stream_id}")
        self._metrics.streams.inc()
        log.info("stream opened stream=%d peer=%s", info.stream_id, info.peer)
        counter = itertools.count(1)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    log.info("stream ended stream=%d reason=%r", info.stream_id, item)
                    return
                snapshot = self._store.snapshot
                if item is _SNAPSHOT:
                    pending = False
                    if snapshot is None:
                        continue
                    for type_url, state in list(info.types.items()):
                        if should_push(state, snapshot.for_type_url(type_url).version):
                            yield self._respond(info, type_url, snapshot, next(counter))
                    continue
                assert isinstance(item, discovery_pb2.DiscoveryRequest)
                request = item
                if not request.type_url:
                    log.warning(
                        "bad request stream=%d peer=%s: no type_url", info.stream_id, info.peer
                    )
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "DiscoveryRequest.type_url is required (mcpserver serves ADS, where "
                        "every request names its type)",
                    )
                if request.HasField("node") and request.node.id and not info.node_id:
                    info.node_id = request.node.id
                decision = decide_request(
                    info.types.get(request.type_url),
                    request.response_nonce,
                    request.version_info,
                    request.HasField("error_detail"),
                    snapshot is not None,
                )
                info.types[request.type_url] = decision.state
                self._metrics.requests.labels(request.type_url, decision.action.value).inc()
                if decision.action is Action.NACK:
                    log.warning(
                        "nack stream=%d type=%s version=%s error=%s",
                        info.stream_id,
                        request.type_url,
                        request.version_info,
                        request.error_detail.message,
                    )
                elif decision.action is Action.RESPOND and snapshot is not None:
                    yield self._respond(info, request.type_url, snapshot, next(counter))
                elif decision.action is Action.WAIT:
                    log.info(
                        "waiting for first snapshot stream=%d type=%s",
                        info.stream_id,
                        request.type_url,
                    )
        finally:
            unsubscribe()
            reader.cancel()
            self._clients.remove(info)
            self._metrics.streams.dec()
            log.info("stream closed stream=%d peer=%s", info.stream_id, info.peer)

    def _respond(self, info: ClientInfo, type_url: str, snapshot: Snapshot, seq: int) -> bytes:
        type_set = snapshot.for_type_url(type_url)
        nonce = f"{info.stream_id}-{seq}-{type_set.version[:8]}"
        info.types[type_url] = sent(info.types.get(type_url, TypeState()), type_set.version, nonce)
        info.responses += 1
        payload = encode_response(type_set.version, type_url, nonce, type_set.blob)
        self._metrics.responses.labels(type_url).inc()
        self._metrics.response_bytes.labels(type_url).inc(len(payload))
        log.info(
            "sent stream=%d type=%s version=%s resources=%d bytes=%d",
            info.stream_id,
            type_url,
            type_set.version,
            len(type_set.resources),
            len(payload),
        )
        return payload
