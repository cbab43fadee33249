"""Nacos username/password login, its token, and refreshing it before it expires.

Nacos' auth plugin: `POST /nacos/v1/auth/login` (form `username`, `password`; Nacos 3 also
`/nacos/v3/auth/user/login`) answers `{"accessToken", "tokenTtl"}`; the token goes into
every gRPC request's `accessToken` header and every HTTP request's `Authorization: Bearer`
and `accessToken` headers (Nacos also reads an `accessToken` parameter, but a URL may end up
in an error message).
The Java client logs in again when a tenth of the TTL is left; so do we, and at once after a
request was refused as unauthorised (the server may have restarted and forgotten the token).
The password is never logged: errors name the user and the URL only.

Nacos 3 retired the v1 API, but a default 3.0.3 still answers `/nacos/v1/auth/login` through
its compatibility filter: a known user logs in, an unknown one gets HTTP 500 ("Handle API
Compatibility failed") instead of 403. So a v1 answer other than success or 401/403 tries
the v3 path too, whose refusal says what is wrong; a Nacos 2 has no v3 path (404), and then
the v1 answer is what we report.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable

import aiohttp

from mcpserver.failure import describe
from mcpserver.registry.nacos.client import excerpt

LOGIN_PATHS = ("/nacos/v1/auth/login", "/nacos/v3/auth/user/login")
GONE = (404, 405, 410)  # Nacos 3 answers 410 on retired v1 APIs
REFUSED = (401, 403)


class LoginError(Exception):
    """Login refused (wrong user or password: `refused`) or impossible (the server cannot be
    reached, or answers what no login API answers)."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class TokenKeeper:
    """A login token, shared by every connection of one registry."""

    def __init__(
        self,
        base_url: str | Callable[[], str],
        username: str,
        password: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
    ) -> None:
        # the server to log in at: the registry's current one (servers.py)
        self._base = base_url if callable(base_url) else (lambda: base_url)
        self._username = username
        self._password = password
        self._ssl = ssl_context
        self._timeout = timeout
        self._token = ""
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.logins = 0

    def forget(self) -> None:
        """The server refused our token: log in again on the next request."""
        self._refresh_at = 0.0

    async def token(self) -> str:
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self._token and loop.time() < self._refresh_at:
                return self._token
            token, ttl = await self._login()
            self._token = token
            self.logins += 1
            # refresh when a tenth of the TTL is left (Nacos' own client window)
            self._refresh_at = loop.time() + max(1.0, ttl * 0.9)
            return token

    async def _login(self) -> tuple[str, float]:
        form = {"username": self._username, "password": self._password}
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        base = self._base()
        first_refusal: LoginError | None = None
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for path in LOGIN_PATHS:
                url = base + path
                try:
                    async with session.post(url, data=form, ssl=self._ssl or True) as reply:
                        text = await reply.text()
                        status = reply.status
                except (aiohttp.ClientError, OSError, TimeoutError) as err:
                    raise LoginError(f"cannot log in at {url}: {describe(err)}") from None
                if status in GONE:
                    continue
                if status != 200:
                    refusal = LoginError(
                        f"login as {self._username!r} at {url} refused: HTTP {status} "
                        f"{excerpt(text)}",
                        refused=status in REFUSED,
                    )
                    if status in REFUSED or first_refusal is not None:
                        raise refusal
                    first_refusal = refusal  # Nacos 3's v1 compatibility: ask v3 too
                    continue
                try:
                    body = json.loads(text)
                    token = str(body["accessToken"])
                    ttl = float(body.get("tokenTtl") or 18000)
                except (ValueError, KeyError, TypeError):
                    raise LoginError(f"login at {url}: unexpected answer") from None
                return token, ttl
        if first_refusal is not None:
            raise first_refusal
        raise LoginError(f"no login API at {base} ({', '.join(LOGIN_PATHS)})")
