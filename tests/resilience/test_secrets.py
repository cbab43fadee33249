"""Secrets never leak: not into logs at any level, /debug output, the status page, metrics,
error messages or check-config's report.

One server with a registry of every kind that takes a secret, each pointed at a port where
nothing listens, so that every one of them fails, retries and degrades (the paths where
secrets leak: error messages, retried URLs, DEBUG logging of clients). The secrets are
distinctive strings; everything the server said is then searched for each of them.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcpserver.registry.view import Status
from mcpserver.settings import load_settings
from testbed.ports import free_port
from tests.conftest import AppFactory, admin_get, eventually

pytestmark = pytest.mark.component

SECRETS = {
    "zookeeper digest": "zk-user:ZK-SECRET-d1g3st",
    "consul token": "CONSUL-SECRET-5f0c-acl",
    "nacos password": "NACOS-SECRET-passw0rd",
    "eureka password": "EUREKA-SECRET-passw0rd",
    "aws secret key": "AWS-SECRET-wJalrXUtnFEMI-K7MDENG",
    "aws session token": "AWS-SECRET-SESSION-IQoJb3JpZ2lu",
    "admin token": "ADMIN-SECRET-b34r3r",
}


def config(directory: Path) -> Path:
    dead = free_port()  # nothing listens: every registry fails and retries
    data: dict[str, Any] = {
        "server": {
            "listen": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            "admin_token": {"value": SECRETS["admin token"]},
        },
        "log_level": "debug",
        "debounce": {"after": "20ms", "max": "200ms"},
        "registries": [
            {
                "kind": "zookeeper",
                "name": "zk",
                "hosts": f"127.0.0.1:{dead}",
                "auth": {"credential": {"value": SECRETS["zookeeper digest"]}},
            },
            {
                "kind": "consul",
                "name": "consul",
                "address": f"http://127.0.0.1:{dead}",
                "token": {"value": SECRETS["consul token"]},
            },
            {
                "kind": "nacos",
                "name": "nacos",
                "address": f"http://127.0.0.1:{dead}",
                "auth": {"username": "nacos", "password": {"value": SECRETS["nacos password"]}},
            },
            {
                "kind": "eureka",
                "name": "eureka",
                "servers": [f"http://127.0.0.1:{dead}/eureka"],
                "auth": {"username": "eureka", "password": {"value": SECRETS["eureka password"]}},
            },
            {
                "kind": "cloudmap",
                "name": "cloudmap",
                "region": "us-east-1",
                "endpoint_url": f"http://127.0.0.1:{dead}",
            },
        ],
    }
    path = directory / "mcpserver.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def leaked(text: str) -> list[str]:
    return [what for what, secret in SECRETS.items() if secret in text]


async def get(port: int, path: str) -> str:
    status, body = await admin_get(port, path, SECRETS["admin token"])
    # an error status (503 before the first snapshot) has a body too: it counts
    return body if status == 200 else f"{status} {body}"


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard AWS chain reads the environment (botocore, as deployed)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRETS["aws secret key"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", SECRETS["aws session token"])


async def test_no_secret_in_anything_the_server_says(
    tmp_path: Path,
    start_app: AppFactory,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    aws_credentials: None,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the clients' own included
    settings = load_settings(config(tmp_path), dict(os.environ))
    assert not leaked(repr(settings)), "settings' repr shows a secret"
    app = await start_app(settings)

    def all_degraded() -> bool:
        return all(r.view().status is Status.DEGRADED for r in app.registries)

    # every kind has failed (and logged, counted and described why) at least once
    await eventually(all_degraded, within=60)
    port = app.admin.port
    said = {
        path: await get(port, path)
        for path in (
            "/",
            "/debug/registries",
            "/debug/problems",
            "/debug/snapshot",
            "/debug/clients",
            "/metrics",
        )
    }
    details = {r.name: r.view().detail for r in app.registries}
    assert all(details.values()), details  # the failures are described...
    for where, text in {**said, "registry details": repr(details)}.items():
        assert not leaked(text), f"{where} shows {leaked(text)}"  # ...without the secrets
    logged = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
    ) + "".join(capfd.readouterr())
    assert len(caplog.records) > 10
    assert not leaked(logged), f"the log shows {leaked(logged)}"


def test_no_secret_in_check_config(tmp_path: Path) -> None:
    """check-config reports on every registry (and on a broken config) without its secrets."""
    path = config(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "mcpserver", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    broken = yaml.safe_load(path.read_text())
    broken["registries"][1]["token"]["file"] = "/nonexistent"  # two sources: refused
    path.write_text(yaml.safe_dump(broken))
    refused = subprocess.run(
        [sys.executable, "-m", "mcpserver", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    for output in (done.stdout + done.stderr, refused.stdout + refused.stderr):
        assert not leaked(output), leaked(output)
