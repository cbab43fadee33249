"""The task that waits for the first snapshot ends with it, not up to 30 s later: the soak
(tests/resilience/soak) counts the loop's tasks, and a waiter still sleeping after the
first snapshot read as one task more than the server runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.component.test_ads import ControlledRegistry, svc
from tests.conftest import AppFactory, eventually, make_settings

pytestmark = pytest.mark.component


def waiting() -> bool:
    return any(task.get_name() == "first-snapshot" for task in asyncio.all_tasks())


async def test_the_first_snapshot_waiter_ends_with_the_first_snapshot(
    static_file: Path, start_app: AppFactory
) -> None:
    late = ControlledRegistry("late")
    app = await start_app(make_settings(static_file), [late])
    await eventually(lambda: app.debouncer.runs >= 1)
    assert app.store.snapshot is None
    assert waiting()
    late.sync(svc("late", "10.9.0.1"))
    await eventually(lambda: app.store.snapshot is not None)
    await eventually(lambda: not waiting(), within=2.0)  # the wait logs every 30 s
