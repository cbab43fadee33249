"""What the ZooKeeper registry needs of a ZooKeeper client, as Protocols, and where to get one.

The seam between the registry and its client (connection.py): the mirror and the watcher
talk to ZooKeeper only through `ZkClient`, so the unit tests can give the mirror a fake of
it. Its reads are asynchronous (`get_children_async`, `get_async`, `exists_async`), each
with a one-shot ZooKeeper watch, and there are connection-state listeners. There are no
synchronous calls on purpose: each would be a round trip that blocks the calling thread.
`new_client()` returns the registry's own client (`connection.Connection`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from mcpserver.registry.zookeeper import connection
from mcpserver.registry.zookeeper.connection import (
    AuthFailedError,
    Connection,
    ConnectionLossError,
    CredentialSource,
    NoAuthError,
    NoNodeError,
    ZooKeeperError,
)

CLIENT_ERRORS: tuple[type[Exception], ...] = (ZooKeeperError, OSError)
"""What a failed `ZkClient.start()` (or stop/close) raises: the server, not a bug."""


class ZnodeStat(Protocol):
    """The fields of a znode's Stat the registry reads."""

    @property
    def ctime(self) -> int:
        """Creation time, milliseconds since the epoch."""


class WatchedEvent(Protocol):
    """What a watch callback is given (type, state, path)."""

    @property
    def type(self) -> str:
        """CREATED, DELETED, CHANGED, CHILD, or NONE (the connection went: the client
        drops every watch then, and tells each with a NONE event)."""


NONE_EVENT: str = connection.NONE_EVENT

T_co = TypeVar("T_co", covariant=True)


class Pending(Protocol[T_co]):
    """The answer to one asynchronous read, later."""

    def rawlink(self, callback: Callable[[Pending[T_co]], object]) -> None:
        """Call `callback(self)` once the answer is in: on the client's thread, or at once
        if it is in already."""

    def get_nowait(self) -> T_co:
        """The answer, or raise the call's error (do not call before it is in)."""


Watch = Callable[[WatchedEvent], object]
"""A one-shot ZooKeeper watch: called once (on the client's thread), at the next change."""

StateListener = Callable[[str], object]
"""Called on the client's thread with CONNECTED, READ_ONLY, SUSPENDED, LOST or AUTH_FAILED."""

CONNECTED: str = connection.CONNECTED
READ_ONLY: str = connection.READ_ONLY  # on a read-only server (its ensemble lost its quorum)
SUSPENDED: str = connection.SUSPENDED  # connection lost; the session may still be alive
LOST: str = connection.LOST  # session expired: its ephemeral nodes and watches are gone
AUTH_FAILED: str = connection.AUTH_FAILED  # our credentials were refused (see `last_error`)


class ZkClient(Protocol):
    """The client calls the registry makes."""

    @property
    def server(self) -> str:
        """host:port of the server it is connected to ("" when none)."""

    @property
    def last_error(self) -> str:
        """What went wrong last, for the registry's detail ("" after a connection)."""

    def start(self, timeout: float = ...) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...

    def add_listener(self, listener: StateListener) -> None: ...

    def remove_listener(self, listener: StateListener) -> None: ...

    def get_children_async(
        self, path: str, watch: Watch, include_data: bool
    ) -> Pending[tuple[list[str], ZnodeStat]]:
        """Children and stat (include_data=True, the only way the registry calls it); the
        watch fires when the children change or the node goes."""

    def get_async(self, path: str, watch: Watch) -> Pending[tuple[bytes, ZnodeStat]]:
        """Data and stat; the watch fires when the data changes or the node goes."""

    def exists_async(self, path: str, watch: Watch) -> Pending[ZnodeStat | None]:
        """The stat, None for no such node; the watch fires when the node comes, changes
        or goes (ZooKeeper keeps it for a node that does not exist yet)."""


def new_client(
    hosts: str, session_timeout: float, credentials: CredentialSource, auth_retry: float
) -> ZkClient:
    """A client that, once started, reconnects forever; a read cut off by a lost connection
    is answered by the mirror (re-read after the reconnect, or retried with backoff)."""
    return Connection(hosts, session_timeout, credentials, auth_retry=auth_retry)


def is_auth_failed(err: BaseException) -> bool:
    """start() gave up because the servers refused our credentials."""
    return isinstance(err, AuthFailedError)


def is_no_node(err: BaseException) -> bool:
    """The node does not exist (any more)."""
    return isinstance(err, NoNodeError)


def is_no_auth(err: BaseException) -> bool:
    """ZooKeeper refused a read for want of permission (the node's ACL)."""
    return isinstance(err, NoAuthError)


def is_connection_error(err: BaseException) -> bool:
    """The read was cut off with the connection (or the session, or the client closing):
    not an answer about the node. The client fails every pending read this way when the
    connection drops, and the re-read after the reconnect answers it."""
    return isinstance(err, ConnectionLossError)


def is_zookeeper_error(err: BaseException) -> bool:
    """An error the client reports (from the server or the connection), as opposed to a bug."""
    return isinstance(err, ZooKeeperError)
