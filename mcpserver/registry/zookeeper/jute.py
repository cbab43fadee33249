"""ZooKeeper's wire format (jute), for the few messages the registry's client exchanges.

Pure encoding and decoding, no I/O, so the client (`connection.py`) is a loop around these
and the codec is tested byte for byte. Every message is big-endian and framed by a 4-byte
length. The records mirror ZooKeeper's `zookeeper.jute` (org.apache.zookeeper.proto):
ConnectRequest/ConnectResponse, RequestHeader/ReplyHeader, GetDataRequest,
GetChildren2Request, ExistsRequest (the same shape), AuthPacket, GetSASLRequest and
SetSASLResponse, WatcherEvent and Stat.
Strings and buffers are a signed 4-byte length (-1 for null) and the bytes.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# OpCode (org.apache.zookeeper.ZooDefs.OpCode)
EXISTS = 3
GET_DATA = 4
PING = 11
GET_CHILDREN2 = 12
AUTH = 100
SASL = 102
CLOSE_SESSION = -11

# reserved xids (org.apache.zookeeper.ClientCnxn)
WATCH_XID = -1
PING_XID = -2
AUTH_XID = -4

# KeeperException.Code
OK = 0
CONNECTION_LOSS = -4
MARSHALLING_ERROR = -5
NO_NODE = -101
NO_AUTH = -102
NOT_READ_ONLY = -119  # a write (or a global session) asked of a read-only server
SESSION_EXPIRED = -112
AUTH_FAILED = -115
SESSION_CLOSED_REQUIRE_SASL_AUTH = -124

# Watcher.Event.EventType
EVENT_NONE = -1
NODE_CREATED = 1
NODE_DELETED = 2
NODE_DATA_CHANGED = 3
NODE_CHILDREN_CHANGED = 4

MAX_PACKET = 64 << 20
"""The longest packet accepted. ZooKeeper's own limit (jute.maxbuffer) defaults to 1 MiB; a
length beyond this is a broken stream, not a big answer."""

_INT = struct.Struct(">i")
_REPLY = struct.Struct(">iqi")  # xid, zxid, err
_STAT = struct.Struct(">qqqqiiiqiiq")
_CONNECT_HEAD = struct.Struct(">iqiq")  # protocolVersion, lastZxidSeen, timeOut, sessionId
_CONNECTED_HEAD = struct.Struct(">iiq")  # protocolVersion, timeOut, sessionId


class ProtocolError(Exception):
    """The bytes are not what ZooKeeper sends: drop the connection."""


class Stat(NamedTuple):
    """A znode's stat (org.apache.zookeeper.data.Stat)."""

    czxid: int
    mzxid: int
    ctime: int  # creation time, ms since the epoch
    mtime: int
    version: int
    cversion: int
    aversion: int
    ephemeral_owner: int
    data_length: int
    num_children: int
    pzxid: int


class Session(NamedTuple):
    """What ConnectResponse grants: a negotiated timeout of 0 means the session asked
    for has expired. `read_only`: the server is a read-only one (its ensemble has lost its
    quorum); servers before 3.4 leave the flag out."""

    timeout_ms: int
    session_id: int
    password: bytes
    read_only: bool = False


class Reply(NamedTuple):
    xid: int
    zxid: int
    err: int


class Event(NamedTuple):
    """A WatcherEvent: type, keeper state and the path (chroot included)."""

    type: int
    state: int
    path: str


# ------------------------------------------------------------------ encoding


def _string(value: bytes) -> bytes:
    return _INT.pack(len(value)) + value


def frame(body: bytes) -> bytes:
    return _INT.pack(len(body)) + body


def connect_request(
    last_zxid: int, timeout_ms: int, session_id: int, password: bytes, read_only: bool = False
) -> bytes:
    """The framed ConnectRequest (protocol version 0); `read_only` says a read-only server
    will do (ZooKeeper's `canBeReadOnly`)."""
    head = _CONNECT_HEAD.pack(0, last_zxid, timeout_ms, session_id)
    return frame(head + _string(password or bytes(16)) + bytes([read_only]))


