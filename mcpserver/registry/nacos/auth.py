"""Nacos username/password login, its token, and refreshing it before it expires.

Nacos' auth plugin: `POST /nacos/v1/auth/login` (form `username`, `password`; Nacos 3 also
`/nacos/v3/auth/user/login`) answers `{"accessToken", "tokenTtl"}`; the token goes into
every gRPC request's `accessToken` header and every HTTP request's `Authorization: Bearer`
and `accessToken` headers (Nacos also reads an `accessToken` parameter, but a URL may end up
in an error message).
The Java client logs in again when a tenth of the TTL is left; so do we, and at once after a
request was refused as unauthorised (the server may have restarted and forgotten the token).
The password is never logged: errors name the user and the URL only.
"""

from __future__ import annotations

import asyncio
import json
import ssl

import aiohttp

from mcpserver.failure import describe

LOGIN_PATHS = ("/nacos/v1/auth/login", "/nacos/v3/auth/user/login")
GONE = (404, 405, 410)  # Nacos 3 answers 410 on retired v1 APIs


class LoginError(Exception):
    """Login refused (wrong user or password) or impossible (server unreachable)."""


class TokenKeeper:
    """A login token, shared by every connection of one registry."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._base = base_url
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
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for path in LOGIN_PATHS:
                url = self._base + path
                try:
                    async with session.post(url, data=form, ssl=self._ssl or True) as reply:
                        text = await reply.text()
                        if reply.status in GONE:
                            continue
                        if reply.status != 200:
                            raise LoginError(
                                f"login as {self._username!r} at {url} refused: HTTP "
                                f"{reply.status} {text.strip()[:200]}"
                            )
                except (aiohttp.ClientError, OSError, TimeoutError) as err:
                    raise LoginError(f"cannot log in at {url}: {describe(err)}") from None
                try:
                    body = json.loads(text)
                    token = str(body["accessToken"])
                    ttl = float(body.get("tokenTtl") or 18000)
                except (ValueError, KeyError, TypeError):
                    raise LoginError(f"login at {url}: unexpected answer") from None
                return token, ttl
        raise LoginError(f"no login API at {self._base} ({', '.join(LOGIN_PATHS)})")
