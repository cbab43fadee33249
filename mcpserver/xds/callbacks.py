"""What the ADS stream reports as it runs: one hook per step, like go-control-plane's Callbacks.

Why: the stream loop (sotw.py) should only move bytes and run the reducer; metrics, logs and
the /debug/clients registry are observers of what it did. Keeping them behind one Protocol
lets tests and future users observe streams without touching the loop, and keeps the metric
labels in one place, where they are bounded: a client chooses the type URLs it sends, so a
label taken from them verbatim would let any client grow our memory and /metrics at will.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Protocol

from mcpserver.metrics import Metrics
from mcpserver.xds.protocol import (
    Acked,
    Answered,
    Nacked,
    Outcome,
    Send,
    StreamState,
    TypeState,
    Waiting,
)
from mcpserver.xds.shards import WHOLE
from mcpserver.xds.snapshot import Snapshot
from mcpserver.xds.typeurls import BODY_TYPE, ISTIO_1_23, ISTIO_1_29, ISTIO_1_30, MESH_CONFIG

log = logging.getLogger("mcpserver.xds")

OTHER_TYPE_URL: Final = "other"
KNOWN_TYPE_URLS: Final = frozenset((*ISTIO_1_23, *ISTIO_1_29, *ISTIO_1_30, *BODY_TYPE.values()))


def type_url_label(type_url: str) -> str:
    """The `type_url` metric label: the URL itself if istiod may send it, else `other`."""
    return type_url if type_url in KNOWN_TYPE_URLS else OTHER_TYPE_URL


class EndedByServer(Exception):  # noqa: N818  # a reason a stream ended, not an error
    """Why the server ended a stream: shutdown, a client that takes no responses, a bad
    request. Anything else that ends a stream (None, another exception) is the client's
    doing: it closed or cancelled the stream, or the connection went."""


class StreamCallbacks(Protocol):
    """Hooks the stream handler calls; `state` is the stream's state after the step.

    Hooks run on the event loop inside the stream's handler and must not block.
    """

    def on_stream_open(self, stream_id: int, peer: str) -> None:
        """A stream started."""

    def on_stream_close(self, stream_id: int, reason: BaseException | None) -> None:
        """A stream ended: None when the client closed it, EndedByServer when we ended it,
        else the error that ended it."""

    def on_request_received(self, stream_id: int, pending: int) -> None:
        """A request was read from gRPC; `pending` requests now wait for the loop."""

    def on_bad_request(self, stream_id: int, message: str) -> None:
        """A request the stream cannot serve; the stream is about to be aborted."""

    def on_send_timeout(self, stream_id: int, seconds: float, size: int) -> None:
        """The client did not take a response of `size` bytes within `seconds`; the stream
        is about to be aborted."""

    def on_node(self, state: StreamState) -> None:
        """The stream's node id became known."""

    def on_request(self, state: StreamState, outcome: Outcome) -> None:
        """A request was decided (respond, wait, ack, nack or stale)."""

    def on_nack(self, state: StreamState, nack: Nacked) -> None:
        """The client rejected our last response (also reported through on_request)."""

    def on_response(self, state: StreamState, response: Send, size: int) -> None:
        """A response of `size` bytes is about to be written."""


@dataclass(frozen=True, slots=True)
class NackRecord:
    """The last response a client rejected for one type: when, which version, and why."""

    at: float  # Unix time
    version: str
    message: str


