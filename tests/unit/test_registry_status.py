"""A registry's status changes as the log tells them: into and out of DEGRADED, and each new
reason while degraded, once; a repeat of the same reason says nothing."""

from __future__ import annotations

import logging

import pytest

from mcpserver.metrics import Metrics
from mcpserver.registry.base import Registry
from mcpserver.registry.view import Status

pytestmark = pytest.mark.unit


class Quiet(Registry):
    async def open(self) -> None:
        pass


def test_each_new_degraded_reason_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mcpserver.registry")
    registry = Quiet("consul", Metrics())
    registry.publish((), synced=True)
    for detail in ("agent unreachable", "agent unreachable", "ACL token lacks service:read"):
        registry.degrade(detail)
    registry.degrade("ACL token lacks service:read")
    registry.recover()
    registry.recover()
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [
        ("WARNING", "registry degraded registry=consul: agent unreachable"),
        (
            "WARNING",
            "registry still degraded, reason changed registry=consul: ACL token lacks service:read",
        ),
        ("INFO", "registry recovered registry=consul"),
    ]
    assert registry.view().status is Status.READY
