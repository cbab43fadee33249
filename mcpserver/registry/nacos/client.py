"""Our own small Nacos 2.x/3.x gRPC client: one connection, its bidirectional stream, and the
requests the watcher needs.

The protocol (Nacos' `GrpcClient`/`GrpcConnection`, server `GrpcRequestAcceptor` and
`GrpcBiStreamRequestAcceptor`), as this module follows it:
- one HTTP/2 connection carries everything: the server knows a connection by its remote
  address, so the unary `/Request/request` calls and the `/BiRequestStream/requestBiStream`
  stream must share one channel (one subchannel);
- `ServerCheckRequest` (unary) first: the only request valid before setup; its reply names
  our connection id;
- then the stream opens with a `ConnectionSetupRequest` (labels source=sdk, module=naming, the
  namespace as tenant). Registration is asynchronous: Nacos >= 2.3 confirms it with a
  `SetupAckRequest` on the stream; older servers (and r-nacos) do not, and answer a request
  sent too early with error 301 "Connection is unregistered" - so we wait for the ack or for
  a health check that is not refused with 301;
- the server sends requests on the stream (`NotifySubscriberRequest` pushes,
  `ClientDetectionRequest` liveness probes, `ConnectResetRequest`, `SetupAckRequest`), and
  each must be answered on the stream with the matching `...Response` and its `requestId`,
  or the server treats the push as failed and retries, and a connection that does not
  answer its detection probes is expelled;
- the client sends `HealthCheckRequest` when idle (the Java client every 5 s), which is how
  it notices a server that vanished without closing the connection;
- with auth on, every request carries the login token in the `accessToken` header.

Errors keep their meaning: NacosUnregisteredError (301: retry shortly), NacosUnauthorizedError (403:
log in again), NacosError (any other refusal), ConnectionLostError (the stream ended).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

from mcpserver.registry.nacos.payload import Payload, PayloadError, decode, encode

log = logging.getLogger("mcpserver.registry.nacos")

REQUEST_PATH = "/Request/request"
STREAM_PATH = "/BiRequestStream/requestBiStream"
CLIENT_VERSION = "Nacos-Java-Client:v2.4.0 (mcpserver)"  # Nacos parses the version after ":v"
SUCCESS = 200
UNREGISTERED = 301
UNAUTHORIZED = (401, 403)
MAX_MESSAGE = 64 * 1024 * 1024  # a service list page or a large service's instances

OnPush = Callable[[Mapping[str, Any]], None]
TokenSource = Callable[[], Awaitable[str]]


EXCERPT = 200  # characters of a server's own text (an error body) we show


def excerpt(text: str, limit: int = EXCERPT) -> str:
    """A server's text (an error body, a message) cut to `limit` characters on one line:
    what we add around it (the call, our advice) is never cut."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."


class NacosError(Exception):
    """Nacos refused a request (resultCode != 200). `message` is whole: cut the server's
    part of it (`excerpt`) before, never our own words after."""

    via = "gRPC"  # which API answered: the status detail names it

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"Nacos error {code}: {message.strip()}")
        self.code = code


class NacosUnregisteredError(NacosError):
    """301: the connection is not registered yet (or any more)."""


class NacosUnauthorizedError(NacosError):
    """403/401: no token, a wrong or expired one, or no permission."""


class ConnectionLostError(Exception):
    """The bidirectional stream ended: the server went away or reset us."""


def check(response: Payload) -> Mapping[str, Any]:
    """A response body, or the NacosError it stands for."""
    body = response.body
    result = body.get("resultCode", SUCCESS)
    if result == SUCCESS and response.type != "ErrorResponse":
        return body
    code = body.get("errorCode") or result
    code = int(code) if isinstance(code, int) else 500
    message = excerpt(str(body.get("message") or response.type))
    if code == UNREGISTERED:
        raise NacosUnregisteredError(code, message)
    if code in UNAUTHORIZED or "permission" in message.lower() or "token" in message.lower():
        raise NacosUnauthorizedError(code, message)
    raise NacosError(code, message)


def answer_type(request_type: str) -> str:
    """The response class a server request expects (Nacos pairs them by name)."""
    return request_type.removesuffix("Request") + "Response"