@dataclass
class ClientInfo:
    """What /debug/clients and the status page show about one stream."""

    stream_id: int
    peer: str
    connected_at: float
    shard: str = WHOLE  # `all`, or `k/N` for shard k of layout N (xds/shards.py)
    node_id: str = ""
    types: Mapping[str, TypeState] = field(default_factory=lambda: MappingProxyType({}))
    responses: int = 0
    # The most requests ever read from gRPC and not yet handled at once: the intake bound
    # (sotw.MAX_PENDING_REQUESTS) made visible, for tests and debugging.
    pending_high_water: int = 0
    sent_at: dict[str, float] = field(default_factory=dict)  # type URL -> Unix time
    acked_at: dict[str, float] = field(default_factory=dict)
    nacks: dict[str, NackRecord] = field(default_factory=dict)
    # Monotonic send times (for the ACK latency histogram; wall time can jump), and the
    # types whose next response answers a request rather than pushing a change.
    sent_monotonic: dict[str, float] = field(default_factory=dict, repr=False)
    answering: set[str] = field(default_factory=set, repr=False)

    def lag(self, type_url: str, now: float) -> float:
        """Seconds the last response of a type has waited for its ACK (0 once ACKed, and
        always for MeshConfig, which istiod never ACKs: pkg/adsc/adsc.go)."""
        state = self.types.get(type_url)
        if not self.awaits_ack(type_url) or state is None or state.acked == state.version:
            return 0.0
        return max(0.0, now - self.sent_at.get(type_url, now))

    def awaits_ack(self, type_url: str) -> bool:
        """A response of this type was sent and an ACK is expected for it."""
        state = self.types.get(type_url)
        return state is not None and bool(state.version) and type_url != MESH_CONFIG

    def describe(self) -> dict[str, object]:
        now = time.time()
        types: dict[str, object] = {}
        for url, s in sorted(self.types.items()):
            entry: dict[str, object] = {
                "sent": s.version,
                "nonce": s.nonce,
                "acked": s.acked,
                "nacked": s.nacked,
                "sent_at": self.sent_at.get(url),
                "acked_at": self.acked_at.get(url),
                "lag_seconds": round(self.lag(url, now), 3),
            }
            nack = self.nacks.get(url)
            if nack is not None:
                entry["last_nack"] = {"at": nack.at, "version": nack.version, "error": nack.message}
            types[url] = entry
        return {
            "stream": self.stream_id,
            "peer": self.peer,
            "shard": self.shard,
            "node": self.node_id,
            "connected_at": self.connected_at,
            "connected_seconds": round(now - self.connected_at, 1),
            "responses": self.responses,
            "types": types,
        }


class Clients:
    """The open streams, for /debug/clients and the status page."""

    def __init__(self) -> None:
        self.open: dict[int, ClientInfo] = {}

    def add(self, stream_id: int, peer: str, shard: str = WHOLE) -> ClientInfo:
        info = ClientInfo(stream_id=stream_id, peer=peer, connected_at=time.time(), shard=shard)
        self.open[stream_id] = info
        return info

    def remove(self, stream_id: int) -> None:
        self.open.pop(stream_id, None)


ChangeOrigin = Callable[[Snapshot], float | None]
"""The monotonic time of the earliest registry change a snapshot carries, if known."""

OTHER_NODE: Final = "other"
MAX_NODE_LABELS: Final = 64
"""Distinct `node` label values on the ACK histogram; more clients share `other`."""
MAX_NODE_LABEL_LENGTH: Final = 128


