"""The registry framework: a kind is one package plus one table entry, no registry dies
silently, and the server always stops."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mcpserver.app import App
from mcpserver.metrics import Metrics
from mcpserver.registry.base import Registry
from mcpserver.registry.kinds import KINDS, register
from mcpserver.registry.view import Status
from mcpserver.settings import load_settings
from testbed.process import wait_ready
from tests.conftest import AppFactory, eventually, free_port
from tests.testkind import KIND, EchoRegistry

pytestmark = pytest.mark.component

ROOT = Path(__file__).resolve().parents[2]


def run_testkind(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.testkind", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_a_new_kind_is_one_module_and_one_table_entry(tmp_path: Path) -> None:
    """`serve`, `check-config` and /debug/registries handle a kind registered from the tests,
    with no change anywhere else."""
    (tmp_path / "seed.txt").write_text("x\n")
    port, admin = free_port(), free_port()
    config = tmp_path / "echo.yaml"
    config.write_text(
        f"server: {{listen: '127.0.0.1:{port}', admin: '127.0.0.1:{admin}'}}\n"
        "registries: [{kind: echo, name: e1, services: [alpha, beta], seed: seed.txt}]\n"
    )
    checked = run_testkind("check-config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "ok (1 registries)" in checked.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("registries: [{kind: echo, name: e1, fail_times: -1, colour: blue}]\n")
    refused = run_testkind("check-config", str(bad))
    assert refused.returncode == 2
    assert "registries[0].fail_times: Input should be greater than or equal to 0" in refused.stderr
    assert "registries[0].colour: Extra inputs are not permitted" in refused.stderr
    assert "Traceback" not in refused.stderr
    # without the registration the kind is unknown, and the message lists the table
    plain = subprocess.run(
        [sys.executable, "-m", "mcpserver", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert plain.returncode == 2 and "'echo'" in plain.stderr
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.testkind", "serve", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def primed() -> Any:
            get_json(f"http://127.0.0.1:{admin}/readyz")  # 503 (an OSError) until primed
            return get_json(f"http://127.0.0.1:{admin}/debug/registries")

        registries = wait_ready("the server", primed, server, None, within=30)
        assert registries[0].pop("last_change") is not None
        assert registries == [
            {
                "name": "e1",
                "kind": "echo",
                "source": "",  # the kind says nothing of where its records come from
                "status": "ready",
                "synced": True,
                "services": 2,
                "instances": 2,
                "served": {"services": 2, "instances": 2},
                "detail": "",
            }
        ]
        snapshot = get_json(f"http://127.0.0.1:{admin}/debug/snapshot")
        names = [r["name"] for r in snapshot["kinds"]["ServiceEntry"]["resources"]]
        assert names == ["echo/alpha", "echo/beta"]
    finally:
        server.terminate()
        server.send_signal(signal.SIGINT)  # a second signal skips the shutdown drain
        assert server.wait(15) == 0


@pytest.fixture
def echo_kind() -> Any:
    register(KIND)
    yield KIND
    KINDS.pop("echo", None)


async def test_a_crashing_watcher_is_logged_degraded_keeps_its_view_and_recovers(
    tmp_path: Path, echo_kind: Any, start_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "server: {listen: '127.0.0.1:0', admin: '127.0.0.1:0'}\n"
        "debounce: {after: 10ms, max: 50ms}\n"
        "registries: [{kind: echo, name: e1, services: [alpha], fail_times: 2}]\n"
    )
    caplog.set_level(logging.ERROR, logger="mcpserver.registry")
    app = await start_app(load_settings(config, {}))
    registry = app.registries[0]
    assert isinstance(registry, EchoRegistry)
    await eventually(lambda: registry.view().status is Status.DEGRADED)
    degraded = registry.view()
    assert "watch failed: echo crash 1; restarting" in degraded.detail
    assert [s.name for s in degraded.services] == ["alpha"]  # last view kept
    await eventually(lambda: app.store.snapshot is not None)
    # logged with its traceback, counted
    crash = next(r for r in caplog.records if "registry task crashed" in r.getMessage())
    assert crash.exc_info is not None
    errors = app.metrics.registry.get_sample_value(
        "mcpserver_registry_errors_total", {"registry": "e1", "kind": "crash"}
    )
    # restarted with backoff until it runs: READY again by itself
    await eventually(lambda: registry.view().status is Status.READY, within=15)
    assert registry.crashes == 2 and registry.restarts == 2
    assert errors is not None and errors >= 1
    status = app.metrics.registry.get_sample_value(
        "mcpserver_registry_status", {"registry": "e1", "status": "ready"}
    )
    assert status == 1


class BrokenStop(Registry):
    """A registry whose close() and watcher both fail."""

    async def open(self) -> None:
        self.publish((), synced=True)

    async def close(self) -> None:
        raise RuntimeError("cannot close")


class RaisingStop(BrokenStop):
    """A kind that overrides stop() itself and raises: App.stop must still finish."""

    async def stop(self) -> None:
        raise RuntimeError("stop exploded")


async def test_app_stop_completes_when_a_registry_stop_fails(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("server: {listen: '127.0.0.1:0', admin: '127.0.0.1:0'}\nregistries: []\n")
    settings = load_settings(config, {})
    metrics = Metrics()
    app = App(settings, metrics, [BrokenStop("a", metrics), RaisingStop("b", metrics)])
    await app.start()
    port, admin = app.port, app.admin.port
    await app.stop()
    # both servers are closed: nothing accepts any more
    import socket

    for closed in (port, admin):
        with socket.socket() as s:
            s.settimeout(1)
            assert s.connect_ex(("127.0.0.1", closed)) != 0
