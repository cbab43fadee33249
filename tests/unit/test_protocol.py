"""Decision tables for protocol.reduce(), the one function that decides every stream step.

Each row is (state, event) -> (kinds of the effects, in order; the state after). The rules
are Istio's (pkg/xds/server.go ShouldRespond; pkg/adsc/adsc.go Send, ack, handleMCP).
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest

from mcpserver.xds.protocol import (
    MISSING_TYPE_URL,
    Abort,
    Acked,
    Action,
    Answered,
    Effect,
    Event,
    Nacked,
    NodeLearned,
    Request,
    Send,
    SnapshotChanged,
    Stale,
    StreamState,
    TypeState,
    Waiting,
    reduce,
)
from mcpserver.xds.resources import PackedResource, encode_response
from mcpserver.xds.snapshot import Snapshot, build_snapshot
from mcpserver.xds.typeurls import MESH_CONFIG

pytestmark = pytest.mark.unit

SE = "networking.istio.io/v1/ServiceEntry"
WE = "networking.istio.io/v1/WorkloadEntry"
GO_NONCE = "2026-08-22 15:00:18.1 -0500 CDT m=+0.01"  # what adsc.go Send puts on every request
NODE = "sidecar~~test-1.istio-system~istio-system.svc.cluster.local"


def snap(cart: str, workload: str = "") -> Snapshot:
    resources = [PackedResource("ServiceEntry", "shop/cart", cart, b"se" + cart.encode())]
    if workload:
        resources.append(PackedResource("WorkloadEntry", "shop/w", workload, b"we"))
    return build_snapshot(resources)


S1 = snap("1")
S1_AGAIN = snap("1")  # a rebuild with the same content: another object, same set versions
S2 = snap("2")
S1_WE = snap("1", workload="1")  # only WorkloadEntry differs from S1
V1 = S1.for_type_url(SE).version
V2 = S2.for_type_url(SE).version
EMPTY_V = S1.for_type_url(MESH_CONFIG).version  # types we don't serve are answered empty


def nonce(seq: int, version: str) -> str:
    """Our nonce for the `seq`-th response: the set's version (shared by every stream)."""
    del seq  # the sequence still counts responses, but no longer names them
    return version


def stream(snapshot: Snapshot | None = S1, seq: int = 0, **types: TypeState) -> StreamState:
    """A state of stream 7; keyword names are SE, WE or MESH."""
    urls = {"SE": SE, "WE": WE, "MESH": MESH_CONFIG}
    mapping = MappingProxyType({urls[k]: v for k, v in types.items()})
    return StreamState(7, seq=seq, types=mapping, snapshot=snapshot)


N1 = nonce(1, V1)
SENT = TypeState(nonce=N1, version=V1)  # SE answered once with S1
PRIMED = stream()
SUBSCRIBED = stream(seq=1, SE=SENT)
UNPRIMED = stream(None)
WAITING = stream(None, SE=TypeState(), MESH=TypeState())


