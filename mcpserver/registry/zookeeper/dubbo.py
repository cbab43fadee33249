"""Pure parsing of Dubbo's interface-level registration: `/ROOT/<interface>/providers/<URL>`.

Each provider is one znode whose name is a URL-encoded URL such as
`dubbo://10.0.0.5:20880/org.apache.dubbo.demo.DemoService?application=demo&side=provider&...`.
Anything that is not such a URL is rejected with a reason; the caller skips and counts it.

Speed matters here: a cold start parses every provider of the registry (100k at 10k
interfaces), and urllib's general parsers (`unquote`, `urlsplit`, `parse_qsl`, which unquotes
every key and value again) took 84 us of it per provider, 5x the rest of the assembly. So
the common shape (an ASCII name whose escapes are ASCII, an IPv4 host, a valid port, a query
with nothing left to unquote) takes a fast path of `str.split`s that yields exactly what the
general path yields; anything else takes the general path (`_parse_general`), which is also
the reference the unit tests compare the fast path with.

Faster still is not parsing: the providers of one interface are its processes, whose URLs
usually differ only in the address, pid and timestamp. `split_name` tells, from the node name
as stored, the address and the rest without those fields (its shape), so that the assembly
parses one name per shape and moves its result to the other addresses.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import parse_qsl, unquote, urlsplit

from mcpserver.registry.dubbo.provider import Provider, RecordError, check_host, istio_port

__all__ = [
    "MAX_NODE_NAME",
    "Provider",
    "RecordError",
    "cut_fields",
    "istio_port",
    "parse_provider",
    "split_name",
]

MAX_NODE_NAME = 8192  # a provider URL is a few hundred bytes; ZooKeeper allows much more


def parse_provider(node_name: str) -> Provider:
    """A provider znode name to a Provider, or RecordError."""
    if len(node_name) > MAX_NODE_NAME:
        raise RecordError("too-long", f"{len(node_name)} characters")
    text = _unquote(node_name)
    # the fast path: nothing urlsplit would strip or remove (C0 controls, space), no
    # fragment, scheme://IPv4:port at the start
    common = text.isascii() and text.isprintable() and " " not in text and "#" not in text
    match = _COMMON.match(text) if common else None
    if match is None:
        return _parse_general(text)
    scheme, host, number = match.groups()
    port = _port(number)
    if not 0 < port < 65536:
        return _parse_general(text)  # its message for a port out of range
    path, _, query = text[match.end() :].partition("?")
    params = _query(query) if query else ()
    lookup = dict(reversed(params))  # the first of a repeated key wins, as in a scan
    # ... but the last `interface` wins, as `dict(params)` has it in the general path
    last = lookup if len(lookup) == len(params) else dict(params)
    interface = last.get("interface") or path.strip("/")
    if not interface:
        raise RecordError("no-interface", repr(text[:80]))
    return Provider(_protocol(scheme), _ipv4(host), port, interface, params, lookup)


# scheme://IPv4:port, then the path, the query or the end: the groups are urlsplit's scheme,
# hostname and port for such a URL, and what follows is its path, then `?` and its query
_COMMON = re.compile(
    r"([A-Za-z][A-Za-z0-9+.\-]*)://([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}):([0-9]{1,5})"
    r"(?=[/?]|\Z)",
    re.ASCII,
)


_PROTOCOLS: dict[str, str] = {}
_PORTS: dict[str, int] = {}
MAX_SHARED_WORDS = 4096
"""Distinct protocols, and port numbers, shared between providers, at most each."""


def _protocol(scheme: str) -> str:
    """The scheme lower-cased, one copy per protocol: a provider keeps it for as long as it
    lives, and 100k copies of "dubbo" were 5 MB."""
    found = _PROTOCOLS.get(scheme)
    if found is None:
        found = scheme.lower()
        if len(_PROTOCOLS) < MAX_SHARED_WORDS:
            _PROTOCOLS[scheme] = found
    return found


def _port(number: str) -> int:
    """`int(number)`, one object per port number (an int past 256 is a new object each
    time: 100k providers on port 20880 held 100k of them)."""
    found = _PORTS.get(number)
    if found is None:
        found = int(number)
        if len(_PORTS) < MAX_SHARED_WORDS:
            _PORTS[number] = found
    return found


def _ipv4(host: str) -> str:
    """check_host() of a dotted quad of 1-3 digit numbers: `ipaddress` accepts it as is (its
    canonical form) when no number exceeds 255 or has a leading zero; else it decides."""
    for octet in host.split("."):
        if (octet[0] == "0" and len(octet) > 1) or int(octet) > 255:
            return check_host(host)
    return host


def _unquote(name: str) -> str:
    """urllib's `unquote`, in C where the name is ASCII and every escape is of an ASCII
    character: each %XX becomes \\xXX (backslashes doubled first, so nothing else is an
    escape) for the `unicode_escape` codec. A malformed escape (the codec raises) or one of
    a byte above 127 (UTF-8, which the codec would not combine: a non-ASCII result) goes to
    urllib."""
    if "%" not in name:
        return name
    if name.isascii():
        escaped = name.replace("\\", "\\\\").replace("%", "\\x")
        try:
            text = escaped.encode("ascii").decode("unicode_escape")
        except UnicodeDecodeError:
            pass
        else:
            if text.isascii():
                return text
    return unquote(name)


_FIELDS: dict[str, tuple[str, str]] = {}
MAX_SHARED_PAIRS = 1 << 12
"""Distinct query fields (`key=value`) whose parse is kept, at most; when full the table
starts over (the shared fields come back at once). Fields of one interface or one provider
(interface=, timestamp=, pid=) fill it as well: kept up to 65,536 they were 2.2 MiB at 10k
interfaces, up to ~18 MiB where every provider has its own timestamp (issue 29)."""


def _field(text: str) -> tuple[str, str]:
    """A `key=value` field (nothing to unquote) as its pair, kept for the next provider."""
    key, _, value = text.partition("=")
    pair = (key, value)
    if len(_FIELDS) >= MAX_SHARED_PAIRS:
        _FIELDS.clear()
    _FIELDS[text] = pair
    return pair


def _query(query: str) -> tuple[tuple[str, str], ...]:
    """`parse_qsl(query, keep_blank_values=True)`: with nothing to unquote (no %, no +) a
    split does, each field looked up by its text (most fields are shared by many providers:
    side=provider, dubbo=2.0.2, the application; a lookup is a third of a partition and a
    new pair); otherwise parse_qsl."""
    if "%" in query or "+" in query:
        return tuple(parse_qsl(query, keep_blank_values=True))
    known = _FIELDS.get
    return tuple([known(field_) or _field(field_) for field_ in query.split("&") if field_])


# ------------------------------------------------- providers that differ only in address

# A node name as Dubbo writes it (URL-encoded, upper-case escapes) that starts
# scheme://IPv4:port, the IPv4 address in its canonical form (what `check_host` returns for
# it), the port followed by the path, the query or the end: its netloc is exactly
# address:port whatever the rest of the name is, so the rest alone decides everything else
# its parse and its Member have. Group 1: the address.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_ENCODED = re.compile(
    rf"[A-Za-z][A-Za-z0-9+.\-]*%3A%2F%2F((?:{_OCTET}\.){{3}}{_OCTET})%3A[0-9]{{1,5}}"
    r"(?=%2F|%3F|/|\?|\Z)",
    re.ASCII,
)


@functools.lru_cache(maxsize=64)
def cut_fields(keys: tuple[str, ...]) -> re.Pattern[str] | None:
    """What `split_name` cuts from a name's query: the fields of these keys (plain keys,
    as Dubbo's are, which `quote` leaves as they are), each `%26key%3D` (`&key=`), a value
    without `%`, `&` or `#`, then `%26` or the end: a field that is whole after unquoting,
    and whose value unquoting leaves as it is. None: no keys."""
    if not keys:
        return None
    alternatives = "|".join(re.escape(key) for key in keys)
    return re.compile(rf"%26(?:{alternatives})%3D[^%&#]*(?=%26|\Z)")


def split_name(name: str, cut: re.Pattern[str] | None) -> tuple[str, str] | None:
    """(address, shape) of a provider node name in the usual form, None for any other.

    The shape is the name without its address and, past the first `%3F` (`?`), without
    the fields `cut` matches (`cut_fields`): two names of one shape parse to the same
    provider but for its address and those fields, so for keys the Member does not read
    (mapping.unread_params) they have the same Member at their own addresses. Checked on
    the encoded name, without unquoting it. Cutting such a field changes nothing else of
    the parse: it is after the query's `?` (the first `%3F` is at or after the first `?`
    unquoting makes), whole (the query is split at `&` before its fields are unquoted
    again, and the value holds no `&`, no `#` and no escape); the bytes on either side
    stay next to an `&`, so UTF-8 decoding on either side is unchanged; and urlsplit
    strips only the start, removing tabs and newlines wherever they are."""
    match = _ENCODED.match(name) if len(name) <= MAX_NODE_NAME else None
    if match is None:
        return None
    start, end = match.span(1)
    path, mark, query = name[end:].partition("%3F")
    if cut is not None and query:
        query = cut.sub("", query)
    return match[1], name[:start] + path + mark + query


def _parse_general(text: str) -> Provider:
    """Any unquoted provider URL, through urllib."""
    if "://" not in text:
        raise RecordError("not-a-url", repr(text[:80]))
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as err:
        raise RecordError("bad-port", str(err)) from None
    if not parts.scheme or not parts.hostname:
        raise RecordError("not-a-url", repr(text[:80]))
    if port is None or not 0 < port < 65536:
        raise RecordError("bad-port", f"port {port!r}")
    params = tuple(parse_qsl(parts.query, keep_blank_values=True))
    path = parts.path.strip("/")
    interface = dict(params).get("interface") or path
    if not interface:
        raise RecordError("no-interface", repr(text[:80]))
    return Provider(
        protocol=parts.scheme.lower(),
        host=check_host(parts.hostname),
        port=port,
        interface=interface,
        params=params,
        lookup=dict(reversed(params)),
    )
