"""The sink's apiserver client on a loopback HTTP server that throttles and fails: 429 and
5xx are retried with backoff (Retry-After honoured), anything else is the caller's, and a
rotated token is used from the next request on."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from mcpserver.sink.client import ApiError, KubeClient
from mcpserver.sink.config import KubernetesSinkSettings


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[tuple[float, str, int]]]]:
    """A server answering each path from a script of statuses; it records (time, token,
    status) of every request."""
    seen: list[tuple[float, str, int]] = []
    scripts = {"/throttled": [429, 503, 200], "/refused": [422, 200], "/down": [500] * 10}

    async def handle(request: web.Request) -> web.Response:
        script = scripts[request.path]
        status = script.pop(0) if len(script) > 1 else script[0]
        seen.append((time.monotonic(), request.headers["Authorization"], status))
        headers = {"Retry-After": "1"} if status == 429 else {}
        body = '{"kind":"Status","message":"no"}' if status >= 400 else '{"ok":true}'
        return web.Response(status=status, text=body, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


def client(url: str, token: Path) -> KubeClient:
    return KubeClient(KubernetesSinkSettings(apiserver=url, token_file=token), {})


async def test_throttling_and_server_errors_are_retried_after_waiting(
    server: tuple[str, list[tuple[float, str, int]]], tmp_path: Path
) -> None:
    url, seen = server
    token = tmp_path / "token"
    token.write_text("one\n")
    kube = client(url, token)
    try:
        answer = await kube.request("GET", "/throttled")
        assert answer.status == 200 and answer.body == {"ok": True}
        assert [s for _, _, s in seen] == [429, 503, 200]
        assert seen[1][0] - seen[0][0] >= 0.95  # Retry-After: 1
        # a refusal is not retried: the caller decides
        with pytest.raises(ApiError) as refused:
            await kube.request("PATCH", "/refused", body={})
        assert refused.value.status == 422 and "no" in str(refused.value)
        assert [s for _, _, s in seen].count(422) == 1
        # the token file rotated: the next request carries the new one
        token.write_text("two-rotated\n")
        await kube.request("GET", "/refused")
        assert seen[-1][1] == "Bearer two-rotated"
    finally:
        await kube.close()


async def test_a_server_that_keeps_failing_is_given_up_on_with_its_reason(
    server: tuple[str, list[tuple[float, str, int]]], tmp_path: Path
) -> None:
    url, seen = server
    token = tmp_path / "token"
    token.write_text("t")
    kube = client(url, token)
    try:
        with pytest.raises(ApiError) as failed:
            await kube.request("GET", "/down")
        assert failed.value.status == 500
        assert len(seen) == 5  # RETRIES
    finally:
        await kube.close()