ROWS: list[tuple[str, StreamState, Event, tuple[type[Effect], ...], StreamState]] = [
    # -- request intake ------------------------------------------------------------------
    (
        "no type_url: abort the stream, state untouched",
        SUBSCRIBED,
        Request("", GO_NONCE, node_id=NODE),
        (Abort,),
        SUBSCRIBED,
    ),
    (
        "first request with adsc's timestamp nonce: answered; node learned",
        PRIMED,
        Request(SE, GO_NONCE, node_id=NODE),
        (NodeLearned, Answered, Send),
        replace(stream(seq=1, SE=SENT), node_id=NODE),
    ),
    (
        "first request with an empty nonce: answered",
        PRIMED,
        Request(SE),
        (Answered, Send),
        SUBSCRIBED,
    ),
    (
        "a type we don't serve (MeshConfig): answered with the empty set",
        SUBSCRIBED,
        Request(MESH_CONFIG, GO_NONCE),
        (Answered, Send),
        stream(seq=2, SE=SENT, MESH=TypeState(nonce=nonce(2, EMPTY_V), version=EMPTY_V)),
    ),
    (
        "node id is kept from the first request that has one",
        replace(PRIMED, node_id="first"),
        Request(SE, node_id=NODE),
        (Answered, Send),
        replace(SUBSCRIBED, node_id="first"),
    ),
    # -- before the first snapshot ---------------------------------------------------------
    (
        "unprimed: the first request waits (an empty answer would delete istiod's config)",
        UNPRIMED,
        Request(SE, GO_NONCE),
        (Waiting,),
        stream(None, SE=TypeState()),
    ),
    (
        "unprimed: a repeat of a waiting request waits too",
        WAITING,
        Request(SE, GO_NONCE),
        (Waiting,),
        WAITING,
    ),
    (
        "a type that waited, the stream primed since: any request for it is answered",
        replace(WAITING, snapshot=S1, types=MappingProxyType({SE: TypeState()})),
        Request(SE, GO_NONCE),
        (Answered, Send),
        SUBSCRIBED,
    ),
    # -- replies to our responses ------------------------------------------------------------
    (
        "our last nonce, no error: ACK, nothing sent, acked version recorded",
        SUBSCRIBED,
        Request(SE, N1, V1, node_id=NODE),
        (NodeLearned, Acked),
        replace(stream(seq=1, SE=replace(SENT, acked=V1)), node_id=NODE),
    ),
    (
        "our last nonce with error_detail: NACK, nothing sent, rejected version recorded",
        SUBSCRIBED,
        Request(SE, N1, "", has_error=True, error_message="bad port"),
        (Nacked,),
        stream(seq=1, SE=replace(SENT, nacked=V1)),
    ),
    (
        "an older nonce of ours: stale, ignored",
        stream(seq=2, SE=TypeState(nonce=nonce(2, V2), version=V2)),
        Request(SE, N1, V1),
        (Stale,),
        stream(seq=2, SE=TypeState(nonce=nonce(2, V2), version=V2)),
    ),
    (
        "a timestamp nonce on a subscribed type: stale, ignored",
        SUBSCRIBED,
        Request(SE, GO_NONCE),
        (Stale,),
        SUBSCRIBED,
    ),
    (
        "empty nonce on a subscribed type: re-subscription, answered in full again",
        replace(SUBSCRIBED, types=MappingProxyType({SE: replace(SENT, acked=V1)})),
        Request(SE),
        (Answered, Send),
        stream(seq=2, SE=TypeState(nonce=nonce(2, V1), version=V1, acked=V1)),
    ),
    # -- snapshot pushes -------------------------------------------------------------------
    (
        "subscribed type whose set version changed: pushed",
        SUBSCRIBED,
        SnapshotChanged(S2),
        (Send,),
        stream(S2, seq=2, SE=TypeState(nonce=nonce(2, V2), version=V2)),
    ),
    (
        "subscribed type whose set version is the same: nothing sent",
        SUBSCRIBED,
        SnapshotChanged(S1_AGAIN),
        (),
        stream(S1_AGAIN, seq=1, SE=SENT),
    ),
    (
        "a change in a type the client never asked for: nothing sent",
        SUBSCRIBED,
        SnapshotChanged(S1_WE),
        (),
        stream(S1_WE, seq=1, SE=SENT),
    ),
    (
        "first snapshot answers every waiting type, in subscription order",
        WAITING,
        SnapshotChanged(S1),
        (Send, Send),
        stream(
            S1,
            seq=2,
            SE=TypeState(nonce=nonce(1, V1), version=V1),
            MESH=TypeState(nonce=nonce(2, EMPTY_V), version=EMPTY_V),
        ),
    ),
    (
        "a wake-up while still unprimed: nothing",
        WAITING,
        SnapshotChanged(None),
        (),
        WAITING,
    ),
]