class DefaultCallbacks:
    """Today's observers: Prometheus metrics, the xds log and the Clients registry.

    Logs: a stream's open, close (with why, how long, and its node), NACKs and bad requests
    are INFO or WARNING; every other per-stream step is DEBUG, so a new istiod stream is one
    line at INFO, not one per type URL.
    """

    def __init__(
        self,
        metrics: Metrics,
        clients: Clients,
        change_origin: ChangeOrigin | None = None,
        shard: str = WHOLE,
    ) -> None:
        self._metrics = metrics
        self._clients = clients
        self._change_origin = change_origin
        self._shard = shard
        self._node_streams: collections.Counter[str] = collections.Counter()
        self._node_label: dict[int, str] = {}

    def _info(self, stream_id: int) -> ClientInfo | None:
        return self._clients.open.get(stream_id)

    def _track(self, state: StreamState) -> None:
        info = self._info(state.stream_id)
        if info is not None:
            info.node_id = state.node_id
            info.types = state.types  # read-only mapping, replaced whole by each step

    def _node(self, state: StreamState) -> str:
        """The stream's `node` label, bounded in length and in number of values (a client
        chooses its node id, so it must not be able to grow /metrics at will)."""
        label = self._node_label.get(state.stream_id)
        if label is None:
            node = state.node_id[:MAX_NODE_LABEL_LENGTH] or "unknown"
            label = (
                node
                if node in self._node_streams or len(self._node_streams) < MAX_NODE_LABELS
                else OTHER_NODE
            )
            self._node_label[state.stream_id] = label
            self._node_streams[label] += 1
        return label

    def on_stream_open(self, stream_id: int, peer: str) -> None:
        self._clients.add(stream_id, peer, self._shard)
        self._metrics.streams.labels(self._shard).inc()
        if self._shard == WHOLE:
            log.info("stream opened stream=%d peer=%s", stream_id, peer)
        else:
            log.info("stream opened stream=%d peer=%s shard=%s", stream_id, peer, self._shard)

    def on_stream_close(self, stream_id: int, reason: BaseException | None) -> None:
        info = self._info(stream_id)
        self._clients.remove(stream_id)
        self._metrics.streams.labels(self._shard).dec()
        label = self._node_label.pop(stream_id, None)
        if label is not None:
            self._node_streams[label] -= 1
            if self._node_streams[label] <= 0:
                del self._node_streams[label]
                # the client is gone: its series go with it, or every istiod pod ever
                # connected would stay on /metrics
                with contextlib.suppress(KeyError):
                    self._metrics.ack_latency.remove(label)
        if reason is None:
            why = "client closed"
        elif isinstance(reason, EndedByServer):
            why = f"ended by server: {reason}"
        else:
            why = repr(reason)
        if info is None:
            log.info("stream closed stream=%d reason=%s", stream_id, why)
            return
        log.info(
            "stream closed stream=%d peer=%s node=%s after=%.1fs responses=%d reason=%s",
            stream_id,
            info.peer,
            info.node_id or "-",
            time.time() - info.connected_at,
            info.responses,
            why,
        )

    def on_request_received(self, stream_id: int, pending: int) -> None:
        info = self._info(stream_id)
        if info is not None and pending > info.pending_high_water:
            info.pending_high_water = pending

    def on_bad_request(self, stream_id: int, message: str) -> None:
        info = self._info(stream_id)
        log.warning(
            "bad request stream=%d peer=%s: %s", stream_id, info.peer if info else "", message
        )

    def on_send_timeout(self, stream_id: int, seconds: float, size: int) -> None:
        info = self._info(stream_id)
        self._metrics.send_timeouts.labels(self._shard).inc()
        log.warning(
            "client not reading stream=%d peer=%s node=%s: a %d-byte response not taken in "
            "%.0fs; ending the stream (the client reconnects and gets the current set)",
            stream_id,
            info.peer if info else "",
            info.node_id if info else "",
            size,
            seconds,
        )

    def on_node(self, state: StreamState) -> None:
        self._track(state)
        log.debug("stream node stream=%d node=%s", state.stream_id, state.node_id)

    def on_request(self, state: StreamState, outcome: Outcome) -> None:
        self._track(state)
        self._metrics.requests.labels(
            type_url_label(outcome.type_url), outcome.action.value, self._shard
        ).inc()
        info = self._info(state.stream_id)
        if isinstance(outcome, Answered | Waiting) and info is not None:
            # the next response of this type answers the client, it pushes no change
            info.answering.add(outcome.type_url)
        if isinstance(outcome, Waiting):
            log.debug(
                "waiting for first snapshot stream=%d type=%s", state.stream_id, outcome.type_url
            )
        elif isinstance(outcome, Acked):
            self._acked(state, info, outcome)
        else:
            log.debug(
                "request stream=%d type=%s outcome=%s",
                state.stream_id,
                outcome.type_url,
                outcome.action.value,
            )

    def _acked(self, state: StreamState, info: ClientInfo | None, ack: Acked) -> None:
        log.debug("ack stream=%d type=%s version=%s", state.stream_id, ack.type_url, ack.version)
        if info is None:
            return
        info.acked_at[ack.type_url] = time.time()
        sent = info.sent_monotonic.pop(ack.type_url, None)
        if sent is not None:
            self._metrics.ack_latency.labels(self._node(state)).observe(time.monotonic() - sent)

    def on_nack(self, state: StreamState, nack: Nacked) -> None:
        info = self._info(state.stream_id)
        if info is not None:
            info.nacks[nack.type_url] = NackRecord(time.time(), nack.rejected, nack.message)
            info.sent_monotonic.pop(nack.type_url, None)
        log.warning(
            "nack stream=%d peer=%s node=%s type=%s rejected=%s kept=%s error=%s",
            state.stream_id,
            info.peer if info else "",
            state.node_id,
            nack.type_url,
            nack.rejected,
            nack.version_info,
            nack.message,
        )

    def on_response(self, state: StreamState, response: Send, size: int) -> None:
        self._track(state)
        info = self._info(state.stream_id)
        url = response.type_url
        pushed = True
        if info is not None:
            info.responses += 1
            info.sent_at[url] = time.time()
            info.sent_monotonic[url] = time.monotonic()
            pushed = url not in info.answering
            info.answering.discard(url)
        if pushed and self._change_origin is not None and state.snapshot is not None:
            # a push of a new snapshot (not an answer to a request, which may come hours
            # after the change): how long the change took to reach this stream
            origin = self._change_origin(state.snapshot)
            if origin is not None:
                self._metrics.push_latency.observe(max(0.0, time.monotonic() - origin))
        label = type_url_label(url)
        self._metrics.responses.labels(label, self._shard).inc()
        self._metrics.response_bytes.labels(label, self._shard).inc(size)
        log.debug(
            "sent stream=%d type=%s version=%s resources=%d bytes=%d",
            state.stream_id,
            url,
            response.version,
            len(response.type_set.resources),
            size,
        )
