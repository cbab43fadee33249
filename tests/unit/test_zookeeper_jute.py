"""ZooKeeper's wire format, byte for byte: what the registry's own client sends and how it
reads what the server answers (records as in ZooKeeper's zookeeper.jute)."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import pytest

from mcpserver.registry.zookeeper import jute
from mcpserver.registry.zookeeper.connection import Server, parse_hosts

pytestmark = pytest.mark.unit


def ustring(value: bytes) -> bytes:
    return struct.pack(">i", len(value)) + value


def framed(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


def test_connect_request_carries_the_session_to_resume() -> None:
    password = bytes(range(16))
    body = struct.pack(">iqiq", 0, 0x1234, 30000, 0x99) + ustring(password) + b"\x00"
    assert jute.connect_request(0x1234, 30000, 0x99, password) == framed(body)
    # a new session: id 0 and a password of 16 zero bytes, as ZooKeeper's client sends
    fresh = struct.pack(">iqiq", 0, 0, 4000, 0) + ustring(bytes(16)) + b"\x00"
    assert jute.connect_request(0, 4000, 0, b"") == framed(fresh)
    # canBeReadOnly: the last byte says a read-only server will do
    read_only = struct.pack(">iqiq", 0, 0, 4000, 0) + ustring(bytes(16)) + b"\x01"
    assert jute.connect_request(0, 4000, 0, b"", read_only=True) == framed(read_only)


@pytest.mark.parametrize(
    ("op", "watch"), [(jute.GET_CHILDREN2, True), (jute.GET_DATA, False), (jute.EXISTS, True)]
)
def test_read_requests_are_header_path_and_watch_flag(op: int, watch: bool) -> None:
    body = struct.pack(">ii", 7, op) + ustring("/dubbo/ä".encode()) + bytes([watch])
    assert jute.request(7, op, "/dubbo/ä", watch) == framed(body)


def test_ping_close_and_auth_use_their_reserved_xids() -> None:
    assert jute.ping() == framed(struct.pack(">ii", -2, 11))
    assert jute.close_session(5) == framed(struct.pack(">ii", 5, -11))
    auth = struct.pack(">iii", -4, 100, 0) + ustring(b"digest") + ustring(b"mesh:s3cret")
    assert jute.auth("digest", b"mesh:s3cret") == framed(auth)


def test_a_sasl_token_goes_under_an_ordinary_xid() -> None:
    assert jute.sasl(3, b"") == framed(struct.pack(">ii", 3, 102) + ustring(b""))
    assert jute.sasl(4, b"token") == framed(struct.pack(">ii", 4, 102) + ustring(b"token"))


STAT = (1, 2, 1_700_000_000_000, 4, 5, 6, 7, 0, 9, 2, 11)


def test_a_children_answer_decodes_names_and_stat() -> None:
    body = (
        struct.pack(">iqi", 3, 0x55, 0)
        + struct.pack(">i", 2)
        + ustring(b"a")
        + ustring("dubbo%3A%2F%2Fé".encode())
        + struct.pack(">qqqqiiiqiiq", *STAT)
    )
    reader = jute.Reader(framed(body), 4)
    assert reader.reply() == jute.Reply(3, 0x55, 0)
    assert reader.strings() == ["a", "dubbo%3A%2F%2Fé"]
    stat = reader.stat()
    assert stat == jute.Stat(*STAT)
    assert stat.ctime == 1_700_000_000_000


def test_data_null_and_empty_buffers() -> None:
    assert jute.Reader(struct.pack(">i", -1)).buffer() == b""
    assert jute.Reader(struct.pack(">i", 0)).buffer() == b""
    assert jute.Reader(ustring(b"\x00\xff")).buffer() == b"\x00\xff"
    assert jute.Reader(struct.pack(">i", -1)).strings() == []


def test_session_and_event_records() -> None:
    session = struct.pack(">iiq", 0, 4000, 0xABC) + ustring(b"p" * 16) + b"\x00"
    assert jute.Reader(session).session() == jute.Session(4000, 0xABC, b"p" * 16)
    # a read-only server says so in the last byte; a server before 3.4 leaves it out
    read_only = jute.Reader(session[:-1] + b"\x01").session()
    assert read_only == jute.Session(4000, 0xABC, b"p" * 16, read_only=True)
    assert not jute.Reader(session[:-1]).session().read_only
    event = struct.pack(">ii", jute.NODE_CHILDREN_CHANGED, 3) + ustring(b"/dubbo")
    assert jute.Reader(event).event() == jute.Event(4, 3, "/dubbo")


@pytest.mark.parametrize(
    "data",
    [
        struct.pack(">i", 5) + b"abc",  # a string longer than the packet
        struct.pack(">i", 1_000_000),  # a list count no packet could hold
        ustring(b"\xff\xfe"),  # not UTF-8
        b"\x00\x00",  # not even an int
    ],
)
def test_a_broken_packet_is_a_protocol_error(data: bytes) -> None:
    reader = jute.Reader(data)
    with pytest.raises(jute.ProtocolError):
        reader.strings() if data.startswith(struct.pack(">i", 1_000_000)) else reader.string()


def test_a_reader_stops_at_its_packet_end() -> None:
    data = ustring(b"abcd") + ustring(b"next packet")
    with pytest.raises(jute.ProtocolError):
        jute.Reader(data, 0, 6).string()


def string_by_string(reader: jute.Reader) -> list[str]:
    """`Reader.strings` as ZooKeeper's vector<ustring> reads: a count (-1: none), then
    each string as `string()` reads it."""
    count = reader.int()
    return [reader.string() for _ in range(count)]


def read(how: Callable[[jute.Reader], list[str]], data: bytes, end: int) -> tuple[object, ...]:
    reader = jute.Reader(bytearray(data), 0, end)
    try:
        strings = how(reader)
    except jute.ProtocolError as err:
        return ("error", str(err).split(":")[0])
    try:
        after = reader.buffer()  # the next field starts where the listing ends
    except jute.ProtocolError:
        after = None
    return ("ok", strings, after)


def test_a_listing_reads_as_string_after_string() -> None:
    """Seeded random vectors of strings (ASCII, UTF-8, null, not UTF-8, empty), cut short
    or not, and ending before the data does: what a listing reads, and where the next
    field starts, are what reading one string after the other gives, errors included."""
    rng = random.Random(5)
    pieces = [b"dubbo%3A%2F%2F10.0.0.1", "é€".encode(), b"", None, b"\xff\xfe", b"a" * 300]
    for _ in range(3000):
        items = [rng.choice(pieces) for _ in range(rng.randrange(0, 6))]
        count = len(items) if rng.random() < 0.9 else rng.choice([-1, len(items) + 1])
        data = struct.pack(">i", count) + b"".join(
            struct.pack(">i", -1) if item is None else ustring(item) for item in items
        )
        data += ustring(b"next")
        end = len(data) if rng.random() < 0.6 else rng.randrange(len(data) + 1)
        assert read(jute.Reader.strings, data, end) == read(string_by_string, data, end), (
            items,
            count,
            end,
        )


def test_packets_are_cut_at_their_length_prefix() -> None:
    stream = framed(b"one") + framed(b"") + framed(b"three") + struct.pack(">i", 10) + b"part"
    spans, end = jute.packets(stream)
    assert [stream[a:b] for a, b in spans] == [b"one", b"", b"three"]
    assert stream[end:] == struct.pack(">i", 10) + b"part"
    assert jute.packets(stream[:2]) == ([], 0)


@pytest.mark.parametrize("length", [-1, jute.MAX_PACKET + 1])
def test_an_impossible_length_is_a_protocol_error(length: int) -> None:
    with pytest.raises(jute.ProtocolError):
        jute.packets(struct.pack(">i", length) + b"x")


@pytest.mark.parametrize(
    ("hosts", "servers", "chroot"),
    [
        ("127.0.0.1:2181", [Server("127.0.0.1", 2181)], ""),
        ("zk1:2182, zk2/apps/dubbo", [Server("zk1", 2182), Server("zk2", 2181)], "/apps/dubbo"),
        ("[::1]:2888,zk3:1/", [Server("::1", 2888), Server("zk3", 1)], ""),
    ],
)
def test_hosts_name_servers_and_a_chroot(hosts: str, servers: list[Server], chroot: str) -> None:
    assert parse_hosts(hosts) == (servers, chroot)


def test_hosts_without_a_server_are_refused() -> None:
    with pytest.raises(ValueError, match="no ZooKeeper server"):
        parse_hosts(" , /chroot")
