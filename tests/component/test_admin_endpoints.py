"""The admin port serves exactly the endpoint table (status_page.ENDPOINTS): every path of
it answers, GET paths answer HEAD too, and nothing else is routed."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from mcpserver.status_page import ENDPOINTS
from tests.conftest import AppFactory, eventually, make_settings

pytestmark = pytest.mark.component


async def test_every_endpoint_of_the_table_is_served(
    static_file: Path, start_app: AppFactory
) -> None:
    app = await start_app(make_settings(static_file))
    await eventually(lambda: app.store.snapshot is not None)
    base = f"http://127.0.0.1:{app.admin.port}"
    async with aiohttp.ClientSession() as http:
        for endpoint in ENDPOINTS:
            path = endpoint.path.replace("{name}", "files")
            methods = ("GET", "HEAD") if endpoint.method == "GET" else (endpoint.method,)
            for method in methods:
                async with http.request(method, base + path) as response:
                    if endpoint.method == "POST":
                        # a route of ours: no held removal to confirm, said as JSON
                        assert response.status == 404, path
                        assert (await response.json())["confirmed"] is False, path
                    else:
                        assert response.status == 200, (method, path)
        async with http.get(base + "/debug/nothing") as response:
            assert response.status == 404
