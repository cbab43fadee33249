"""Failures as sentences: what an operator reads on the status page, in /debug/registries and
in a log line, instead of an exception's repr.

A repr says how a library spells its error (`ClientConnectorError(ConnectionKey(host=...,
port=8500, ...), ConnectionRefusedError(111, 'Connect call failed'))`); the operator needs
what failed and where: `cannot connect to 127.0.0.1:8500: connection refused`. One place
turns the exceptions our I/O raises into that, the same for every registry kind.
"""

from __future__ import annotations

import errno
import os
from typing import Final

import yaml

_OS_WORDS: Final = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset by the peer",
    errno.ETIMEDOUT: "timed out",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.EADDRINUSE: "address already in use",
    errno.EADDRNOTAVAIL: "address not available on this host",
    errno.EACCES: "permission denied",
    errno.ENOENT: "no such file or directory",
}


def _os_words(err: OSError) -> str:
    if err.errno in _OS_WORDS:
        return _OS_WORDS[err.errno]
    if err.strerror:
        return err.strerror[:1].lower() + err.strerror[1:]
    if err.errno:
        return os.strerror(err.errno).lower()
    return str(err) or type(err).__name__


def describe(err: BaseException) -> str:
    """One line, in words, saying what went wrong (never a repr)."""
    # aiohttp's connection errors carry the address and the OS error they wrap
    host, port = getattr(err, "host", None), getattr(err, "port", None)
    wrapped = getattr(err, "os_error", None)
    if isinstance(wrapped, OSError) and host is not None:
        return f"cannot connect to {host}:{port}: {_os_words(wrapped)}"
    if isinstance(err, UnicodeDecodeError):
        return not_utf8(err)
    if isinstance(err, yaml.YAMLError):
        return not_yaml(err)
    if isinstance(err, TimeoutError):
        return str(err) or "timed out"
    if isinstance(err, OSError):
        return _os_words(err)  # the caller names the file or address
    text = " ".join(str(err).split())  # one line
    name = type(err).__name__
    if not text:
        return name
    plain = name in ("Exception", "RuntimeError", "ValueError")
    ours = type(err).__module__.startswith("mcpserver")  # our errors are sentences already
    return text if plain or ours else f"{name}: {text}"


def not_utf8(err: UnicodeDecodeError) -> str:
    """Where a file stops being UTF-8, as an editor shows it (line and column from 1)."""
    data = err.object if isinstance(err.object, bytes) else bytes(err.object)
    line = data.count(b"\n", 0, err.start) + 1
    column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
    return (
        f"not UTF-8: byte 0x{data[err.start]:02x} at line {line}, column {column} "
        "(save the file as UTF-8)"
    )


def not_yaml(err: yaml.YAMLError) -> str:
    """A YAML parse error in one line, where an editor finds it (PyYAML's own text spans
    several lines and quotes the document as `<unicode string>`)."""
    if not isinstance(err, yaml.MarkedYAMLError):
        return "not valid YAML: " + " ".join(str(err).split())
    mark = err.problem_mark or err.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    words = "; ".join(" ".join(part.split()) for part in (err.problem, err.context) if part)
    return f"not valid YAML{where}: {words or 'cannot parse'}"
