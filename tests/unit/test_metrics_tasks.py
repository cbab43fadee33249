"""`mcpserver_asyncio_tasks` counts the loop's live tasks at scrape time: the soak reads it to
tell a leaked task from a busy moment."""

from __future__ import annotations

import asyncio

import pytest

from mcpserver.metrics import Metrics

pytestmark = pytest.mark.unit


def tasks_gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("mcpserver_asyncio_tasks")


async def test_counts_live_tasks_and_forgets_finished_ones() -> None:
    metrics = Metrics()
    metrics.count_tasks()
    before = tasks_gauge(metrics)
    assert before == len(asyncio.all_tasks())  # this test's own task at least
    release = asyncio.Event()
    waiting = [asyncio.create_task(release.wait()) for _ in range(5)]
    metrics.count_tasks()
    assert tasks_gauge(metrics) == before + 5
    release.set()
    await asyncio.gather(*waiting)
    metrics.count_tasks()
    assert tasks_gauge(metrics) == before