def request(xid: int, op: int, path: str, watch: bool) -> bytes:
    """A framed read request: GetData, GetChildren2 and Exists all carry (path, watch)."""
    return frame(_INT.pack(xid) + _INT.pack(op) + _string(path.encode()) + bytes([watch]))


def ping() -> bytes:
    return frame(_INT.pack(PING_XID) + _INT.pack(PING))


def close_session(xid: int) -> bytes:
    return frame(_INT.pack(xid) + _INT.pack(CLOSE_SESSION))


def sasl(xid: int, token: bytes) -> bytes:
    """GetSASLRequest: one SASL token, under an ordinary xid (as ZooKeeper's client sends
    them, before any other request)."""
    return frame(_INT.pack(xid) + _INT.pack(SASL) + _string(token))


def auth(scheme: str, credential: bytes) -> bytes:
    """AuthPacket (type 0) under the reserved auth xid."""
    body = _INT.pack(AUTH_XID) + _INT.pack(AUTH) + _INT.pack(0)
    return frame(body + _string(scheme.encode()) + _string(credential))


# ------------------------------------------------------------------ decoding


class Reader:
    """Reads one packet's fields in order; any overrun is a ProtocolError."""

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes | bytearray, start: int = 0, end: int | None = None) -> None:
        self._data = data
        self._pos = start
        self._end = len(data) if end is None else end

    def _take(self, size: int) -> int:
        pos = self._pos
        if size < 0 or pos + size > self._end:
            raise ProtocolError("packet ends early")
        self._pos = pos + size
        return pos

    def int(self) -> int:
        value: int = _INT.unpack_from(self._data, self._take(4))[0]
        return value

    def reply(self) -> Reply:
        return Reply._make(_REPLY.unpack_from(self._data, self._take(_REPLY.size)))

    def buffer(self) -> bytes:
        size = self.int()
        if size < 0:
            return b""  # null
        pos = self._take(size)
        return bytes(self._data[pos : pos + size])

    def string(self) -> str:
        try:
            return self.buffer().decode()
        except UnicodeDecodeError as err:
            raise ProtocolError(f"a string is not UTF-8: {err}") from None

    def strings(self) -> list[str]:
        """A vector of strings (`string()` each, in one loop: a listing of 100k provider
        names is read at a cold start, and a method call per field was half of it)."""
        count = self.int()
        if count < 0:
            return []
        data, pos, end = self._data, self._pos, self._end
        if count > end - pos:  # each takes 4 bytes at least
            raise ProtocolError("packet ends early")
        unpack = _INT.unpack_from
        found: list[str] = []
        for _ in range(count):
            if pos + 4 > end:
                raise ProtocolError("packet ends early")
            size: int = unpack(data, pos)[0]
            pos += 4
            if size < 0:
                found.append("")  # null
                continue
            stop = pos + size
            if stop > end:
                raise ProtocolError("packet ends early")
            try:
                found.append(data[pos:stop].decode())
            except UnicodeDecodeError as err:
                raise ProtocolError(f"a string is not UTF-8: {err}") from None
            pos = stop
        self._pos = pos
        return found

    def stat(self) -> Stat:
        return Stat._make(_STAT.unpack_from(self._data, self._take(_STAT.size)))

    def session(self) -> Session:
        _version, timeout, session_id = _CONNECTED_HEAD.unpack_from(
            self._data, self._take(_CONNECTED_HEAD.size)
        )
        password = self.buffer()
        read_only = self._pos < self._end and self._data[self._take(1)] != 0
        return Session(timeout, session_id, password, read_only)

    def event(self) -> Event:
        return Event(self.int(), self.int(), self.string())


def packets(buffer: bytearray | bytes, start: int = 0) -> tuple[list[tuple[int, int]], int]:
    """The complete packets in `buffer` from `start`: their (start, end) spans, and where
    the first incomplete one begins."""
    spans: list[tuple[int, int]] = []
    size = len(buffer)
    pos = start
    while pos + 4 <= size:
        length: int = _INT.unpack_from(buffer, pos)[0]
        if length < 0 or length > MAX_PACKET:
            raise ProtocolError(f"packet length {length}")
        if pos + 4 + length > size:
            break
        spans.append((pos + 4, pos + 4 + length))
        pos += 4 + length
    return spans, pos
