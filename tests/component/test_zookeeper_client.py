"""The registry's own ZooKeeper client against a loopback server that breaks the rules a real
ZooKeeper keeps (tests/integration/test_zookeeper_connection.py covers the real one): an
answer whose xid is not the oldest request's is a broken stream, and the connection is
dropped, its reads failed, and a new one made; a server that refuses our SASL login is not
asked again until the credentials change; credential files are read again when they change,
and changed files that cannot be used leave the previous ones in use."""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcpserver.registry.zookeeper import jute
from mcpserver.registry.zookeeper.config import ZooKeeperRegistrySettings
from mcpserver.registry.zookeeper.connection import (
    AUTH_FAILED,
    CONNECTED,
    SUSPENDED,
    AuthFailedError,
    Connection,
    ConnectionLossError,
    Credentials,
    Result,
)
from mcpserver.registry.zookeeper.credentials import SettingsCredentials
from tests.certs import make_certs

pytestmark = pytest.mark.component

STAT = struct.pack(">qqqqiiiqiiq", 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1)


def receive(conn: socket.socket) -> bytes:
    head = b""
    while len(head) < 4:
        chunk = conn.recv(4 - len(head))
        if not chunk:
            raise EOFError
        head += chunk
    (length,) = struct.unpack(">i", head)
    body = b""
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            raise EOFError
        body += chunk
    return body


def reply(conn: socket.socket, xid: int, err: int = 0, body: bytes = b"") -> None:
    conn.sendall(jute.frame(struct.pack(">iqi", xid, 1, err) + body))


class ScriptedZooKeeper:
    """Answers the handshake, then each read as `answer(connection, xid, op)` says."""

    def __init__(
        self, *, shift_first: int = 0, refuse_sasl: bool = False, session_ms: int = 6000
    ) -> None:
        self.shift_first = shift_first  # added to the xid of the first connection's answers
        self.refuse_sasl = refuse_sasl
        self.session_ms = session_ms  # the negotiated session timeout
        self.connections = 0
        self.sasl_attempts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._closing = False

    def start(self) -> None:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(
                target=self._serve, args=(conn, self.connections), daemon=True
            )
            thread.start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        with conn:
            try:
                receive(conn)  # ConnectRequest
                session = struct.pack(">iiq", 0, self.session_ms, 0x77) + struct.pack(">i", 16)
                session += bytes(16)
                conn.sendall(jute.frame(session + b"\x00"))
                while True:
                    body = receive(conn)
                    xid, op = struct.unpack_from(">ii", body)
                    if op == jute.PING:
                        reply(conn, jute.PING_XID)
                    elif op == jute.SASL:
                        self.sasl_attempts += 1
                        if self.refuse_sasl:
                            reply(conn, xid, jute.AUTH_FAILED, struct.pack(">i", -1))
                            return
                    elif op == jute.EXISTS:
                        shift = self.shift_first if number == 1 else 0
                        reply(conn, xid + shift, 0, STAT)
            except (EOFError, OSError):
                return

    def close(self) -> None:
        self._closing = True
        self._listener.close()


def wait(result: Result[Any], within: float = 10.0) -> Any:
    done = threading.Event()
    result.rawlink(lambda _: done.set())
    assert done.wait(within), "no answer"
    return result.get_nowait()


class States:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.times: list[float] = []
        self._changed = threading.Condition()

    def add(self, state: str) -> None:
        with self._changed:
            self.items.append(state)
            self.times.append(time.monotonic())
            self._changed.notify_all()

    def until(self, count: int, state: str, within: float = 10.0) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.items.count(state) >= count, within), (
                self.items
            )


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[ScriptedZooKeeper]:
    fake = ScriptedZooKeeper(**getattr(request, "param", {}))
    fake.start()
    yield fake
    fake.close()


@pytest.mark.parametrize("server", [{"shift_first": 1}], indirect=True)
def test_an_answer_out_of_order_drops_the_connection(
    server: ScriptedZooKeeper, caplog: pytest.LogCaptureFixture
) -> None:
    states = States()
    client = Connection(f"127.0.0.1:{server.port}", 6.0)
    client.add_listener(states.add)
    try:
        client.start(5)
        with pytest.raises(ConnectionLossError):
            wait(client.exists_async("/a", None))  # answered with the wrong xid
        states.until(2, CONNECTED)
        assert states.items == [CONNECTED, SUSPENDED, CONNECTED]
        assert server.connections == 2
        assert "ZooKeeper connection lost: answer xid 2 where xid 1 was due" in caplog.text
        assert wait(client.exists_async("/a", None)) is not None  # the new connection reads
    finally:
        client.close()


