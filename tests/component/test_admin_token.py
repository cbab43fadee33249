"""The optional admin token: the status page, /debug/* and the endpoint that confirms a held
removal need it; probes and the metrics scraper do not."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mcpserver.app import App, StartError
from mcpserver.config import SecretSettings
from mcpserver.settings import ServerSettings, Settings
from tests.conftest import AppFactory, eventually, make_settings

pytestmark = pytest.mark.component

TOKEN = "s3cret-token"
PROTECTED = (
    ("GET", "/"),
    ("GET", "/debug/snapshot"),
    ("GET", "/debug/snapshot?full=1"),
    ("GET", "/debug/clients"),
    ("GET", "/debug/registries"),
    ("GET", "/debug/problems"),
    ("POST", "/debug/registries/files/confirm"),
)
OPEN = ("/healthz", "/readyz", "/metrics")


def with_token(static_file: Path, secret: dict[str, Any]) -> Settings:
    """Settings whose server.admin_token is `secret` (via the config file once the setting
    exists; until then set on the loaded settings)."""
    if "admin_token" in ServerSettings.model_fields:
        server = {"listen": "127.0.0.1:0", "admin": "127.0.0.1:0", "admin_token": secret}
        return make_settings(static_file, server=server)
    settings = make_settings(static_file)
    server_settings = settings.server.model_copy(
        update={"admin_token": SecretSettings.model_validate(secret)}
    )
    return settings.model_copy(update={"server": server_settings})


async def test_protected_endpoints_need_the_token_and_probes_do_not(
    static_file: Path, start_app: AppFactory
) -> None:
    app = await start_app(with_token(static_file, {"value": TOKEN}))
    await eventually(lambda: app.store.snapshot is not None)
    base = f"http://127.0.0.1:{app.admin.port}"
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    async with aiohttp.ClientSession() as http:

        async def status(method: str, path: str, authorization: str = "") -> int:
            headers = {"Authorization": authorization} if authorization else {}
            async with http.request(method, base + path, headers=headers) as response:
                if response.status == 401:
                    assert response.headers["WWW-Authenticate"].startswith("Basic ")
                return response.status

        for path in OPEN:
            assert await status("GET", path) in (200, 503), path  # ready or not, never 401
        for method, path in PROTECTED:
            assert await status(method, path) == 401, path
            assert await status(method, path, "Bearer wrong") == 401, path
            assert await status(method, path, f"Bearer {TOKEN}x") == 401, path
            assert await status(method, path, f"Token {TOKEN}") == 401, path
            expected = 404 if method == "POST" else 200  # no held removal to confirm
            assert await status(method, path, f"Bearer {TOKEN}") == expected, path
            assert await status(method, path, f"Basic {basic}") == expected, path  # browsers


async def test_without_a_token_everything_stays_open(
    static_file: Path, start_app: AppFactory
) -> None:
    app = await start_app(make_settings(static_file))
    await eventually(lambda: app.store.snapshot is not None)
    async with aiohttp.ClientSession() as http:
        for method, path in PROTECTED:
            async with http.request(method, f"http://127.0.0.1:{app.admin.port}{path}") as r:
                assert r.status in (200, 404), path


def test_a_token_that_resolves_to_nothing_refuses_to_start(static_file: Path) -> None:
    """An unset variable must not silently leave the admin port open."""
    with pytest.raises(StartError, match=r"server\.admin_token"):
        App(with_token(static_file, {"env": "MCPTEST_NO_SUCH_VARIABLE"}))
