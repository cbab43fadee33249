"""The registry's own ZooKeeper client: one session, one thread, reads with watches only.

Why not kazoo: kazoo runs three threads (connection, completion, events) and hands every
answer and every watch event from one to the next through queues and condition variables,
selecting before each packet it reads. The same bare watcher (a children watch on every
providers node, re-listed when it fires) following the same churn side by side spent
0.42 ms of CPU per ZooKeeper write on kazoo and 0.13 ms on this client. This client does the
same reads with one thread that reads the socket, decodes with `jute`, and calls the answer's
and the watch's callbacks right there, in the order the server sent them. It implements
exactly the `ZkClient` protocol the mirror uses (`get_children_async`, `get_async`,
`exists_async` with one-shot watches, connection-state listeners) and nothing else: no
writes, no recipes.

What it keeps of ZooKeeper's client contract (org.apache.zookeeper.ClientCnxn):
- the session: ConnectRequest with the last zxid seen and the session id and password, so
  a reconnect within the session timeout keeps the session; a negotiated timeout of 0 means
  the server has expired it, which is reported (LOST) before a new session is made;
- pings after a third of the negotiated timeout without sending, and the connection given
  up after two thirds without hearing anything (the server frozen, the path dropped);
- servers tried in a shuffled ring, a chroot after the host list (`h1:2181,h2:2181/app`);
- TLS (ZooKeeper 3.5+'s secure client port), then SASL DIGEST-MD5 (`digestmd5.py`), then
  digest auth, each answered before any read is sent; the credentials are read afresh for
  each connection (`CredentialSource`), so rotated files are used from the next one;
- an authentication the server refuses (AUTH_FAILED, or a server that requires SASL) is
  final for these credentials, as in ZooKeeper's own client: AUTH_FAILED is told, and the
  client waits until the credential files change or `auth_retry` has passed, instead of
  knocking every few milliseconds;
- answers matched to requests by xid: ZooKeeper answers a session's requests in order,
  so an answer whose xid is not the oldest request's means the stream is broken, and the
  connection is dropped (the reads fail with ConnectionLossError and are read again);
- read-only servers (`canBeReadOnly`): a server whose ensemble lost its quorum serves
  reads to clients that accept it; we do (READ_ONLY is told instead of CONNECTED), and
  while on one we ask the other servers `isro` (the four-letter word ZooKeeper's client and
  kazoo use, enabled with `readonlymode.enabled`), with backoff, and move to the first
  that answers `rw`. A read-only server refuses a session made on the quorum ("global"),
  so a running client stays SUSPENDED while the quorum is gone; one that starts then, or
  whose session expired, gets a session of the read-only server's own;
- watches registered when the read that set them answers (an exists that finds no node
  leaves an exists watch), and fired once, by event type, as ZooKeeper's ZKWatchManager
  does.

What it does differently, on purpose: when the connection drops, every pending read fails
with `ConnectionLossError` and every watch is dropped (each told with a NONE event) instead of
being re-registered with SetWatches. The mirror re-reads the whole tree after any reconnect
(it must anyway after a session expiry), so the watches come back with those reads, and
one path covers both cases. And a new session (after an expiry) is asked for with no last
zxid, so that an ensemble rebuilt from empty disks, which has seen less than we have, does
not refuse us forever (ZooKeeper's own client stays locked out until restarted).

Threads: callbacks (a read's answer, a watch, a state listener) run on the client's own
thread and must not block. Reads may be requested from any thread; they are queued and the
client's thread is woken through an eventfd (`os.eventfd`: Linux only, as is the server).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, NamedTuple, Protocol, TypeVar

from mcpserver.registry.zookeeper import jute
from mcpserver.registry.zookeeper.digestmd5 import DigestMD5, SaslError

log = logging.getLogger("mcpserver.registry.zookeeper")

T = TypeVar("T")

CONNECTED = "CONNECTED"
READ_ONLY = "READ_ONLY"  # connected to a read-only server: reads answer, nothing changes
SUSPENDED = "SUSPENDED"  # connection lost; the session may still be alive
LOST = "LOST"  # session expired (or the client stopped): ephemeral nodes and watches gone
AUTH_FAILED = "AUTH_FAILED"  # the server refused our credentials: not retried at once

EVENT_NAMES = {
    jute.NODE_CREATED: "CREATED",
    jute.NODE_DELETED: "DELETED",
    jute.NODE_DATA_CHANGED: "CHANGED",
    jute.NODE_CHILDREN_CHANGED: "CHILD",
}
NONE_EVENT = "NONE"

RECEIVE_SIZE = 1 << 18
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 2.0
HANDSHAKE_STEP = 0.25  # how long a blocked handshake read waits before checking stop()
AUTH_RETRY = 300.0  # seconds after a refused authentication before trying the same again
CREDENTIALS_CHECK = 1.0  # how often the credential files are checked while refused
PROBE_FIRST = 0.5  # on a read-only server: first wait before asking another for `isro`
PROBE_CAP = 60.0  # ... doubling up to this (ZooKeeper's client: maxPingRwTimeout)
TLS_SEND = 1 << 16  # bytes handed to one TLS write
_REPLY_SIZE = 16  # a ReplyHeader alone: xid, zxid, err


# ------------------------------------------------------------------------ errors


class ZooKeeperError(Exception):
    """An error the server or the connection reported, as opposed to a bug."""

    code = 0


class NoNodeError(ZooKeeperError):
    code = jute.NO_NODE


class NoAuthError(ZooKeeperError):
    code = jute.NO_AUTH


class ConnectionLossError(ZooKeeperError):
    """The read was cut off with the connection: not an answer about the node."""

    code = jute.CONNECTION_LOSS


class ConnectionClosedError(ConnectionLossError):
    """The client was stopped."""


class ConnectTimeoutError(ZooKeeperError):
    """start() gave up waiting for a session (the client keeps trying)."""


class AuthFailedError(ZooKeeperError):
    """The server refused our credentials; the client waits for new ones (or `auth_retry`)."""

    code = jute.AUTH_FAILED


def error_for(code: int, path: str) -> ZooKeeperError:
    kinds: dict[int, type[ZooKeeperError]] = {
        jute.NO_NODE: NoNodeError,
        jute.NO_AUTH: NoAuthError,
        jute.CONNECTION_LOSS: ConnectionLossError,
        jute.SESSION_EXPIRED: ConnectionLossError,
    }
    kind = kinds.get(code)
    if kind is not None:
        return kind(path)
    err = ZooKeeperError(f"{path}: ZooKeeper error {code}")
    err.code = code
    return err


class _DroppedError(Exception):
    """This connection is over (a reason for the log); the session may live on."""


class _ExpiredError(Exception):
    """The server says the session has expired."""


class _RefusedError(Exception):
    """The server refused our credentials, or they cannot be used: final until they change."""


class _MovingError(Exception):
    """A read-write server answers while we read from a read-only one: move there."""


# ------------------------------------------------------------------------ values


class WatchedEvent(NamedTuple):
    """What a watch callback is given, shaped as kazoo's (type, state, path)."""

    type: str  # CREATED, DELETED, CHANGED, CHILD, or NONE (the connection went)
    state: str
    path: str


