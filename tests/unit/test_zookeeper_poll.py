"""kazoo's select replaced by one poll(2): the same answers as kazoo's own selector_select."""

from __future__ import annotations

import os
import resource
import socket
from collections.abc import Iterator

import pytest
from kazoo.handlers.utils import selector_select

from mcpserver.registry.zookeeper.client import PollHandler, new_client, poll_select

pytestmark = pytest.mark.unit


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_answers_as_kazoo_does(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    idle = socket.socketpair()
    try:
        # nothing to read: a timeout answers empty lists
        assert poll_select([a, idle[0]], [], [], 0.01) == selector_select(
            [a, idle[0]], [], [], 0.01
        )
        assert poll_select([a], [], [], 0) == ([], [], [])
        b.send(b"x")
        assert poll_select([a, idle[0]], [], [], 1.0) == ([a], [], [])
        assert selector_select([a, idle[0]], [], [], 1.0) == ([a], [], [])
        # a writer is told its socket takes data; a socket asked for both is read first
        assert poll_select([], [b], [], 1.0) == ([], [b], [])
        assert poll_select([a], [a], [], 1.0) == selector_select([a], [a], [], 1.0)
        # file descriptors as ints work too
        assert poll_select([a.fileno()], [], [], 1.0) == ([a.fileno()], [], [])
    finally:
        idle[0].close()
        idle[1].close()


def test_a_hang_up_wakes_the_reader(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    b.close()
    assert poll_select([a], [], [], 1.0) == ([a], [], [])


def test_bad_arguments_fail_as_in_kazoo(pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    for bad in (-1.0, "soon"):
        with pytest.raises((ValueError, TypeError)) as ours:
            poll_select([a], [], [], bad)  # type: ignore[arg-type]
        with pytest.raises((ValueError, TypeError)) as theirs:
            selector_select([a], [], [], bad)
        assert type(ours.value) is type(theirs.value)
    closed = socket.socket()
    closed.close()
    with pytest.raises(TypeError):
        poll_select([closed], [], [], 0)


def test_file_descriptors_above_1024() -> None:
    """Why kazoo left select(2): a busy server's fds pass 1024. poll takes them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2100), hard))
    a, b = socket.socketpair()
    high = os.dup2(a.fileno(), 2048)
    try:
        b.send(b"x")
        assert poll_select([high], [], [], 1.0) == ([high], [], [])
    finally:
        os.close(high)
        a.close()
        b.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_client_uses_it() -> None:
    client = new_client("127.0.0.1:1", 10.0)
    handler = client.handler  # type: ignore[attr-defined]
    assert isinstance(handler, PollHandler)
    assert handler.select([], [], [], 0) == ([], [], [])
