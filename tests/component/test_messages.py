"""What a failing registry says on /debug/registries (and so on the status page and in the
log): a sentence naming what failed and where, never an exception's repr, and never a
promise of a "last known view" that does not exist."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.conftest import (
    AppFactory,
    admin_get,
    eventually,
    free_port,
    settings_for,
    write_services,
)
from tests.conftest import service as entry

pytestmark = pytest.mark.component

T = TypeVar("T")


async def until(check: Callable[[], Awaitable[T | None]], within: float = 10.0) -> T:
    """Await an asynchronous check (an admin page) until it answers, or fail."""

    async def answered() -> tuple[T] | None:
        found = await check()
        return None if found is None else (found,)  # a falsy answer is an answer too

    answer: tuple[T] = await eventually(answered, within=within, every=0.05)
    return answer[0]


async def registry(app_port: int, name: str) -> dict[str, object]:
    status, body = await admin_get(app_port, "/debug/registries")
    assert status == 200
    found: dict[str, object] = next(r for r in json.loads(body) if r["name"] == name)
    return found


async def test_an_unreachable_consul_is_named_in_words(
    tmp_path: Path, start_app: AppFactory
) -> None:
    port = free_port()  # nothing listens there
    settings = settings_for(
        tmp_path,
        {"kind": "consul", "name": "consul", "address": f"http://127.0.0.1:{port}", "wait": "1s"},
    )
    app = await start_app(settings)

    async def degraded() -> dict[str, object] | None:
        found = await registry(app.admin.port, "consul")
        return found if found["status"] == "degraded" else None

    found = await until(degraded)
    assert found["detail"] == (
        f"cannot reach Consul at http://127.0.0.1:{port}: cannot connect to 127.0.0.1:{port}: "
        "connection refused"
    )


async def test_a_broken_file_keeps_the_last_view_only_if_there_was_one(
    tmp_path: Path, start_app: AppFactory
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_bytes(b"services:\n  - name: caf\xe9\n")
    good = tmp_path / "good.yaml"
    write_services(good, [entry("cart", "10.1.0.1")])
    settings = settings_for(
        tmp_path,
        {"kind": "static", "name": "never", "path": str(broken), "poll_interval": "50ms"},
        {"kind": "static", "name": "once", "path": str(good), "poll_interval": "50ms"},
        startup={"serve_partial_after": "0s"},
    )
    app = await start_app(settings)
    await eventually(lambda: app.store.snapshot is not None)
    found = await registry(app.admin.port, "never")
    assert found["detail"] == (
        f"{broken}: not UTF-8: byte 0xe9 at line 2, column 14 (save the file as UTF-8); "
        "nothing served from it yet"
    )
    good.write_text("services: [\n")

    async def broken_yaml() -> str | None:
        detail = str((await registry(app.admin.port, "once"))["detail"])
        return detail if "not valid YAML" in detail else None

    # libyaml's words: one line, where an editor finds it, and the view it keeps
    assert await until(broken_yaml) == (
        f"{good}: not valid YAML at line 2, column 1: did not find expected node content; "
        "while parsing a flow node; serving the last known view"
    )
