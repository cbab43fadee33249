"""A typed facade over the part of kazoo the ZooKeeper registry uses.

kazoo ships no type information, so every value it returns is `Any` to mypy. The registry
talks to kazoo only through the Protocols and functions here, so the rest of the package is
checked: a `ZkClient` is what `new_client()` returns, a `ZnodeStat` is what `exists()` and the
data watch hand back.

The watch recipes are kazoo's `ChildrenWatch` and `DataWatch` with one change: kazoo runs
their re-reads on its own threads and only logs an exception raised there (NoAuthError after
an ACL change, an exhausted retry, a bug in our callback); the watch then stops for good and
nobody notices. Ours stop themselves too, but report the exception to `on_error` first, so the
mirror can show the path as unreadable and arm a fresh watch later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NoAuthError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.recipe.watchers import ChildrenWatch, DataWatch
from kazoo.retry import KazooRetry

CLIENT_ERRORS: tuple[type[Exception], ...] = (KazooTimeoutError, KazooException, OSError)
"""What a failed `ZkClient.start()` (or stop/close) raises: the server, not a bug."""


class ZnodeStat(Protocol):
    """The fields of kazoo's ZnodeStat the registry reads."""

    @property
    def ctime(self) -> int:
        """Creation time, milliseconds since the epoch."""

    @property
    def mzxid(self) -> int:
        """The transaction that last modified the node."""


StateListener = Callable[[str], object]
"""Called on kazoo's connection thread with a KazooState: CONNECTED, SUSPENDED or LOST."""

CONNECTED: str = KazooState.CONNECTED
SUSPENDED: str = KazooState.SUSPENDED  # connection lost; the session may still be alive
LOST: str = KazooState.LOST  # session expired: its ephemeral nodes and watches are gone


class ZkClient(Protocol):
    """The KazooClient calls the registry makes."""

    def start(self, timeout: float = ...) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...

    def add_listener(self, listener: StateListener) -> None: ...

    def remove_listener(self, listener: StateListener) -> None: ...

    def exists(self, path: str) -> ZnodeStat | None: ...

    def get_children(self, path: str) -> list[str]: ...

    def get(self, path: str) -> tuple[bytes, ZnodeStat]: ...


def new_client(hosts: str, session_timeout: float, auth: tuple[str, str] | None = None) -> ZkClient:
    """A client that reconnects forever and retries a command a few times."""
    client: ZkClient = KazooClient(
        hosts=hosts,
        timeout=session_timeout,
        connection_retry=KazooRetry(max_tries=-1, delay=0.2, max_delay=5),
        command_retry=KazooRetry(max_tries=5, delay=0.2, max_delay=2),
        auth_data=[auth] if auth else None,
    )
    return client


OnChildren = Callable[[list[str]], bool]
"""The node's children, now; return False to stop watching."""
OnData = Callable[[bytes | None, ZnodeStat | None], bool]
"""The node's data and stat, now (both None: no such node); return False to stop watching."""
OnError = Callable[[Exception], None]
"""The watch could not read its node and has stopped."""


def is_no_auth(err: BaseException) -> bool:
    """ZooKeeper refused a read for want of permission (the node's ACL)."""
    return isinstance(err, NoAuthError)


def is_zookeeper_error(err: BaseException) -> bool:
    """An error kazoo reports (from the server or the connection), as opposed to a bug."""
    return isinstance(err, KazooException)


class _ReportingChildrenWatch(ChildrenWatch):  # type: ignore[misc]  # kazoo is untyped: ChildrenWatch is Any
    """kazoo's ChildrenWatch, but an exception stops it and is reported, not just logged."""

    def __init__(self, client: ZkClient, path: str, func: OnChildren, on_error: OnError) -> None:
        self._on_error = on_error  # before super().__init__, which reads the children at once
        super().__init__(client, path, func)

    def _get_children(self, event: object = None) -> None:
        try:
            super()._get_children(event)
        except Exception as err:
            _stop(self)
            self._on_error(err)


class _ReportingDataWatch(DataWatch):  # type: ignore[misc]  # kazoo is untyped: DataWatch is Any
    """kazoo's DataWatch, but an exception stops it and is reported, not just logged."""

    def __init__(
        self,
        client: ZkClient,
        path: str,
        func: Callable[[bytes | None, ZnodeStat | None, object], bool],
        on_error: OnError,
    ) -> None:
        self._on_error = on_error  # before super().__init__, which reads the data at once
        super().__init__(client, path, func)

    def _get_data(self, event: object = None) -> None:
        try:
            super()._get_data(event)
        except Exception as err:
            _stop(self)
            self._on_error(err)


def _stop(watch: _ReportingChildrenWatch | _ReportingDataWatch) -> None:
    """Stop a failed watch the way kazoo stops one whose callback returned False: no more
    calls, and no re-read on the next reconnect (the session listener goes)."""
    watch._stopped = True
    watch._func = None
    watch._client.remove_listener(watch._session_watcher)


def watch_children(client: ZkClient, path: str, func: OnChildren, on_error: OnError) -> None:
    """Call `func` with the children of `path` now (in this thread) and after every change
    (on kazoo's threads), also after a reconnect. A node that does not exist (or goes away)
    ends the watch without a call."""
    _ReportingChildrenWatch(client, path, func, on_error)


def watch_data(client: ZkClient, path: str, func: OnData, on_error: OnError) -> None:
    """Call `func` with the data and stat of `path` now (in this thread) and after every
    change, creation or deletion (on kazoo's threads), also after a reconnect."""

    # kazoo calls func(data, stat, event) and, on TypeError, again as func(data, stat): take
    # the event, so a TypeError raised inside func is not answered with a second call
    def with_event(data: bytes | None, stat: ZnodeStat | None, event: object) -> bool:
        return func(data, stat)

    _ReportingDataWatch(client, path, with_event, on_error)
