"""The command line as a user runs it: exit codes, messages, and the README's commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port

pytestmark = pytest.mark.component

ROOT = Path(__file__).resolve().parents[2]


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcpserver", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_check_config_names_bad_fields(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("server: {listen: 15051}\nregistries: [{kind: static, name: x}]\n")
    done = run("check-config", str(config))
    assert done.returncode == 2
    assert "server.listen: expected HOST:PORT" in done.stderr
    assert "registries[0].path: Field required" in done.stderr


def test_check_config_reports_bad_static_entries(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("services: [{name: a}]\n")
    config = tmp_path / "c.yaml"
    config.write_text("registries: [{kind: static, name: s, path: s.yaml}]\n")
    done = run("check-config", str(config))
    assert done.returncode == 2
    assert "services[0] (a): ports: Field required" in done.stderr


def test_serve_with_bad_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("debounce: {after: 2s, max: 1s}\n")
    done = run("serve", "--config", str(config), timeout=30)
    assert done.returncode == 2
    assert "debounce: debounce.max must be at least debounce.after" in done.stderr


def readme_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_readme_config_examples_are_valid(tmp_path: Path) -> None:
    """Every YAML config example in the README passes check-config."""
    configs = [
        b for b in readme_blocks("yaml") if b.lstrip().startswith(("server:", "registries:"))
    ]
    assert configs, "README has no config example"
    for i, block in enumerate(configs):
        data = yaml.safe_load(block)
        for registry in data.get("registries", []):
            if registry.get("kind") == "static":
                target = tmp_path / registry["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text((ROOT / "mcpserver/data/demo.yaml").read_text())
        config = tmp_path / f"readme-{i}.yaml"
        config.write_text(block)
        done = run("check-config", str(config))
        assert done.returncode == 0, done.stderr


def test_readme_static_example_is_a_valid_registry(tmp_path: Path) -> None:
    blocks = [b for b in readme_blocks("yaml") if b.lstrip().startswith("services:")]
    assert blocks
    for block in blocks:
        (tmp_path / "s.yaml").write_text(block)
        config = tmp_path / "c.yaml"
        config.write_text("registries: [{kind: static, name: s, path: s.yaml}]\n")
        done = run("check-config", str(config))
        assert done.returncode == 0, done.stderr


def test_embedded_default_serves_and_dump_prints_it() -> None:
    """README quick start: `mcpserver serve` on the embedded demo, then `mcpserver dump`."""
    port, admin = free_port(), free_port()
    env = {
        "MCPSERVER_SERVER__LISTEN": f"127.0.0.1:{port}",
        "MCPSERVER_SERVER__ADMIN": f"127.0.0.1:{admin}",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "mcpserver", "serve"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            time.sleep(0.1)
        done = run("dump", "--server", f"127.0.0.1:{port}", "--kind", "ServiceEntry")
        assert done.returncode == 0, done.stderr
        items = list(yaml.safe_load_all(done.stdout))
        assert {i["metadata"]["name"] for i in items} == {"reviews", "ratings", "demo-provider"}
        reviews = next(i for i in items if i["metadata"]["name"] == "reviews")
        assert reviews["spec"]["hosts"] == ["reviews.bookinfo.mesh"]
        assert reviews["metadata"]["resourceVersion"]
        as_json = run(
            "dump", "--server", f"127.0.0.1:{port}", "-o", "json", "--istio-version", "1.23"
        )
        assert as_json.returncode == 0 and '"kind": "ServiceEntry"' in as_json.stdout
    finally:
        server.terminate()
        assert server.wait(10) == 0


def test_dump_against_nothing_fails_cleanly() -> None:
    done = run("dump", "--server", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert done.returncode == 1
    assert "dump:" in done.stderr