Watch = Callable[[WatchedEvent], object]
StateListener = Callable[[str], object]


class Result(Generic[T]):
    """The answer to one read, later: `rawlink` a callback, then `get_nowait` in it."""

    __slots__ = ("_callbacks", "_error", "_lock", "_value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[Result[T]], object]] | None = []
        self._value: T | None = None
        self._error: BaseException | None = None

    def rawlink(self, callback: Callable[[Result[T]], object]) -> None:
        """Call `callback(self)` once the answer is in: now (on this thread) if it is."""
        with self._lock:
            if self._callbacks is not None:
                self._callbacks.append(callback)
                return
        callback(self)

    def get_nowait(self) -> T:
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set before any callback runs

    def settle(self, value: T | None, error: BaseException | None = None) -> None:
        with self._lock:
            self._value, self._error = value, error
            callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            try:
                callback(self)
            except Exception:
                log.exception("a ZooKeeper read's callback failed")


class _Read(NamedTuple):
    op: int
    path: str  # the client's path (no chroot)
    watch: Watch | None
    result: Result[object]


class Server(NamedTuple):
    host: str
    port: int


def parse_hosts(hosts: str) -> tuple[list[Server], str]:
    """`h1:2181,h2/app` -> the servers and the chroot ('' for none)."""
    servers_part, slash, chroot = hosts.partition("/")
    chroot = (slash + chroot).rstrip("/")
    servers = []
    for raw in servers_part.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.startswith("["):  # [v6]:port
            host, _, rest = item[1:].partition("]")
            port = rest.lstrip(":")
        else:
            host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        servers.append(Server(host, int(port) if port else 2181))
    if not servers:
        raise ValueError(f"no ZooKeeper server in {hosts!r}")
    return servers, chroot


class Credentials(NamedTuple):
    """What a connection authenticates with. Secrets are never logged: `describe()` names
    the methods and the user only."""

    digest: tuple[str, str] | None = None  # AuthPacket (scheme, "user:password")
    sasl: tuple[str, str] | None = None  # SASL DIGEST-MD5 (user, password)
    tls: ssl.SSLContext | None = None  # TLS to the (secure) client port
    server_name: str | None = None  # the name the servers' certificates must carry

    def describe(self) -> str:
        parts = []
        if self.tls is not None:
            parts.append("TLS")
        if self.sasl is not None:
            parts.append(f"SASL DIGEST-MD5 as {self.sasl[0]}")
        if self.digest is not None:
            parts.append(f"{self.digest[0]} auth as {self.digest[1].partition(':')[0]}")
        return ", ".join(parts) or "no credentials"


NO_CREDENTIALS = Credentials()


class CredentialSource(Protocol):
    """Credentials read from files that may change (rotated certificates, a new password)."""

    def load(self) -> Credentials:
        """The credentials to connect with now; raise (OSError, ValueError, ssl.SSLError)
        if there are none that can be used."""

    def version(self) -> Hashable:
        """Changes when a file the credentials come from changes."""


class _Fixed:
    """Credentials that never change."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def load(self) -> Credentials:
        return self._credentials

    def version(self) -> Hashable:
        return 0


# ------------------------------------------------------------------------ client


class Connection:
    """A ZooKeeper session that reads with watches (the `ZkClient` protocol)."""

    def __init__(
        self,
        hosts: str,
        session_timeout: float,
        credentials: Credentials | CredentialSource = NO_CREDENTIALS,
        *,
        auth_retry: float = AUTH_RETRY,
        shuffle: bool = True,
    ) -> None:
        self._servers, self._chroot = parse_hosts(hosts)
        if shuffle:
            random.shuffle(self._servers)  # spreads clients over the ensemble
        self._requested_ms = int(session_timeout * 1000)
        self._credentials: CredentialSource = (
            _Fixed(credentials) if isinstance(credentials, Credentials) else credentials
        )
        self._auth_retry = auth_retry
        self._listeners: list[StateListener] = []
        # guarded by _lock: whether reads may be queued, and the queue
        self._lock = threading.Lock()
        self._up = False
        self._queued: list[_Read] = []
        self._woken = False
        # start() waits on it for a session or a refusal
        self._outcome = threading.Condition()
        self._refused = ""  # why the server refused our credentials ("" when it did not)
        # the client thread's own (start/stop only touch them while it is not running)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._session_id = 0
        self._password = b""
        self._last_zxid = 0
        self._xid = 0
        self._next_server = 0
        self._in_flight: collections.deque[tuple[int, _Read]] = collections.deque()
        self._data_watches: dict[str, list[Watch]] = {}
        self._exist_watches: dict[str, list[Watch]] = {}
        self._child_watches: dict[str, list[Watch]] = {}
        self._tls: ssl.SSLContext | None = None  # the connection's, while it is up
        self._probe_at = 0.0
        self._probe_delay = PROBE_FIRST
        self._probed = 0
        # read by other threads for status and logs (each a single assignment)
        self.negotiated_timeout = 0.0
        self.server = ""  # "host:port" of the server we are connected to, "" when none
        self.read_only = False  # that server is a read-only one
        self.last_error = ""  # what went wrong last (a server, the network, credentials)

    # ------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 15.0) -> None:
        """Connect (in the background from now on) and wait for a session. Raises
        AuthFailedError as soon as the server refuses our credentials, ConnectTimeoutError
        if no session comes within `timeout`; either way the client keeps trying (as
        described above) until stop()."""
        if self._thread is None or not self._thread.is_alive():
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="zookeeper", daemon=True)
            self._thread.start()
        with self._outcome:
            self._outcome.wait_for(lambda: self._connected.is_set() or self._refused, timeout)
        if self._connected.is_set():
            return
        if self._refused:
            raise AuthFailedError(self._refused)
        names = ",".join(f"{s.host}:{s.port}" for s in self._servers)
        why = f" (last error: {self.last_error})" if self.last_error else ""
        raise ConnectTimeoutError(f"no ZooKeeper session from {names} within {timeout:g}s{why}")

    def stop(self) -> None:
        """Close the session and the thread; pending reads fail with ConnectionClosedError."""
        self._stopping.set()
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._thread = None

    def close(self) -> None:
        """Release the client's resources (after stop())."""
        self.stop()
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1

    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: StateListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # ----------------------------------------------------------------- reads

    def get_children_async(
        self, path: str, watch: Watch | None = None, include_data: bool = True
    ) -> Result[tuple[list[str], jute.Stat]]:
        return self._read(jute.GET_CHILDREN2, path, watch)  # type: ignore[return-value]

    def get_async(self, path: str, watch: Watch | None = None) -> Result[tuple[bytes, jute.Stat]]:
        return self._read(jute.GET_DATA, path, watch)  # type: ignore[return-value]

    def exists_async(self, path: str, watch: Watch | None = None) -> Result[jute.Stat | None]:
        return self._read(jute.EXISTS, path, watch)  # type: ignore[return-value]

    def _read(self, op: int, path: str, watch: Watch | None) -> Result[object]:
        if not path.startswith("/"):
            raise ValueError(f"{path!r}: a ZooKeeper path starts with /")
        read = _Read(op, path, watch, Result())
        with self._lock:
            up = self._up
            if up:
                self._queued.append(read)
                wake = not self._woken and threading.current_thread() is not self._thread
                self._woken = self._woken or wake
        if not up:
            read.result.settle(None, ConnectionLossError(path))
        elif wake:
            self._wake()
        return read.result

    def _wake(self) -> None:
        fd = self._wake_fd
        if fd >= 0:
            os.eventfd_write(fd, 1)

    # ------------------------------------------------------ the client thread

    def _run(self) -> None:
        delay = BACKOFF_FIRST
        tried = 0
        while not self._stopping.is_set():
            server = self._servers[self._next_server % len(self._servers)]
            self._next_server += 1
            version = self._credentials.version()
            try:
                sock = self._open(server)
            except _ExpiredError:
                self._expire()
                self._next_server -= 1  # a new session, from the same server, at once
                continue
            except _RefusedError as err:
                self._refuse(server, str(err), version)
                delay, tried = BACKOFF_FIRST, 0
                continue
            except Exception as err:  # the server or the network; a bug is logged whole
                if isinstance(err, OSError | jute.ProtocolError | _DroppedError):
                    log.debug("ZooKeeper %s:%s: %s", server.host, server.port, err)
                else:
                    log.exception("connecting to ZooKeeper %s:%s failed", server.host, server.port)
                self.last_error = f"{server.host}:{server.port}: {_describe(err)}"
                tried += 1
                if tried % len(self._servers) == 0:
                    self._stopping.wait(delay * random.uniform(0.5, 1.0))  # noqa: S311  # jitter
                    delay = min(delay * 2, BACKOFF_CAP)
                continue
            delay, tried = BACKOFF_FIRST, 0
            refused = ""
            try:
                self._serve(sock)
                reason = "client stopped"
            except _MovingError as err:
                reason = str(err)
            except _RefusedError as err:
                reason = refused = str(err)
            except (OSError, jute.ProtocolError, _DroppedError) as err:
                reason = _describe(err)
            except Exception as err:  # a bug: never let it end the thread (and the registry)
                log.exception("the ZooKeeper connection failed")
                reason = f"{type(err).__name__}: {err}"
            finally:
                if self._stopping.is_set():
                    self._close_session(sock)
                sock.close()
            self.last_error = f"{server.host}:{server.port}: {reason}"
            self._disconnected(reason)
            if refused:
                self._refuse(server, refused, version)
        if self._session_id:
            self._session_id, self._password = 0, b""
            self._notify(LOST)

    def _refuse(self, server: Server, reason: str, version: Hashable) -> None:
        """The server refused our credentials: say so once, then wait until they change, or
        `auth_retry` has passed, or stop(), without knocking again meanwhile."""
        self.last_error = f"{server.host}:{server.port}: {reason}"
        log.warning(
            "ZooKeeper %s:%s refused our credentials: %s; trying again when they change or in %gs",
            server.host,
            server.port,
            reason,
            self._auth_retry,
        )
        with self._outcome:
            self._refused = self.last_error
            self._outcome.notify_all()
        self._notify(AUTH_FAILED)
        until = time.monotonic() + self._auth_retry
        while not self._stopping.wait(min(CREDENTIALS_CHECK, self._auth_retry)):
            if self._credentials.version() != version:
                log.info("ZooKeeper credentials changed; connecting again")
                break
            if time.monotonic() >= until:
                break
        with self._outcome:
            self._refused = ""
        self._next_server -= 1  # the same server first: it is the one that refused

    def _open(self, server: Server) -> socket.socket:
        """Connect, make or resume the session, authenticate: a socket ready for reads.
        Waits at most the session timeout shared among the servers (as ZooKeeper's own
        client), in short steps, so that stop() is never kept waiting long."""
        try:
            credentials = self._credentials.load()
        except (OSError, ValueError, ssl.SSLError) as err:
            raise _RefusedError(f"the credentials cannot be used: {_describe(err)}") from err
        budget = max(self._requested_ms / 1000 / len(self._servers), 1.0)
        deadline = time.monotonic() + budget
        sock = socket.create_connection((server.host, server.port), timeout=min(budget, 5.0))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(HANDSHAKE_STEP)
            if credentials.tls is not None:
                sock = self._handshake_tls(sock, credentials, server, deadline)
            # The last zxid seen keeps a resumed session from going back in time on a
            # lagging server. A new session sends 0: a server that has seen less (an
            # ensemble rebuilt from empty disks) would otherwise refuse us forever, and the
            # mirror re-reads everything on a new session anyway.
            last_zxid = self._last_zxid if self._session_id else 0
            sock.sendall(
                jute.connect_request(
                    last_zxid, self._requested_ms, self._session_id, self._password, True
                )
            )
            body = self._receive_packet(sock, deadline)
            if len(body) == _REPLY_SIZE and jute.Reader(body).reply().err == jute.NOT_READ_ONLY:
                # a read-only server answers a new session with an error, not a session,
                # unless it makes local ones
                raise _DroppedError(
                    "a read-only server that makes no sessions (it needs localSessionsEnabled=true)"
                )
            session = jute.Reader(body).session()
            if session.timeout_ms <= 0:
                raise _ExpiredError()
            if self._session_id and session.session_id != self._session_id:
                # a different session: the old one's watches and ephemerals are gone
                self._notify(LOST)
            self._session_id, self._password = session.session_id, session.password
            self.negotiated_timeout = session.timeout_ms / 1000
            self._xid = 0
            if credentials.sasl is not None:
                self._authenticate_sasl(sock, credentials.sasl, deadline)
            if credentials.digest is not None:
                scheme, credential = credentials.digest
                sock.sendall(jute.auth(scheme, credential.encode()))
                reply = self._receive_reply(sock, jute.AUTH_XID, deadline)[0]
                if reply.err != jute.OK:
                    raise _RefusedError(f"{scheme} auth refused (ZooKeeper error {reply.err})")
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._tls = credentials.tls
        self.server = f"{server.host}:{server.port}"
        self.read_only = session.read_only
        self.last_error = ""
        self._probe_delay = PROBE_FIRST
        self._probe_at = time.monotonic() + PROBE_FIRST
        with self._lock:
            self._up = True
        with self._outcome:
            self._connected.set()
            self._outcome.notify_all()
        log.info(
            "ZooKeeper session 0x%x on %s:%s (timeout %gs%s%s)",
            self._session_id,
            server.host,
            server.port,
            self.negotiated_timeout,
            f"; {credentials.describe()}" if credentials != NO_CREDENTIALS else "",
            "; a read-only server" if session.read_only else "",
        )
        self._notify(READ_ONLY if session.read_only else CONNECTED)
        return sock

    def _handshake_tls(
        self, sock: socket.socket, credentials: Credentials, server: Server, deadline: float
    ) -> ssl.SSLSocket:
        assert credentials.tls is not None
        tls = credentials.tls.wrap_socket(
            sock,
            server_hostname=credentials.server_name or server.host,
            do_handshake_on_connect=False,
        )
        while True:
            if self._stopping.is_set():
                raise _DroppedError("stopped during the TLS handshake")
            if time.monotonic() > deadline:
                raise _DroppedError("no answer to the TLS handshake")
            try:
                tls.do_handshake()
                return tls
            except TimeoutError:
                continue

    def _authenticate_sasl(
        self, sock: socket.socket, login: tuple[str, str], deadline: float
    ) -> None:
        """SASL DIGEST-MD5, as ZooKeeper's client runs it: an empty token first (the
        mechanism has no initial response), the server's challenge answered, its proof
        checked. A refusal is AUTH_FAILED (or "SASL required") and the server closes."""
        user, password = login
        digest = DigestMD5(user, password)
        token = b""
        try:
            for step in range(3):
                xid = self._next_xid()
                sock.sendall(jute.sasl(xid, token))
                reply, reader = self._receive_reply(sock, xid, deadline)
                if reply.err in (jute.AUTH_FAILED, jute.SESSION_CLOSED_REQUIRE_SASL_AUTH):
                    raise _RefusedError(f"SASL DIGEST-MD5 as {user} refused")
                if reply.err != jute.OK:
                    raise _RefusedError(f"SASL refused (ZooKeeper error {reply.err})")
                answer = reader.buffer()
                if step == 0:
                    if not answer:
                        raise _RefusedError(
                            "the server offers no SASL (is SASLAuthenticationProvider set, "
                            "with a JAAS Server section?)"
                        )
                    token = digest.respond(answer)
                else:
                    digest.verify(answer)
                    return
        except SaslError as err:
            raise _RefusedError(f"SASL DIGEST-MD5 as {user}: {err}") from None

    def _receive_reply(
        self, sock: socket.socket, xid: int, deadline: float
    ) -> tuple[jute.Reply, jute.Reader]:
        """The answer to the one request in flight during the handshake."""
        while True:
            body = self._receive_packet(sock, deadline)
            reader = jute.Reader(body)
            reply = reader.reply()
            if reply.xid == jute.PING_XID:
                continue
            if reply.xid != xid:
                raise jute.ProtocolError(f"answer xid {reply.xid} to request xid {xid}")
            if reply.zxid > 0:
                self._last_zxid = reply.zxid
            return reply, reader

    def _receive_packet(self, sock: socket.socket, deadline: float) -> bytes:
        """One framed packet, blocking in short steps (the handshake only)."""
        head = self._receive_exactly(sock, 4, deadline)
        length = int.from_bytes(head, "big", signed=True)
        if length < 0 or length > jute.MAX_PACKET:
            raise jute.ProtocolError(f"packet length {length}")
        return self._receive_exactly(sock, length, deadline)

    def _receive_exactly(self, sock: socket.socket, size: int, deadline: float) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            if self._stopping.is_set():
                raise _DroppedError("stopped during the handshake")
            if time.monotonic() > deadline:
                raise _DroppedError("no answer to the handshake")
            try:
                chunk = sock.recv(size - len(chunks))
            except TimeoutError:
                continue
            if not chunk:
                raise _DroppedError("the server closed the connection during the handshake")
            chunks += chunk
        return bytes(chunks)

    def _expire(self) -> None:
        log.warning("ZooKeeper session 0x%x expired", self._session_id)
        self._session_id, self._password = 0, b""
        self._notify(LOST)

    def _serve(self, sock: socket.socket) -> None:
        """Send what is queued, read what comes, ping; on a read-only server, look for a
        read-write one; until the connection drops or the client stops."""
        poller = select.poll()
        poller.register(self._wake_fd, select.POLLIN)
        fd = sock.fileno()
        timeout = self.negotiated_timeout
        read_timeout, ping_after = timeout * 2 / 3, timeout / 3
        outgoing = bytearray()
        incoming = bytearray()
        now = time.monotonic()
        heard = sent = now
        while not self._stopping.is_set():
            self._take_queued(outgoing)
            if outgoing and self._send(sock, outgoing):
                sent = time.monotonic()
            poller.register(fd, select.POLLIN | (select.POLLOUT if outgoing else 0))
            now = time.monotonic()
            wait = heard + read_timeout - now
            if not outgoing:  # a ping is due only once what was queued has gone
                wait = min(wait, sent + ping_after - now)
            if self.read_only:
                wait = min(wait, self._probe_at - now)
            ready = poller.poll(max(wait, 0) * 1000)
            now = time.monotonic()
            for ready_fd, events in ready:
                if ready_fd == self._wake_fd:
                    self._drain_wake()
                elif events & (select.POLLIN | select.POLLHUP | select.POLLERR) and self._receive(
                    sock, incoming
                ):
                    heard = now = time.monotonic()
            if now - heard > read_timeout:
                raise _DroppedError(f"nothing heard for {now - heard:.1f}s")
            if now - sent >= ping_after and not outgoing:
                outgoing += jute.ping()
            if self.read_only and now >= self._probe_at:
                self._probe(min(1.0, read_timeout / 4))

    def _send(self, sock: socket.socket, outgoing: bytearray) -> bool:
        """Write what the socket takes now; True if anything went."""
        try:
            if self._tls is None:
                count = sock.send(outgoing)
            else:
                # A TLS write that would block must be retried with the same bytes first:
                # `outgoing` only grows at its end until a write succeeds, so it is.
                with memoryview(outgoing) as view:
                    count = sock.send(view[:TLS_SEND])
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return False
        del outgoing[:count]
        return count > 0

    def _probe(self, timeout: float) -> None:
        """On a read-only server: ask the next other server whether it is read-write (the
        `isro` four-letter word); move there if it is. Backs off as ZooKeeper's client."""
        self._probe_delay = min(self._probe_delay * 2, PROBE_CAP)
        self._probe_at = time.monotonic() + self._probe_delay * random.uniform(0.75, 1.0)  # noqa: S311
        others = [s for s in self._servers if f"{s.host}:{s.port}" != self.server]
        if not others:
            return
        self._probed += 1
        server = others[self._probed % len(others)]
        try:
            with socket.create_connection((server.host, server.port), timeout=timeout) as raw:
                probe: socket.socket = raw
                if self._tls is not None:
                    probe = self._tls.wrap_socket(raw, server_hostname=server.host)
                probe.sendall(b"isro")
                answer = probe.recv(16)
        except (OSError, ssl.SSLError) as err:
            log.debug("isro %s:%s: %s", server.host, server.port, err)
            return
        if answer == b"rw":
            self._next_server = self._servers.index(server)
            raise _MovingError(f"{server.host}:{server.port} serves read-write again")

    def _drain_wake(self) -> None:
        # Read the eventfd before clearing the flag, never after: a reader that queued (and
        # wrote the eventfd) between the two would have its write consumed while the flag
        # stayed set, and from then on every read queued from another thread waited for
        # the next answer or ping to be sent (seconds) instead of waking this thread.
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._wake_fd)
        with self._lock:
            self._woken = False

    def _next_xid(self) -> int:
        """Request ids count up from 1 and wrap before the reserved negative ones."""
        self._xid = (self._xid % 0x7FFFFFFF) + 1
        return self._xid

    def _take_queued(self, outgoing: bytearray) -> None:
        with self._lock:
            if not self._queued:
                return
            queued, self._queued = self._queued, []
        chroot = self._chroot
        for read in queued:
            xid = self._next_xid()
            path = chroot + read.path if read.path != "/" or not chroot else chroot
            outgoing += jute.request(xid, read.op, path, read.watch is not None)
            self._in_flight.append((xid, read))

    def _receive(self, sock: socket.socket, incoming: bytearray) -> bool:
        """Read what has come (all of it: TLS may hold decrypted bytes the poll cannot see)
        and handle every complete packet."""
        got = False
        while True:
            try:
                data = sock.recv(RECEIVE_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            if not data:
                raise _DroppedError("the server closed the connection")
            incoming += data
            got = True
            if self._tls is None and len(data) < RECEIVE_SIZE:
                break
        if got:
            spans, end = jute.packets(incoming)
            for start, stop in spans:
                self._dispatch(incoming, start, stop)
            del incoming[:end]
        return got

    def _dispatch(self, buffer: bytearray, start: int, stop: int) -> None:
        reader = jute.Reader(buffer, start, stop)
        reply = reader.reply()
        xid = reply.xid
        if xid == jute.WATCH_XID:
            self._fire(reader.event())
            return
        if xid == jute.PING_XID:
            return
        if xid == jute.AUTH_XID:
            raise jute.ProtocolError("an auth answer after the handshake")
        if reply.zxid > 0:
            self._last_zxid = reply.zxid
        if not self._in_flight:
            raise jute.ProtocolError(f"an answer (xid {xid}) to no request")
        expected, read = self._in_flight.popleft()
        if xid != expected:
            # ZooKeeper answers a session's requests in order: this is a broken stream,
            # not a late answer. Put it back: it fails with the connection.
            self._in_flight.appendleft((expected, read))
            raise jute.ProtocolError(f"answer xid {xid} where xid {expected} was due")
        err = reply.err
        if err == jute.SESSION_CLOSED_REQUIRE_SASL_AUTH:
            self._in_flight.appendleft((expected, read))
            raise _RefusedError("the server requires SASL authentication")
        value: object = None
        if err == jute.OK:
            if read.op == jute.GET_CHILDREN2:
                value = (reader.strings(), reader.stat())
                self._register(self._child_watches, read)
            elif read.op == jute.GET_DATA:
                value = (reader.buffer(), reader.stat())
                self._register(self._data_watches, read)
            else:
                value = reader.stat()
                self._register(self._data_watches, read)
            read.result.settle(value)
        elif err == jute.NO_NODE and read.op == jute.EXISTS:
            self._register(self._exist_watches, read)
            read.result.settle(None)
        else:
            read.result.settle(None, error_for(err, read.path))

    @staticmethod
    def _register(table: dict[str, list[Watch]], read: _Read) -> None:
        if read.watch is not None:
            table.setdefault(read.path, []).append(read.watch)

    def _fire(self, event: jute.Event) -> None:
        """One-shot watches by event type (as ZooKeeper's ZKWatchManager.materialize)."""
        path = event.path
        if self._chroot:
            path = path[len(self._chroot) :] or "/"
        name = EVENT_NAMES.get(event.type)
        if name is None:
            return
        watches: list[Watch] = []
        if event.type != jute.NODE_CHILDREN_CHANGED:
            watches += self._data_watches.pop(path, ())
            watches += self._exist_watches.pop(path, ())
        if event.type in (jute.NODE_CHILDREN_CHANGED, jute.NODE_DELETED):
            watches += self._child_watches.pop(path, ())
        happened = WatchedEvent(name, CONNECTED, path)
        for watch in watches:
            try:
                watch(happened)
            except Exception:
                log.exception("a ZooKeeper watch callback failed")

    def _disconnected(self, reason: str) -> None:
        """The connection is over: fail what was asked, drop every watch, tell."""
        self._connected.clear()
        self.server = ""
        self.read_only = False
        self._tls = None
        with self._lock:
            self._up = False
            queued, self._queued = self._queued, []
        failed = [read for _, read in self._in_flight] + queued
        self._in_flight.clear()
        stopping = self._stopping.is_set()
        for read in failed:
            error = ConnectionClosedError(read.path) if stopping else ConnectionLossError(read.path)
            read.result.settle(None, error)
        watches = [self._data_watches, self._exist_watches, self._child_watches]
        dropped = [(path, w) for table in watches for path, ws in table.items() for w in ws]
        for table in watches:
            table.clear()
        for path, watch in dropped:
            try:
                watch(WatchedEvent(NONE_EVENT, SUSPENDED, path))
            except Exception:
                log.exception("a ZooKeeper watch callback failed")
        if not stopping:
            log.warning("ZooKeeper connection lost: %s", reason)
            self._notify(SUSPENDED)

    def _close_session(self, sock: socket.socket) -> None:
        """Tell the server the session is over (best effort: its ephemerals go now)."""
        try:
            sock.setblocking(True)
            sock.settimeout(1.0)
            sock.sendall(jute.close_session(self._next_xid()))
        except OSError:
            pass

    def _notify(self, state: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:
                log.exception("a ZooKeeper state listener failed")


def _describe(err: BaseException) -> str:
    """An error in words for the status page: the TLS library's reason where it has one."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {err.verify_message or err.reason}"
    if isinstance(err, ssl.SSLError):
        reason = err.reason or str(err)
        if "ALERT" in reason and "CERTIFICATE" in reason:
            return f"TLS: the server refused our client certificate ({reason})"
        if "ALERT" in reason:
            return f"TLS: the server ended the handshake ({reason})"
        return f"TLS: {reason}"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, TimeoutError):
        return "timed out"
    return str(err) or type(err).__name__
