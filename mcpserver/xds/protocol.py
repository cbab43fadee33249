"""The one pure function that decides every step of a state-of-the-world ADS stream.

Why a reducer: the stream handler (sotw.py) has two inputs, istiod's requests and new snapshots,
and many outputs (responses, an abort, metrics, logs, the /debug/clients view). Putting every
decision in `reduce(state, event) -> (state, effects)` keeps the rules in one place that the
unit tests can read as decision tables, with no gRPC, no asyncio and no clock (import-linter
forbids grpc and asyncio here).

The rules mirror Istio's own server and what istiod's config-source client sends:
- pkg/xds/server.go ShouldRespond: the first request of a type on a stream is always answered
  ("INIT/RECONNECT ... We should always respond"); a request carrying the last nonce we sent is
  an ACK, or a NACK if it has error_detail, and gets nothing back, or istiod and we would
  ping-pong forever; any other nonce is stale and ignored;
- pkg/adsc/adsc.go Send: every request istiod sends carries a timestamp as response_nonce,
  even the first one of a type, hence "whatever its nonce" above; an empty nonce is an
  explicit (re)subscription and is answered too;
- pkg/adsc/adsc.go ack: ACKs echo our version and nonce and never carry error_detail;
- pkg/adsc/adsc.go handleMCP: every response replaces the whole set for its type, so nothing
  is answered before the store is primed (an empty answer would delete everything istiod
  holds); such requests wait, and the first snapshot answers every waiting type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from typing import ClassVar

from mcpserver.xds.snapshot import Snapshot, TypeSet

MISSING_TYPE_URL = (
    "DiscoveryRequest.type_url is required (mcpserver serves ADS, where every request names "
    "its type)"
)


class Action(Enum):
    """What a request turned out to be; the values are the `outcome` metric label."""

    RESPOND = "respond"
    WAIT = "wait"
    ACK = "ack"
    NACK = "nack"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class TypeState:
    """What one stream knows about one type URL."""

    nonce: str = ""  # last nonce we sent ("" = nothing sent yet)
    version: str = ""  # version of the set we last sent
    acked: str = ""  # last version the client acknowledged
    nacked: str = ""  # last version the client rejected


def _no_types() -> Mapping[str, TypeState]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class StreamState:
    """Everything one stream remembers between events.

    `types` is in first-request order (pushes follow it) and read-only: a new state is a new
    mapping. `snapshot` is the latest snapshot this stream has been told about (None while
    the store is unprimed); `seq` numbers our responses for the nonce.
    """

    stream_id: int
    node_id: str = ""
    seq: int = 0
    types: Mapping[str, TypeState] = field(default_factory=_no_types)
    snapshot: Snapshot | None = None

    def with_type(self, type_url: str, state: TypeState) -> StreamState:
        """This state with one type's entry added or replaced (order kept)."""
        return replace(self, types=MappingProxyType({**self.types, type_url: state}))


# Events: the two inputs of a stream.


@dataclass(frozen=True, slots=True)
class Request:
    """A DiscoveryRequest, reduced to the fields the protocol reads."""

    type_url: str
    response_nonce: str = ""
    version_info: str = ""
    has_error: bool = False  # error_detail is set: a NACK when the nonce is ours
    error_message: str = ""
    node_id: str = ""  # "" when the request carries no node (adsc sends it on the first only)


@dataclass(frozen=True, slots=True)
class SnapshotChanged:
    """The store published; `snapshot` is its latest (None only while unprimed)."""

    snapshot: Snapshot | None


Event = Request | SnapshotChanged


# Effects: what the handler must do, in order.


@dataclass(frozen=True, slots=True)
class Send:
    """Write a DiscoveryResponse with the full set for `type_url` under `nonce`."""

    type_url: str
    nonce: str
    type_set: TypeSet

    @property
    def version(self) -> str:
        return self.type_set.version


@dataclass(frozen=True, slots=True)
class Abort:
    """End the stream with INVALID_ARGUMENT and this message (the request has no type)."""

    message: str


@dataclass(frozen=True, slots=True)
class NodeLearned:
    """The first node id seen on the stream (adsc puts it on the first request)."""

    node_id: str


@dataclass(frozen=True, slots=True)
class Answered:
    """The request subscribes (first, re-subscription, or repeat while waiting): a Send follows."""

    action: ClassVar[Action] = Action.RESPOND
    type_url: str


