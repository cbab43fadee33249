"""Keeps the static registry's view current by watching its file.

A stat() per poll interval is the whole cost when nothing changes; the file is re-read only
when its size, mtime or inode moves (editors that replace the file change the inode), and a
content hash stops a touch from causing a rebuild. A file that goes missing or stops parsing
keeps the last good view (status DEGRADED): an editing mistake never wipes istiod.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from pathlib import Path

from mcpserver.metrics import Metrics
from mcpserver.registry.base import OnChange, Registry, Status, View
from mcpserver.registry.static.parser import StaticFileError, StaticOptions, parse_static
from mcpserver.settings import StaticRegistrySettings

log = logging.getLogger("mcpserver.registry.static")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class StaticRegistry(Registry):
    """A registry whose source of truth is a YAML file."""

    def __init__(self, settings: StaticRegistrySettings, metrics: Metrics) -> None:
        self.name = settings.name
        self._settings = settings
        self._metrics = metrics
        self._options = StaticOptions(
            registry=settings.name,
            namespace=settings.namespace,
            host_template=settings.host_template,
            endpoints_mode=settings.endpoints,
        )
        self._view = View(registry=settings.name)
        self._stamp: tuple[int, int, int] | None = None
        self._digest = b""
        self._task: asyncio.Task[None] | None = None
        self._on_change: OnChange = lambda: None

    def view(self) -> View:
        return self._view

    async def start(self, on_change: OnChange) -> None:
        self._on_change = on_change
        await self._reload()
        self._task = asyncio.create_task(self._watch(), name=f"static-{self.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._settings.poll_interval)
            if _stamp(self._settings.path) != self._stamp:
                await self._reload()

    def _set(self, view: View) -> None:
        self._view = view
        self._on_change()

    async def _reload(self) -> None:
        path = self._settings.path
        self._stamp = _stamp(path)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as err:
            self._degrade(f"cannot read {path}: {err.strerror}")
            return
        digest = hashlib.blake2b(data).digest()
        if digest == self._digest and self._view.status is Status.READY:
            return
        try:
            services, problems = parse_static(data.decode("utf-8"), self._options)
        except (StaticFileError, UnicodeDecodeError) as err:
            self._degrade(f"{path}: {err}")
            return
        self._digest = digest
        for problem in problems:
            log.warning(
                "skipped record registry=%s subject=%s: %s",
                self.name,
                problem.subject,
                problem.message,
            )
            self._metrics.skipped_records.labels(self.name, "malformed").inc()
        log.info("loaded registry=%s path=%s services=%d", self.name, path, len(services))
        self._set(
            View(
                registry=self.name,
                services=tuple(services),
                synced=True,
                status=Status.READY,
                problems=tuple(problems),
            )
        )

    def _degrade(self, detail: str) -> None:
        if self._view.status is Status.DEGRADED and self._view.detail == detail:
            return
        log.warning("registry degraded registry=%s: %s (serving last known)", self.name, detail)
        old = self._view
        self._digest = b""
        self._set(
            View(
                registry=self.name,
                services=old.services,
                synced=old.synced,
                status=Status.DEGRADED,
                detail=detail,
                problems=old.problems,
            )
        )


def file_problems(settings: StaticRegistrySettings) -> list[str]:
    """For check-config: what is wrong with a static registry's file, if anything."""
    options = StaticOptions(
        settings.name, settings.namespace, settings.host_template, settings.endpoints
    )
    try:
        _, problems = parse_static(settings.path.read_text(encoding="utf-8"), options)
    except (OSError, StaticFileError, UnicodeDecodeError) as err:
        return [f"{settings.path}: {err}"]
    return [f"{settings.path}: {p.subject}: {p.message}" for p in problems]


__all__ = ["StaticRegistry", "file_problems"]
