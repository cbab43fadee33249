"""Keeps the static registry's view current by watching its file.

A stat() per poll interval is the whole cost when nothing changes; the file is re-read only
when its size, mtime or inode moves (editors that replace the file change the inode), and a
content hash stops a touch from causing a rebuild. A file that goes missing or stops parsing
keeps the last good view (status DEGRADED): an editing mistake never wipes istiod. Reading
and parsing run in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

from mcpserver.failure import describe
from mcpserver.metrics import Metrics
from mcpserver.registry.base import Registry
from mcpserver.registry.static.config import StaticRegistrySettings
from mcpserver.registry.static.parser import (
    StaticFile,
    StaticFileError,
    StaticOptions,
    parse_static,
)
from mcpserver.registry.view import Status

log = logging.getLogger("mcpserver.registry.static")

Stamp = tuple[int, int, int]


def _stamp(path: Path) -> Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def options_of(settings: StaticRegistrySettings) -> StaticOptions:
    return StaticOptions(
        registry=settings.name,
        namespace=settings.namespace,
        host_template=settings.host_template,
        endpoints_mode=settings.endpoints,
    )


def read_static(
    path: Path, options: StaticOptions, previous: StaticFile | None = None
) -> tuple[bytes, StaticFile]:
    """Read and parse the file (blocking: run it in a worker thread), reusing what the
    `previous` parse made of entries unchanged since; OSError, UnicodeDecodeError or
    StaticFileError if the file is unusable."""
    data = path.read_bytes()
    text = data.decode("utf-8")
    if previous is None:
        return data, parse_static(text, options)
    return data, parse_static(text, options, previous.known, previous.texts)


class StaticRegistry(Registry):
    """A registry whose source of truth is a YAML file."""

    def __init__(self, settings: StaticRegistrySettings, metrics: Metrics) -> None:
        super().__init__(settings.name, metrics)
        self._settings = settings
        self._options = options_of(settings)
        self._stamp: Stamp | None = None
        self._digest = b""
        self._parsed: StaticFile | None = None

    async def open(self) -> None:
        await self._reload()
        self.spawn("watch", self._watch)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._settings.poll_interval)
            if _stamp(self._settings.path) != self._stamp:
                await self._reload()

    async def _reload(self) -> None:
        path = self._settings.path
        self._stamp = _stamp(path)
        try:
            data, parsed = await asyncio.to_thread(read_static, path, self._options, self._parsed)
        except OSError as err:
            self._digest = b""
            self.degrade(f"cannot read {path}: {describe(err)}; {self.keeping()}")
            return
        except (StaticFileError, UnicodeDecodeError) as err:
            self._digest = b""
            self.degrade(f"{path}: {describe(err)}; {self.keeping()}")
            return
        digest = hashlib.blake2b(data).digest()
        if digest == self._digest and self.view().status is Status.READY:
            return
        self._digest = digest
        self._parsed = parsed
        log.info(
            "loaded registry=%s path=%s services=%d skipped=%d",
            self.name,
            path,
            len(parsed.services),
            len(parsed.problems),
        )
        self.publish(parsed.services, parsed.problems, synced=True)
        self.recover()
