"""A registry kind that exists only in the tests.

It shows that a kind is one module plus one table entry: registered with `register()`, it
is validated by `load_settings`, built by the app, checked by `check-config` and listed on
/debug/registries with no other change. Run as `python -m tests.testkind ARGS` it is the
real `mcpserver` command line with this kind added.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Literal

from pydantic import Field

from mcpserver.cli import main
from mcpserver.config import ExistingFile, RegistrySettings
from mcpserver.metrics import Metrics
from mcpserver.model import Instance, Port, Service
from mcpserver.registry.base import Registry
from mcpserver.registry.kind import Kind, OfflineView, RegistryContext
from mcpserver.registry.kinds import register
from mcpserver.registry.view import View


class EchoSettings(RegistrySettings):
    kind: Literal["echo"]
    services: list[str] = Field(default_factory=list)  # names to serve, one instance each
    fail_times: int = Field(default=0, ge=0)  # crash this many times first (supervision)
    seed: ExistingFile | None = None  # a file, to show relative paths resolve for any kind


def echo_service(registry: str, name: str, index: int) -> Service:
    return Service(
        registry=registry,
        namespace="echo",
        name=name,
        hosts=(f"{name}.echo.mesh",),
        ports=(Port("http", 80, "HTTP"),),
        instances=(Instance(f"10.77.0.{index + 1}"),),
    )


class EchoRegistry(Registry):
    def __init__(self, settings: EchoSettings, metrics: Metrics) -> None:
        super().__init__(settings.name, metrics)
        self.settings = settings
        self.crashes = 0

    async def open(self) -> None:
        self.spawn("watch", self._watch)

    async def _watch(self) -> None:
        services = [echo_service(self.name, n, i) for i, n in enumerate(self.settings.services)]
        self.publish(services, synced=True)
        if self.crashes < self.settings.fail_times:
            self.crashes += 1
            raise RuntimeError(f"echo crash {self.crashes}")
        self.recover()
        await asyncio.Event().wait()


def _build(settings: EchoSettings, context: RegistryContext) -> EchoRegistry:
    return EchoRegistry(settings, context.metrics)


def _offline(settings: EchoSettings, context: RegistryContext) -> OfflineView:
    services = tuple(echo_service(settings.name, n, i) for i, n in enumerate(settings.services))
    return OfflineView(View(settings.name, services, synced=True))


KIND = Kind("echo", EchoSettings, _build, _offline)


if __name__ == "__main__":
    register(KIND)
    sys.exit(main())
