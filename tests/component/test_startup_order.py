"""The start's order, in a fresh interpreter (this one has imported everything): the serve
path imports neither aiohttp nor the admin port's code before the registries are reading
(a cold start's imports are CPU its parse or walk waits for), and the admin port still
answers /healthz by the time App.start returns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import asyncio, json, sys, urllib.request
from pathlib import Path

import mcpserver.cli  # what `mcpserver serve` imports before it reads its config
from mcpserver.app import App
from mcpserver.metrics import Metrics
from mcpserver.registry.base import OnChange, Registry
from mcpserver.settings import load_settings

seen = {"imported": sorted(m for m in ("aiohttp", "mcpserver.admin") if m in sys.modules)}


class Recording(Registry):
    async def start(self, on_change: OnChange) -> None:
        seen["at_registry_start"] = sorted(
            m for m in ("aiohttp", "mcpserver.admin") if m in sys.modules
        )
        await super().start(on_change)

    async def open(self) -> None:
        pass


def healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        return int(response.status)


async def main() -> None:
    app = App(load_settings(Path(sys.argv[1]), {}), registries=[Recording("r", Metrics())])
    await app.start()
    try:
        seen["healthz"] = await asyncio.to_thread(healthz, app.admin.port)
    finally:
        await app.stop()
    print(json.dumps(seen))


asyncio.run(main())
"""


def test_the_admin_port_is_imported_after_the_registries_start(tmp_path: Path) -> None:
    config = tmp_path / "mcpserver.yaml"
    config.write_text("server: {listen: '127.0.0.1:0', admin: '127.0.0.1:0'}\nregistries: []\n")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["imported"] == []
    assert seen["at_registry_start"] == []
    assert seen["healthz"] == 200


COLLECTOR = """
import gc, sys
import mcpserver.__main__  # the entry point: what runs before the CLI's imports
paused = not gc.isenabled()
code = mcpserver.__main__.main(sys.argv[1:])
print(paused, gc.isenabled(), code)
"""


def test_the_collector_is_paused_for_the_imports_and_resumed_but_for_serve(
    tmp_path: Path,
) -> None:
    """The entry point pauses the collector before the CLI's imports (a cold start's CPU);
    every command but serve resumes it (serve's waits for the first snapshot: runtime.py),
    and importing the CLI alone, as the tests do, leaves it alone."""
    config = tmp_path / "mcpserver.yaml"
    config.write_text("server: {listen: '127.0.0.1:0', admin: '127.0.0.1:0'}\nregistries: []\n")

    def run(script: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", script, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()[-1]

    assert run(COLLECTOR, "check-config", "--offline", str(config)) == "True True 0"
    assert run("import gc, mcpserver.cli; print(gc.isenabled())") == "True"