@dataclass(frozen=True, slots=True)
class Waiting:
    """The request is held until the first snapshot, which answers it."""

    action: ClassVar[Action] = Action.WAIT
    type_url: str


@dataclass(frozen=True, slots=True)
class Acked:
    """The client accepted `version` (our last nonce, no error)."""

    action: ClassVar[Action] = Action.ACK
    type_url: str
    version: str


@dataclass(frozen=True, slots=True)
class Nacked:
    """The client rejected `rejected`, the version we last sent; it still has `version_info`."""

    action: ClassVar[Action] = Action.NACK
    type_url: str
    rejected: str
    version_info: str
    message: str


@dataclass(frozen=True, slots=True)
class Stale:
    """The request echoes a nonce that is not our last one: ignored."""

    action: ClassVar[Action] = Action.STALE
    type_url: str
    nonce: str


Outcome = Answered | Waiting | Acked | Nacked | Stale
Effect = Send | Abort | NodeLearned | Outcome


def reduce(state: StreamState, event: Event) -> tuple[StreamState, tuple[Effect, ...]]:
    """The next state of the stream and what to do, for one event."""
    if isinstance(event, SnapshotChanged):
        return _on_snapshot(state, event.snapshot)
    return _on_request(state, event)


def _on_request(state: StreamState, request: Request) -> tuple[StreamState, tuple[Effect, ...]]:
    if not request.type_url:
        # ADS multiplexes every type on one stream, so a request without a type cannot be
        # answered or ACKed; the client is broken, end its stream (only its stream).
        return state, (Abort(MISSING_TYPE_URL),)
    effects: list[Effect] = []
    if request.node_id and not state.node_id:
        state = replace(state, node_id=request.node_id)
        effects.append(NodeLearned(request.node_id))
    url = request.type_url
    known = state.types.get(url)
    if known is None or not request.response_nonce or not known.nonce:
        # First request of the type (any nonce: adsc.go Send puts a timestamp on it), an
        # explicit re-subscription (empty nonce), or a repeat of a request we could not answer
        # yet: answer with the full set as soon as we have one (server.go ShouldRespond).
        state = state.with_type(url, known or TypeState())
        if state.snapshot is None:
            effects.append(Waiting(url))
            return state, tuple(effects)
        effects.append(Answered(url))
        state, send = _send(state, state.snapshot, url)
        effects.append(send)
        return state, tuple(effects)
    if request.response_nonce != known.nonce:
        # Not our last nonce: a late reply to an older response (server.go ShouldRespond).
        effects.append(Stale(url, request.response_nonce))
        return state, tuple(effects)
    if request.has_error:
        state = state.with_type(url, replace(known, nacked=known.version))
        effects.append(Nacked(url, known.version, request.version_info, request.error_message))
        return state, tuple(effects)
    # Our last nonce, no error: an ACK (adsc.go ack). Answering it would loop forever.
    state = state.with_type(url, replace(known, acked=request.version_info))
    effects.append(Acked(url, request.version_info))
    return state, tuple(effects)


def _on_snapshot(
    state: StreamState, snapshot: Snapshot | None
) -> tuple[StreamState, tuple[Effect, ...]]:
    if snapshot is None:
        return state, ()
    state = replace(state, snapshot=snapshot)
    effects: list[Effect] = []
    for url, known in tuple(state.types.items()):
        # Push only what changed for types the client subscribed to. A type that waited for
        # the first snapshot has sent version "" and set versions are never empty, so the first
        # snapshot answers every waiting type.
        if known.version != snapshot.for_type_url(url).version:
            state, send = _send(state, snapshot, url)
            effects.append(send)
    return state, tuple(effects)


def _send(state: StreamState, snapshot: Snapshot, url: str) -> tuple[StreamState, Send]:
    """Send the full set of `url`: a fresh nonce, remembered with the version sent."""
    type_set = snapshot.for_type_url(url)
    seq = state.seq + 1
    # The nonce is the set's content version: it tells our responses apart exactly as SotW
    # needs (an ACK names the content it accepts; a reply to an older set is stale), and it
    # is the same on every stream, so all streams share one encoded response
    # (TypeSet.response): fanning a 7 MB set out to 32 istiods copies nothing.
    nonce = type_set.version
    known = state.types.get(url, TypeState())
    state = replace(state, seq=seq).with_type(
        url, replace(known, version=type_set.version, nonce=nonce)
    )
    return state, Send(url, nonce, type_set)
