"""The interpreter settings of `mcpserver serve` (mcpserver/runtime.py): the GIL switch
interval set at start, the collector paused until the first snapshot (or a time limit), one
freeze (and the allocator's serving settings) once the first snapshot is out, never before
it and never again."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Iterator

import pytest

import mcpserver.heap
import mcpserver.runtime
from mcpserver.metrics import Metrics
from mcpserver.xds.snapshot import build_snapshot
from mcpserver.xds.store import SnapshotStore
from tests.conftest import eventually

pytestmark = pytest.mark.unit


@pytest.fixture
def restored() -> Iterator[None]:
    """The test process's own collector settings, back after the test."""
    thresholds, switch, enabled = gc.get_threshold(), sys.getswitchinterval(), gc.isenabled()
    yield
    gc.set_threshold(*thresholds)
    sys.setswitchinterval(switch)
    gc.unfreeze()
    if enabled:
        gc.enable()


def test_tune_sets_the_switch_interval_and_the_allocator(
    restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    configured: list[bool] = []

    def configure() -> bool:
        configured.append(True)
        return True

    monkeypatch.setattr(mcpserver.heap, "configure", configure)
    mcpserver.runtime.tune()
    assert sys.getswitchinterval() == pytest.approx(mcpserver.runtime.SWITCH_INTERVAL)
    assert mcpserver.runtime.SWITCH_INTERVAL < 0.005  # CPython's default
    assert configured == [True]  # heap.py's settings, once (tests/unit/test_heap.py)


async def test_the_collector_pauses_from_start_to_the_first_snapshot(
    restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Startup builds the estate with the collector paused; the first snapshot freezes what
    it built (no scan of it later) and collections resume, before the settle's delay."""
    monkeypatch.setattr(mcpserver.runtime, "settle", lambda _: None)
    gc.unfreeze()
    mcpserver.runtime.tune()
    assert not gc.isenabled()
    store = SnapshotStore()
    mcpserver.runtime.settle_after_first(store, Metrics(), delay=60.0)
    assert not gc.isenabled()
    assert gc.get_freeze_count() == 0
    store.publish(build_snapshot(()))
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0


async def test_a_start_that_waits_long_resumes_the_collector(
    restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry that never lists does not keep the collector paused past the limit."""
    monkeypatch.setattr(mcpserver.runtime, "STARTUP_PAUSE_LIMIT", 0.05)
    mcpserver.runtime.tune()
    mcpserver.runtime.settle_after_first(SnapshotStore(), Metrics())
    assert not gc.isenabled()
    await eventually(gc.isenabled)


async def test_the_heap_settles_once_after_the_first_snapshot(
    restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    settled: list[int] = []
    monkeypatch.setattr(mcpserver.runtime, "settle", lambda _: settled.append(1))
    store = SnapshotStore()
    mcpserver.runtime.settle_after_first(store, Metrics(), delay=0.0)
    await asyncio.sleep(0.05)  # an unprimed store: nothing happens, however long it waits
    assert settled == []
    store.publish(build_snapshot(()))
    await eventually(lambda: len(settled) == 1)
    store.publish(build_snapshot(()))
    store.publish(build_snapshot(()))
    await asyncio.sleep(0.05)  # past the delay of any second settle
    assert len(settled) == 1


def test_settle_freezes_what_is_alive_and_says_how_much(
    restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    serving: list[bool] = []
    # not this process's allocator: the settings last (tests/unit/test_heap.py checks them)
    monkeypatch.setattr(mcpserver.heap, "serve_large_blocks", lambda: serving.append(True))
    gc.unfreeze()
    metrics = Metrics()
    mcpserver.runtime.settle(metrics)
    assert serving == [True]  # large blocks from the heap once serving, set once
    assert gc.get_freeze_count() > 0
    frozen = metrics.registry.get_sample_value("mcpserver_heap_frozen_objects")
    assert frozen == gc.get_freeze_count()
