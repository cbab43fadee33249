"""The task that waits for the first snapshot ends with it, not up to 30 s later: the soak
(tests/resilience/soak) counts the loop's tasks, and a waiter still sleeping after the
first snapshot read as one task more than the server runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.component.test_ads import ControlledRegistry, static_registry, svc
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


@pytest.mark.parametrize("late_registry", [False, True])
async def test_the_first_snapshot_is_built_once_every_registry_listed_not_after_the_debounce(
    static_file: Path, start_app: AppFactory, late_registry: bool
) -> None:
    """Before the first snapshot there is nothing to coalesce for: once every registry has
    listed (at start, or when the last one lists later) it is built at once, however long
    the debounce. Later changes wait for it again."""
    late = ControlledRegistry("late")
    settings = make_settings(static_file, debounce={"after": "60s", "max": "120s"})
    app = await start_app(settings, [static_registry(settings), late] if late_registry else None)
    if late_registry:
        assert app.store.snapshot is None  # the static file listed, "late" did not
        late.sync(svc("late", "10.9.0.1"))
    await eventually(lambda: app.store.snapshot is not None, within=10.0)
    first = app.store.snapshot
    static_file.write_text(static_file.read_text().replace("10.1.0.1", "10.1.0.7"))
    await eventually(lambda: app.debouncer.busy)  # the edit was seen: now it waits
    assert app.store.snapshot is first