@pytest.mark.parametrize(
    ("state", "event", "kinds", "after"), [row[1:] for row in ROWS], ids=[row[0] for row in ROWS]
)
def test_decision_table(
    state: StreamState,
    event: Event,
    kinds: tuple[type[Effect], ...],
    after: StreamState,
) -> None:
    new_state, effects = reduce(state, event)
    assert tuple(type(e) for e in effects) == kinds
    assert new_state == after


def test_sends_carry_the_set_the_type_maps_to_and_the_nonce_recorded() -> None:
    state, effects = reduce(WAITING, SnapshotChanged(S1))
    sends = [e for e in effects if isinstance(e, Send)]
    assert [(s.type_url, s.nonce, s.version) for s in sends] == [
        (SE, V1, V1),  # the nonce is the set version: the same on every stream
        (MESH_CONFIG, EMPTY_V, EMPTY_V),
    ]
    assert sends[0].type_set is S1.for_type_url(SE)
    assert [state.types[s.type_url].nonce for s in sends] == [s.nonce for s in sends]
    assert state.seq == 2  # responses are still counted per stream


def test_every_stream_shares_one_encoded_response_per_set_and_type() -> None:
    """Fan-out copies nothing: the bytes for a set are encoded once for all streams."""
    type_set = S1.for_type_url(SE)
    first = type_set.response(SE)
    assert type_set.response(SE) is first
    assert first == encode_response(V1, SE, V1, type_set.blob)  # version and nonce alike


def test_observations_carry_what_callbacks_report() -> None:
    _, (abort,) = reduce(SUBSCRIBED, Request(""))
    assert abort == Abort(MISSING_TYPE_URL)
    assert "type_url is required" in MISSING_TYPE_URL
    _, (nack,) = reduce(SUBSCRIBED, Request(SE, N1, "v0", has_error=True, error_message="boom"))
    assert nack == Nacked(SE, rejected=V1, version_info="v0", message="boom")
    _, (stale,) = reduce(SUBSCRIBED, Request(SE, "7-0-old"))
    assert stale == Stale(SE, "7-0-old")
    _, (node, _, _) = reduce(PRIMED, Request(SE, node_id=NODE))
    assert node == NodeLearned(NODE)
    # every request outcome names its metric label
    assert [o.action for o in (Answered(SE), Waiting(SE), Acked(SE, "v"), nack, stale)] == [
        Action.RESPOND,
        Action.WAIT,
        Action.ACK,
        Action.NACK,
        Action.STALE,
    ]


def test_a_whole_istiod_session_never_answers_an_ack() -> None:
    """adsc's startup as a sequence: waits, first snapshot, ACKs, one push, one ACK."""
    state = StreamState(7)
    sent: list[Send] = []

    def step(event: Event) -> tuple[Effect, ...]:
        nonlocal state
        state, effects = reduce(state, event)
        sent.extend(e for e in effects if isinstance(e, Send))
        return effects

    for url in (MESH_CONFIG, SE, WE):
        step(Request(url, GO_NONCE, node_id=NODE if url == MESH_CONFIG else ""))
    assert sent == []
    step(SnapshotChanged(S1))
    assert [s.type_url for s in sent] == [MESH_CONFIG, SE, WE]
    for s in sent[1:]:  # adsc never ACKs MeshConfig
        assert step(Request(s.type_url, s.nonce, s.version, node_id=NODE)) == (
            Acked(s.type_url, s.version),
        )
    step(SnapshotChanged(S2))
    assert [s.type_url for s in sent[3:]] == [SE]
    assert step(Request(SE, sent[3].nonce, sent[3].version)) == (Acked(SE, V2),)
    assert len(sent) == 4
    assert state.node_id == NODE
    assert state.types[SE] == TypeState(nonce=sent[3].nonce, version=V2, acked=V2)


def test_state_is_never_mutated() -> None:
    before = SUBSCRIBED
    types = dict(before.types)
    reduce(before, SnapshotChanged(S2))
    reduce(before, Request(SE, N1, V1))
    assert dict(before.types) == types and before.seq == 1
    with pytest.raises(TypeError):
        before.types[SE] = TypeState()  # type: ignore[index]  # the mapping is read-only
