"""The one pure function that decides every step of the state-of-the-world protocol.

It mirrors Istio's own server rule (pkg/xds/server.go ShouldRespond) and what istiod's
config-source client sends (pkg/adsc/adsc.go Run, Send, ack):
- the first request of a type on a stream is always answered, whatever its nonce, because
  istiod's initial requests carry a timestamp as response_nonce (adsc.go Send);
- an empty nonce is a (re)subscription and is answered too;
- a request carrying the last nonce we sent is an ACK (or a NACK if it has error_detail):
  send nothing, or istiod and we would ping-pong forever;
- any other nonce is stale and ignored;
- nothing is answered before the store is primed; the request waits for the first snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum


class Action(Enum):
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


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    state: TypeState


def decide_request(
    state: TypeState | None, nonce: str, version_info: str, has_error: bool, primed: bool
) -> Decision:
    """What to do with one DiscoveryRequest, given the stream's state for its type."""
    if state is None or not nonce or not state.nonce:
        # First request of the type, an explicit re-subscription, or a repeat of a request we
        # could not answer yet: answer with the full set as soon as we have one.
        return Decision(Action.RESPOND if primed else Action.WAIT, state or TypeState())
    if nonce != state.nonce:
        return Decision(Action.STALE, state)
    if has_error:
        return Decision(Action.NACK, replace(state, nacked=state.version))
    return Decision(Action.ACK, replace(state, acked=version_info))


def should_push(state: TypeState, set_version: str) -> bool:
    """After a new snapshot: send a subscribed type if its set differs from what we sent.

    A type that was requested before the store was primed has sent nothing (version ""), so
    the first snapshot answers it; set versions are never empty.
    """
    return state.version != set_version


def sent(state: TypeState, version: str, nonce: str) -> TypeState:
    """The state after sending `version` with `nonce`."""
    return replace(state, version=version, nonce=nonce)
