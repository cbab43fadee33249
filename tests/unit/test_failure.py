"""Failures as one-line sentences: what the status page, /debug/registries and the logs say
instead of an exception's repr."""

from __future__ import annotations

import errno
from dataclasses import dataclass

import pytest
import yaml

from mcpserver.failure import describe

pytestmark = pytest.mark.unit


@dataclass
class ConnectorError(Exception):
    """Shaped like aiohttp's ClientConnectorError: the address and the OS error it wraps."""

    host: str
    port: int
    os_error: OSError


def test_a_connection_failure_names_the_address_and_the_reason() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed")
    assert describe(ConnectorError("127.0.0.1", 8500, refused)) == (
        "cannot connect to 127.0.0.1:8500: connection refused"
    )


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (TimeoutError(), "timed out"),
        (OSError(errno.EADDRINUSE, "Address already in use"), "address already in use"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "/etc"), "is a directory"),
        (KeyError("x"), "KeyError: 'x'"),
        (RuntimeError("two\nlines"), "two lines"),
        (OverflowError("value out of range"), "OverflowError: value out of range"),
    ],
)
def test_every_description_is_one_line_without_a_repr(error: BaseException, said: str) -> None:
    assert describe(error) == said


def test_a_file_that_is_not_utf8_says_where() -> None:
    with pytest.raises(UnicodeDecodeError) as err:
        b"registries: []\n# caf\xe9\n".decode("utf-8")
    assert describe(err.value) == (
        "not UTF-8: byte 0xe9 at line 2, column 6 (save the file as UTF-8)"
    )


def test_a_yaml_error_is_one_line_where_an_editor_finds_it() -> None:
    with pytest.raises(yaml.YAMLError) as err:
        yaml.safe_load("server:\n  listen: [1\n")
    said = describe(err.value)
    assert said == (
        "not valid YAML at line 3, column 1: expected ',' or ']', but got '<stream end>'; "
        "while parsing a flow sequence"
    )
    assert "\n" not in said and "<unicode string>" not in said