def test_answers_in_order_keep_the_connection(server: ScriptedZooKeeper) -> None:
    client = Connection(f"127.0.0.1:{server.port}", 6.0)
    try:
        client.start(5)
        results = [client.exists_async(f"/n{i}", None) for i in range(50)]
        assert all(wait(r) is not None for r in results)
        assert server.connections == 1
    finally:
        client.close()


@pytest.mark.parametrize("server", [{"session_ms": 60_000}], indirect=True)
def test_a_read_queued_while_the_client_drains_its_wake_up_loses_no_later_wake_up(
    server: ScriptedZooKeeper, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read queued from another thread just as the client's thread handles a wake-up must
    not leave the wake-up flag set with nothing to wake it: every later read from another
    thread then waited for the next ping (20 s here) to be sent. (The first walk of a 10k
    tree by a reader building on its own thread took 35-65 s instead of 5 s so.)"""
    client = Connection(f"127.0.0.1:{server.port}", 60.0)
    real = os.eventfd_read
    raced: list[Result[Any]] = []

    def racing(fd: int) -> int:
        if threading.current_thread().name == "zookeeper" and not raced:
            reader = threading.Thread(target=lambda: raced.append(client.exists_async("/r")))
            reader.start()
            reader.join()
        return real(fd)

    monkeypatch.setattr(os, "eventfd_read", racing)
    try:
        client.start(5)
        assert wait(client.exists_async("/first")) is not None  # from this thread: a wake-up
        assert raced and wait(raced[0]) is not None
        # pings are 20 s apart: a lost wake-up leaves this read unsent for that long
        assert wait(client.exists_async("/later"), within=5.0) is not None
    finally:
        client.close()


@pytest.mark.parametrize("server", [{"refuse_sasl": True}], indirect=True)
def test_a_refused_login_is_not_retried_until_the_retry_time(server: ScriptedZooKeeper) -> None:
    states = States()
    client = Connection(
        f"127.0.0.1:{server.port}",
        6.0,
        Credentials(sasl=("mesh", "wrong")),
        auth_retry=1.5,
    )
    client.add_listener(states.add)
    try:
        with pytest.raises(AuthFailedError, match="SASL DIGEST-MD5 as mesh refused"):
            client.start(5)
        states.until(2, AUTH_FAILED, within=5)  # the slow retry
        assert server.sasl_attempts == 2
        assert states.items == [AUTH_FAILED, AUTH_FAILED]
        # not knocked again at once (the connection backoff would retry within 0.1 s)
        assert states.times[1] - states.times[0] >= 1.4
    finally:
        client.close()


def test_credential_files_are_read_again_when_they_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    certs = make_certs(tmp_path / "certs")
    password = tmp_path / "password"
    password.write_text("one\n")
    settings = ZooKeeperRegistrySettings(
        kind="zookeeper",
        name="zk",
        hosts="127.0.0.1:2281",
        sasl={"username": "mesh", "password": {"file": password}},
        tls={
            "ca_file": certs["ca"],
            "cert_file": certs["client"],
            "key_file": certs["client-key"],
        },
    )
    source = SettingsCredentials(settings, {})
    first = source.load()
    assert first.sasl == ("mesh", "one") and first.tls is not None
    assert source.load() is first  # unchanged files are not read again
    version = source.version()
    password.write_text("two\n")
    assert source.version() != version
    second = source.load()
    assert second.sasl == ("mesh", "two") and second.tls is not first.tls
    # a half-written key: refused once, the previous credentials kept
    certs["client-key"].write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n")
    assert source.load() is second
    assert source.load() is second
    assert caplog.text.count("cannot be used registry=zk") == 1
    # no previous credentials to keep: the reason is raised for the connection to show
    with pytest.raises(ssl.SSLError):
        SettingsCredentials(settings, {}).load()
