"""Nacos login against a loopback HTTP server: the token is reused, refreshed before it
expires and after a refusal, Nacos 3's login path is found when v1 is gone, and a refused
login names the user but never the password."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from mcpserver.registry.nacos.auth import LoginError, TokenKeeper
from tests.conftest import eventually, free_port

pytestmark = pytest.mark.component


class LoginServer:
    def __init__(
        self, *, v1: bool = True, ttl: float = 18000, compatibility: bool = False, v3: bool = True
    ) -> None:
        self.v1 = v1
        self.v3 = v3
        # Nacos 3.0.3's v1 compatibility filter: a refused v1 login is an HTTP 500
        self.compatibility = compatibility
        self.ttl = ttl
        self.logins: list[str] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()

        async def login(request: web.Request) -> web.Response:
            if request.path.startswith("/nacos/v1") and not self.v1:
                return web.Response(status=410, text="gone")
            if request.path.startswith("/nacos/v3") and not self.v3:
                return web.Response(status=404, text="no such path")
            form = await request.post()
            if form.get("password") != "right":
                if self.compatibility and request.path.startswith("/nacos/v1"):
                    body = '{"code":500,"message":"Handle API Compatibility failed"}'
                    return web.Response(status=500, text=body)
                return web.Response(status=403, text="unknown user!")
            self.logins.append(request.path)
            token = f"token-{len(self.logins)}"
            return web.json_response({"accessToken": token, "tokenTtl": self.ttl})

        app.router.add_post("/nacos/v1/auth/login", login)
        app.router.add_post("/nacos/v3/auth/user/login", login)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def keeper(self, password: str = "right") -> TokenKeeper:
        return TokenKeeper(f"http://127.0.0.1:{self.port}", "mcp", password, timeout=5)


@pytest.fixture
async def server() -> AsyncIterator[LoginServer]:
    running = LoginServer()
    await running.start()
    yield running
    await running.stop()


async def test_the_token_is_reused_and_renewed_after_a_refusal(server: LoginServer) -> None:
    keeper = server.keeper()
    assert await keeper.token() == "token-1"
    assert list(await asyncio.gather(keeper.token(), keeper.token())) == ["token-1", "token-1"]
    assert server.logins == ["/nacos/v1/auth/login"]
    keeper.forget()
    assert await keeper.token() == "token-2"


async def test_the_token_is_renewed_before_it_expires() -> None:
    server = LoginServer(ttl=1.2)  # renewed after 90 % of the TTL: ~1.08 s
    await server.start()
    try:
        keeper = server.keeper()
        assert await keeper.token() == "token-1"

        async def renewed() -> str:
            token = await keeper.token()
            assert token != "token-1", "the token was never renewed"
            return token

        token = await eventually(renewed, within=5, every=0.05)
        assert token == "token-2"
    finally:
        await server.stop()


async def test_nacos_3_login_path_when_v1_is_gone() -> None:
    server = LoginServer(v1=False)
    await server.start()
    try:
        assert await server.keeper().token() == "token-1"
        assert server.logins == ["/nacos/v3/auth/user/login"]
    finally:
        await server.stop()


async def test_a_refused_login_names_the_user_not_the_password(server: LoginServer) -> None:
    with pytest.raises(LoginError) as caught:
        await server.keeper("wrong-secret").token()
    assert "'mcp'" in str(caught.value) and "403" in str(caught.value)
    assert "wrong-secret" not in str(caught.value)


async def test_an_unreachable_server_is_a_login_error() -> None:
    keeper = TokenKeeper(f"http://127.0.0.1:{free_port()}", "mcp", "right", timeout=2)
    with pytest.raises(LoginError, match="cannot log in"):
        await keeper.token()


async def test_nacos_3_compatibility_500_asks_v3_for_the_real_refusal() -> None:
    server = LoginServer(compatibility=True)
    await server.start()
    try:
        assert await server.keeper().token() == "token-1"  # v1 still logs a known user in
        with pytest.raises(LoginError) as caught:
            await server.keeper("wrong").token()
        assert "/nacos/v3/auth/user/login refused: HTTP 403 unknown user!" in str(caught.value)
        assert caught.value.refused
    finally:
        await server.stop()


async def test_a_v1_500_without_v3_is_reported_as_the_server_error() -> None:
    server = LoginServer(compatibility=True, v3=False)  # a Nacos 2 failing
    await server.start()
    try:
        with pytest.raises(LoginError) as caught:
            await server.keeper("wrong").token()
        assert "/nacos/v1/auth/login refused: HTTP 500" in str(caught.value)
        assert not caught.value.refused  # a server error: another server may do
    finally:
        await server.stop()
