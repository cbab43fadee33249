"""The state directory: what protection remembers of each registry, kept on disk for the next
run of a replica that has no peers to ask.

A lone replica restarted during a refill (a Eureka server filling up again, a ZooKeeper
session expiry while providers re-register) would otherwise start with nothing to judge its
first listing against, and serve the half-filled set. With `state_dir`, each registry's
memory (codec.py's document: the accepted views over the window, a hold and its start, a
recovery grace) is written to `<state_dir>/<registry>.json` after it changes, and read at
start as the reference (Memory.adopt; peers, when they answer, are fresher and win).

Bounded I/O: a registry's file is rewritten only when its memory changed (Memory revisions),
and all writes happen at most once per `state_write_interval` (the first change at once, the
ones after it gathered at the end of the interval). Encoding and writing run in a worker
thread, off the event loop; each file is written to a temporary file in the same directory,
flushed to disk and renamed over the old one, so a reader (or a crash) sees the old file or
the new one, never half of one.

A state older than `protection.hold_for` is not used: a running replica would have applied
any removal it held by then, so it could only keep serving what is gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from mcpserver.codec import Document, Record, decode_document, encode_document
from mcpserver.protection import duration

log = logging.getLogger("mcpserver.state")

Remembered = Callable[[Collection[str]], Mapping[str, Record]]
"""Pipeline.remembered: the records of these registries."""


def origin_of(directory: Path, age: float) -> tuple[str, str]:
    """How /debug/registries and a hold's reason name a state read from `directory`."""
    return "state_dir", (
        f"what this replica accepted before its restart (state_dir {directory}, "
        f"written {duration(max(0, round(age)))} before this start)"
    )


def read_states(
    directory: Path, registries: Collection[str], max_age: float | None
) -> dict[str, tuple[str, str, Record]]:
    """Each registry's state from the last run: registry -> (origin, phrase, record). A
    file that is missing is no state; one that cannot be read, is not a document or is
    older than `max_age` seconds is skipped with one log line. Blocking: run in a thread."""
    found: dict[str, tuple[str, str, Record]] = {}
    now = time.time()
    for name in registries:
        path = directory / f"{name}.json"
        try:
            document = decode_document(json.loads(path.read_bytes()))
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as err:  # CodecError and JSON errors are ValueErrors
            log.warning("state_dir: %s not used: %s", path, err)
            continue
        record = document.records.get(name)
        age = now - document.written
        if record is None:
            log.warning("state_dir: %s not used: it holds no registry %s", path, name)
            continue
        if max_age is not None and age > max_age:
            log.info(
                "state_dir: %s not used: written %s ago, longer than protection.hold_for",
                path,
                duration(round(age)),
            )
            continue
        origin, phrase = origin_of(directory, age)
        found[name] = (origin, phrase, record)
    return found


def write_state(directory: Path, replica: str, name: str, record: Record) -> None:
    """One registry's state, atomically (temporary file, fsync, rename). Blocking."""
    document = Document(replica, time.time(), True, {name: record})
    body = json.dumps(encode_document(document), separators=(",", ":")).encode()
    path = directory / f"{name}.json"
    partial = directory / f".{name}.json.tmp"
    with partial.open("wb") as out:
        out.write(body)
        out.flush()
        os.fsync(out.fileno())
    partial.replace(path)


def check_writable(directory: Path) -> None:
    """Create the directory if needed and prove a file can be written there (OSError if
    not: the app refuses to start rather than find out during a hold)."""
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / ".write-probe"
    probe.write_bytes(b"")
    probe.unlink()


class StateWriter:
    """Writes each registry's changed memory, at most once per `interval`."""

    def __init__(
        self,
        directory: Path,
        interval: float,
        replica: str,
        revisions: Callable[[], Mapping[str, int]],
        remembered: Remembered,
    ) -> None:
        self._directory = directory
        self._interval = interval
        self._replica = replica
        self._revisions = revisions
        self._remembered = remembered
        self._written: dict[str, int] = {}
        self._last = -float("inf")  # loop time of the last write's start
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._failed = ""
        self.writes = 0

    def changed(self) -> None:
        """Something may have changed (after each rebuild's decisions): write now, or at
        the end of the interval, or after the write in progress."""
        if self._timer is not None or (self._task is not None and not self._task.done()):
            return
        loop = asyncio.get_running_loop()
        wait = self._last + self._interval - loop.time()
        if wait > 0:
            self._timer = loop.call_later(wait, self._start)
        else:
            self._start()

    def _start(self) -> None:
        self._timer = None
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.get_running_loop().create_task(self.write(), name="state-write")

    async def write(self) -> None:
        """Write every registry whose memory changed since it was last written."""
        self._last = asyncio.get_running_loop().time()
        revisions = dict(self._revisions())
        changed = [n for n, r in revisions.items() if self._written.get(n) != r]
        if not changed:
            return
        records = self._remembered(changed)  # on the loop: references, no copies
        try:
            await asyncio.to_thread(self._write_all, records)
        except OSError as err:
            message = f"cannot write to state_dir {self._directory}: {err}"
            if message != self._failed:  # once per distinct error
                self._failed = message
                log.warning("%s; the next start has no state to hold by", message)
            return
        self._failed = ""
        self.writes += 1
        self._written.update((n, revisions[n]) for n in records)

    def _write_all(self, records: Mapping[str, Record]) -> None:
        for name, record in records.items():
            write_state(self._directory, self._replica, name, record)

    async def stop(self) -> None:
        """Write what is pending one last time (a clean restart starts from it)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self.write()
