"""A small client for the few apiserver calls the sink makes: list, get, server-side apply
and delete of Istio objects, and the Lease that elects the writing replica.

Our own rather than an SDK's (the official Python client drags dozens of packages and
generates thousands of modules for five calls). Throttling (429) and server errors (5xx) are
retried here with backoff, honouring Retry-After, as client-go's rest client does
(k8s.io/client-go/rest/request.go, checkWait/retry); anything else is the caller's to judge.
The bearer token is re-read when its file changes: projected service-account tokens rotate.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from mcpserver.backoff import backoff
from mcpserver.sink.config import KubernetesSinkSettings

RETRIES = 5
"""Attempts for a request the apiserver throttled or failed (429, 5xx, connection errors)."""
LIST_PAGE = 500
USER_AGENT = "mcpserver (kubernetes sink)"
"""What the apiserver's audit log and metrics call us."""
TIMEOUT = 30.0


class ApiError(Exception):
    """The apiserver refused a request: its status code and reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: dict[str, Any]


def server_url(settings: KubernetesSinkSettings, env: Mapping[str, str]) -> str:
    """The apiserver's URL: the setting, else the cluster's own from the pod's environment."""
    if settings.apiserver:
        return settings.apiserver.rstrip("/")
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ApiError(
            0,
            "kubernetes.apiserver is unset and KUBERNETES_SERVICE_HOST is not in the "
            "environment (not running in a pod): set kubernetes.apiserver",
        )
    host = f"[{host}]" if ":" in host else host
    return f"https://{host}:{port}"


class Token:
    """The bearer token from a file, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._value = ""

    def value(self) -> str:
        try:
            info = os.stat(self._path)
        except OSError as err:
            raise ApiError(
                0, f"cannot read kubernetes.token_file {self._path}: {err.strerror}"
            ) from err
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp != self._stamp:
            self._value = self._path.read_text().strip()
            self._stamp = stamp
        return self._value


class KubeClient:
    """One connection pool to the apiserver."""

    def __init__(self, settings: KubernetesSinkSettings, env: Mapping[str, str]) -> None:
        self._url = server_url(settings, env)
        self._token = Token(settings.token_file)
        self._ca = settings.ca_file
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0
        """Requests sent (retries included): what the apiserver paid for."""

    @property
    def url(self) -> str:
        return self._url

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            context = ssl.create_default_context()
            if self._url.startswith("https:") and self._ca.exists():
                context = ssl.create_default_context(cafile=str(self._ca))
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, limit=64),
                timeout=aiohttp.ClientTimeout(total=TIMEOUT),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        allow: frozenset[int] = frozenset(),
    ) -> Response:
        """One request, retried on 429, 5xx and connection errors. A status in `allow` (404,
        409...) is returned; any other error status raises ApiError."""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        attempt = 0
        while True:
            headers = {
                "Authorization": f"Bearer {self._token.value()}",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            }
            if data is not None:
                headers["Content-Type"] = content_type
            wait: float | None = None
            try:
                self.requests += 1
                async with self._http().request(
                    method, self._url + path, params=params, data=data, headers=headers
                ) as response:
                    text = await response.text()
                    status = response.status
                    if status < 400 or status in allow:
                        return Response(status, json.loads(text) if text else {})
                    message = _message(status, text)
                    if status != 429 and status < 500:
                        raise ApiError(status, message)
                    retry_after = response.headers.get("Retry-After", "")
                    wait = float(retry_after) if retry_after.isdigit() else None
                    failure: Exception = ApiError(status, message)
            except (TimeoutError, aiohttp.ClientError, OSError) as err:
                failure = ApiError(0, f"{method} {path}: {err or type(err).__name__}")
            attempt += 1
            if attempt >= RETRIES:
                raise failure
            await asyncio.sleep(wait if wait is not None else backoff(attempt - 1, 0.2, 5.0))

    async def list(
        self, path: str, label_selector: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every item under `path`, page by page."""
        params = {"limit": str(LIST_PAGE)}
        if label_selector:
            params["labelSelector"] = label_selector
        while True:
            page = (await self.request("GET", path, params=params)).body
            for item in page.get("items") or ():
                yield item
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return
            params = {**params, "continue": token}

    async def apply(self, path: str, obj: Mapping[str, Any], manager: str) -> Response:
        """Server-side apply (force: fields another manager set on our object are ours
        again, which repairs an object edited by hand)."""
        return await self.request(
            "PATCH",
            path,
            params={"fieldManager": manager, "force": "true"},
            body=obj,
            content_type="application/apply-patch+yaml",
        )


def _message(status: int, text: str) -> str:
    """The apiserver's Status message, or the start of the body."""
    try:
        found = json.loads(text)
    except ValueError:
        return f"HTTP {status}: {text[:200]}"
    if isinstance(found, dict) and found.get("message"):
        return f"HTTP {status}: {found['message']}"
    return f"HTTP {status}: {text[:200]}"