class Connection:
    """One gRPC connection to Nacos, for one namespace (Nacos' pushes name no namespace, so
    the Java client, too, keeps one connection per namespace)."""

    def __init__(
        self,
        target: str,
        namespace: str,
        on_push: OnPush,
        *,
        token: TokenSource | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.target = target
        self.namespace = namespace
        self.connection_id = ""
        self._on_push = on_push
        self._token = token
        self._credentials = credentials
        self._timeout = timeout
        self._ids = itertools.count(1)
        self._channel: grpc.aio.Channel | None = None
        self._stream: grpc.aio.StreamStreamCall[Payload, Payload] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._registered = asyncio.Event()
        self._lost = asyncio.Event()
        self._lost_reason = ""

    # --------------------------------------------------------------------- setup

    async def open(self) -> None:
        """Connect, open the stream, and return once the server has registered us."""
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            # one subchannel, never a second connection: the server knows us by address
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.keepalive_time_ms", 30_000),
        ]
        if self._credentials is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(self.target, self._credentials, options)
        reply = await self._unary("ServerCheckRequest", {"module": "internal"}, token=False)
        self.connection_id = str(reply.get("connectionId") or "")
        stream_call = self._channel.stream_stream(
            STREAM_PATH, request_serializer=encode, response_deserializer=decode
        )
        self._stream = stream_call()
        await self._stream.write(
            self._payload(
                "ConnectionSetupRequest",
                {
                    "module": "internal",
                    "clientVersion": CLIENT_VERSION,
                    "tenant": self.namespace,
                    "labels": {"source": "sdk", "module": "naming", "AppName": "mcpserver"},
                },
            )
        )
        self._reader = asyncio.create_task(self._read(), name=f"nacos stream {self.target}")
        await self._await_registration()

    async def _await_registration(self) -> None:
        """SetupAckRequest (Nacos >= 2.3), or a health check the server no longer refuses
        with 301 (older Nacos and r-nacos register without saying so)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        delay = 0.01
        while not self._registered.is_set():
            if self._lost.is_set():
                raise ConnectionLostError(self._lost_reason)
            try:
                await self.request("HealthCheckRequest", {"module": "internal"}, token=False)
                self._registered.set()
            except NacosUnregisteredError:
                if loop.time() > deadline:
                    raise
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._registered.wait()
                delay = min(delay * 2, 0.5)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._stream is not None:
            self._stream.cancel()
        if self._channel is not None:
            await self._channel.close()
        self._lost.set()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ requests

    def _payload(self, kind: str, body: Mapping[str, Any], token: str = "") -> Payload:
        headers = {"accessToken": token} if token else {}
        full = {"requestId": str(next(self._ids)), "headers": {}, **body}
        return Payload(kind, full, headers)

    async def _unary(self, kind: str, body: Mapping[str, Any], *, token: bool) -> Mapping[str, Any]:
        assert self._channel is not None, "open() first"
        access = await self._token() if (token and self._token is not None) else ""
        call = self._channel.unary_unary(
            REQUEST_PATH, request_serializer=encode, response_deserializer=decode
        )
        response: Payload = await call(self._payload(kind, body, access), timeout=self._timeout)
        return check(response)

    async def request(
        self, kind: str, body: Mapping[str, Any], *, token: bool = True
    ) -> Mapping[str, Any]:
        """One unary request on this connection; its reply body, or NacosError."""
        if self._lost.is_set():
            raise ConnectionLostError(self._lost_reason)
        return await self._unary(kind, body, token=token)

    # ------------------------------------------------------------------- stream

    async def lost(self) -> str:
        """Wait until the stream ends; the reason."""
        await self._lost.wait()
        return self._lost_reason

    @property
    def is_lost(self) -> bool:
        return self._lost.is_set()

    async def _read(self) -> None:
        assert self._stream is not None
        try:
            while True:
                message = await self._stream.read()
                if message is grpc.aio.EOF:
                    self._lost_reason = "Nacos closed the stream"
                    return
                assert isinstance(message, Payload)
                if not await self._serve(message):
                    return
        except grpc.aio.AioRpcError as err:
            self._lost_reason = f"stream ended: {err.code().name} {err.details() or ''}".strip()
        except PayloadError as err:
            self._lost_reason = f"undecodable message from Nacos: {err}"
        finally:
            self._lost.set()

    async def _serve(self, request: Payload) -> bool:
        """Answer one server request; False when the server asked us to reconnect."""
        request_id = str(request.body.get("requestId") or "")
        keep = True
        if request.type == "NotifySubscriberRequest":
            info = request.body.get("serviceInfo")
            if isinstance(info, Mapping):
                self._on_push(info)
        elif request.type == "SetupAckRequest":
            self._registered.set()
        elif request.type == "ConnectResetRequest":
            self._lost_reason = "Nacos asked us to reconnect (ConnectResetRequest)"
            keep = False
        elif request.type.endswith("Response"):
            return True  # not a request: nothing to answer
        assert self._stream is not None
        await self._stream.write(
            Payload(
                answer_type(request.type),
                {"requestId": request_id, "resultCode": SUCCESS, "errorCode": 0, "success": True},
            )
        )
        return keep
