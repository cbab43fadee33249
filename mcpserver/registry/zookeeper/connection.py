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
- servers tried in a shuffled ring, a chroot after the host list (`h1:2181,h2:2181/app`),
  digest auth sent before any read;
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
client's thread is woken through an eventfd.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

from mcpserver.registry.zookeeper import jute

log = logging.getLogger("mcpserver.registry.zookeeper")

T = TypeVar("T")

CONNECTED = "CONNECTED"
SUSPENDED = "SUSPENDED"  # connection lost; the session may still be alive
LOST = "LOST"  # session expired (or the client stopped): ephemeral nodes and watches gone

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
    """start() gave up waiting for a session."""


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


# ------------------------------------------------------------------------ client


class Connection:
    """A ZooKeeper session that reads with watches (the `ZkClient` protocol)."""

    def __init__(
        self, hosts: str, session_timeout: float, auth: tuple[str, str] | None = None
    ) -> None:
        self._servers, self._chroot = parse_hosts(hosts)
        random.shuffle(self._servers)  # spreads clients over the ensemble
        self._requested_ms = int(session_timeout * 1000)
        self._auth = auth
        self._listeners: list[StateListener] = []
        # guarded by _lock: whether reads may be queued, and the queue
        self._lock = threading.Lock()
        self._up = False
        self._queued: list[_Read] = []
        self._woken = False
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
        self._in_flight: collections.deque[_Read] = collections.deque()
        self._data_watches: dict[str, list[Watch]] = {}
        self._exist_watches: dict[str, list[Watch]] = {}
        self._child_watches: dict[str, list[Watch]] = {}
        self.negotiated_timeout = 0.0

    # ------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 15.0) -> None:
        """Connect (in the background from now on) and wait for a session; raise
        ConnectTimeoutError, stopped again, if none comes within `timeout`."""
        if self._thread is None or not self._thread.is_alive():
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="zookeeper", daemon=True)
            self._thread.start()
        if not self._connected.wait(timeout):
            self.stop()
            names = ",".join(f"{s.host}:{s.port}" for s in self._servers)
            raise ConnectTimeoutError(f"no ZooKeeper session from {names} within {timeout:g}s")

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
            try:
                sock = self._open(server)
            except _ExpiredError:
                self._expire()
                continue  # a new session, from the same server, at once
            except Exception as err:  # the server or the network; a bug is logged whole
                if isinstance(err, OSError | jute.ProtocolError | _DroppedError):
                    log.debug("ZooKeeper %s:%s: %s", server.host, server.port, err)
                else:
                    log.exception("connecting to ZooKeeper %s:%s failed", server.host, server.port)
                tried += 1
                if tried % len(self._servers) == 0:
                    self._stopping.wait(delay * random.uniform(0.5, 1.0))  # noqa: S311  # jitter
                    delay = min(delay * 2, BACKOFF_CAP)
                continue
            delay, tried = BACKOFF_FIRST, 0
            try:
                self._serve(sock)
                reason = "client stopped"
            except (OSError, jute.ProtocolError, _DroppedError) as err:
                reason = str(err) or type(err).__name__
            except Exception as err:  # a bug: never let it end the thread (and the registry)
                log.exception("the ZooKeeper connection failed")
                reason = f"{type(err).__name__}: {err}"
            finally:
                if self._stopping.is_set():
                    self._close_session(sock)
                sock.close()
            self._disconnected(reason)
        if self._session_id:
            self._session_id, self._password = 0, b""
            self._notify(LOST)

    def _open(self, server: Server) -> socket.socket:
        """Connect, make or resume the session, send the auth: a socket ready for reads.
        Waits at most the session timeout shared among the servers (as ZooKeeper's own
        client), in short steps, so that stop() is never kept waiting long."""
        budget = max(self._requested_ms / 1000 / len(self._servers), 1.0)
        deadline = time.monotonic() + budget
        sock = socket.create_connection((server.host, server.port), timeout=min(budget, 5.0))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(HANDSHAKE_STEP)
            # The last zxid seen keeps a resumed session from going back in time on a
            # lagging server. A new session sends 0: a server that has seen less (an
            # ensemble rebuilt from empty disks) would otherwise refuse us forever, and the
            # mirror re-reads everything on a new session anyway.
            last_zxid = self._last_zxid if self._session_id else 0
            sock.sendall(
                jute.connect_request(
                    last_zxid, self._requested_ms, self._session_id, self._password
                )
            )
            body = self._receive_packet(sock, deadline)
            session = jute.Reader(body).session()
            if session.timeout_ms <= 0:
                raise _ExpiredError()
            if self._session_id and session.session_id != self._session_id:
                # a different session: the old one's watches and ephemerals are gone
                self._notify(LOST)
            self._session_id, self._password = session.session_id, session.password
            self.negotiated_timeout = session.timeout_ms / 1000
            if self._auth is not None:
                scheme, credential = self._auth
                sock.sendall(jute.auth(scheme, credential.encode()))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        with self._lock:
            self._up = True
        self._connected.set()
        log.info(
            "ZooKeeper session 0x%x on %s:%s (timeout %gs)",
            self._session_id,
            server.host,
            server.port,
            self.negotiated_timeout,
        )
        self._notify(CONNECTED)
        return sock

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
        """Send what is queued, read what comes, ping; until the connection drops or the
        client stops."""
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
            if outgoing:
                try:
                    count = sock.send(outgoing)
                except BlockingIOError:
                    count = 0
                if count:
                    del outgoing[:count]
                    sent = time.monotonic()
            poller.register(fd, select.POLLIN | (select.POLLOUT if outgoing else 0))
            now = time.monotonic()
            wait = heard + read_timeout - now
            if not outgoing:  # a ping is due only once what was queued has gone
                wait = min(wait, sent + ping_after - now)
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

    def _drain_wake(self) -> None:
        with self._lock:
            self._woken = False
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._wake_fd)

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
            self._in_flight.append(read)

    def _receive(self, sock: socket.socket, incoming: bytearray) -> bool:
        try:
            data = sock.recv(RECEIVE_SIZE)
        except BlockingIOError:
            return False
        if not data:
            raise _DroppedError("the server closed the connection")
        incoming += data
        spans, end = jute.packets(incoming)
        for start, stop in spans:
            self._dispatch(incoming, start, stop)
        del incoming[:end]
        return True

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
            if reply.err != jute.OK:
                raise _DroppedError(f"ZooKeeper refused the {self._auth and self._auth[0]} auth")
            return
        if reply.zxid > 0:
            self._last_zxid = reply.zxid
        if not self._in_flight:
            raise jute.ProtocolError(f"an answer (xid {xid}) to no request")
        read = self._in_flight.popleft()
        err = reply.err
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
        with self._lock:
            self._up = False
            queued, self._queued = self._queued, []
        failed = list(self._in_flight) + queued
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
