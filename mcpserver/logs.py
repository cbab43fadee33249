"""Logging setup: one format for every line the process writes, text or JSON.

Why a module of its own: an operator feeds our lines to a log pipeline that must parse every
one of them, so the timestamp (ISO 8601 with its UTC offset), the level and the logger name
are in the same place on every line, and `--log-format json` turns each record into one JSON
object per line, with any structured fields a call attached (`extra=`) as keys.

gRPC's C core does not log through Python: it writes its own lines (`E1122 13:50:17.287206
add_port.cc:83] ...`) straight to file descriptor 2, in its own format, which would break a
JSON log stream. Everything core reports that matters to us also surfaces through the Python
API (a failed bind raises, a failed stream ends with a status) and is logged by us, so core's
own lines are silenced: importing this module sets `GRPC_VERBOSITY=NONE` unless the
environment already sets it. Core reads the variable once, when `grpc` is first imported, so
the entry point (cli.py) imports this module before anything imports grpc. To see core's lines
while debugging (e.g. TLS handshake failures), start with `GRPC_VERBOSITY=ERROR` (or `DEBUG`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Final, Literal, TextIO

os.environ.setdefault("GRPC_VERBOSITY", "NONE")

LogFormat = Literal["text", "json"]
FORMATS: Final = ("text", "json")

# Attributes every LogRecord has; anything else on a record came from `extra=` and is a
# structured field worth keeping in JSON.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


def timestamp(created: float) -> str:
    """ISO 8601 with milliseconds and the local UTC offset: 2026-04-25T10:11:12.123+02:00."""
    return datetime.fromtimestamp(created, UTC).astimezone().isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER message`, one physical line per record: a multi-line message or a
    traceback has its line breaks written as `\\n`, so a log pipeline that splits on lines
    keeps each record whole and every line starts with the time."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", "\\n")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802  # logging's name
        return timestamp(record.created)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, structured extras, and the
    traceback as one string (so a multi-line traceback stays one record)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(level: str, log_format: LogFormat = "text", stream: TextIO | None = None) -> None:
    """Route every logger (ours, grpc's Python side, aiohttp, kazoo) to one handler on stderr
    in the chosen format. A no-op when the root logger has handlers already: the CLI called
    in-process (tests) leaves its host's logging alone."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level.upper(), handlers=[handler])
