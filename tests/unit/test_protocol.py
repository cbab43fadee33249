"""Decision table for the one function that decides every protocol step."""

from __future__ import annotations

import pytest

from mcpserver.xds.protocol import Action, TypeState, decide_request, sent, should_push

pytestmark = pytest.mark.unit

GO_NONCE = "2026-08-22 15:00:18.1 -0500 CDT m=+0.01"
SENT = TypeState(nonce="7-3-abc", version="v1")


@pytest.mark.parametrize(
    ("state", "nonce", "error", "primed", "action"),
    [
        # istiod's initial requests carry a timestamp nonce: always answered (adsc.go Send)
        (None, GO_NONCE, False, True, Action.RESPOND),
        (None, "", False, True, Action.RESPOND),
        # before the first snapshot: wait, never answer empty
        (None, GO_NONCE, False, False, Action.WAIT),
        (TypeState(), GO_NONCE, False, False, Action.WAIT),
        (TypeState(), GO_NONCE, False, True, Action.RESPOND),
        # our last nonce echoed: ACK, send nothing
        (SENT, "7-3-abc", False, True, Action.ACK),
        # with error_detail: NACK, send nothing
        (SENT, "7-3-abc", True, True, Action.NACK),
        # an older or foreign nonce: stale, ignored
        (SENT, "7-2-abc", False, True, Action.STALE),
        (SENT, GO_NONCE, False, True, Action.STALE),
        # empty nonce on a subscribed type: a re-subscription, answered in full
        (SENT, "", False, True, Action.RESPOND),
    ],
)
def test_decide_request(
    state: TypeState | None, nonce: str, error: bool, primed: bool, action: Action
) -> None:
    assert decide_request(state, nonce, "v1", error, primed).action is action


def test_ack_records_version_and_nack_records_rejected_version() -> None:
    assert decide_request(SENT, "7-3-abc", "v1", False, True).state.acked == "v1"
    assert decide_request(SENT, "7-3-abc", "", True, True).state.nacked == "v1"


def test_push_only_when_set_version_differs() -> None:
    assert not should_push(SENT, "v1")
    assert should_push(SENT, "v2")
    # requested before the store was primed: the first snapshot answers it
    assert should_push(TypeState(), "v1")


def test_sent_updates_nonce_and_version() -> None:
    state = sent(TypeState(acked="v0"), "v9", "n-1")
    assert (state.version, state.nonce, state.acked) == ("v9", "n-1", "v0")
