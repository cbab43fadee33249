"""A typed facade over the part of kazoo the ZooKeeper registry uses.

kazoo ships no type information, so every value it returns is `Any` to mypy. The registry
talks to kazoo only through the Protocols and functions here, so the rest of the package is
checked: a `ZkClient` is what `new_client()` returns.

Only kazoo's asynchronous reads are here, on purpose: `get_children_async`, `get_async` and
`exists_async`, each with a one-shot ZooKeeper watch. The synchronous `get_children`/`get`/
`exists` (and kazoo's ChildrenWatch/DataWatch recipes built on them) are left out of the
Protocol, so mypy rejects any use: each is a round trip that blocks the calling thread, and
the recipes make them on kazoo's own event thread, one node after another, which bounded
the first walk of 10k interfaces by per-node latency instead of ZooKeeper's throughput. An
async call only queues the request for kazoo's connection thread and returns; its answer
comes back on kazoo's completion thread (`Pending.rawlink`), a watch event on kazoo's event
thread.
"""

from __future__ import annotations

import select
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NoNodeError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError, SequentialThreadingHandler
from kazoo.handlers.utils import fileobj_to_fd
from kazoo.protocol.states import EventType
from kazoo.retry import KazooRetry

CLIENT_ERRORS: tuple[type[Exception], ...] = (KazooTimeoutError, KazooException, OSError)
"""What a failed `ZkClient.start()` (or stop/close) raises: the server, not a bug."""


class ZnodeStat(Protocol):
    """The fields of kazoo's ZnodeStat the registry reads."""

    @property
    def ctime(self) -> int:
        """Creation time, milliseconds since the epoch."""


class WatchedEvent(Protocol):
    """What kazoo hands a watch callback (a namedtuple: type, state, path)."""

    @property
    def type(self) -> str:
        """CREATED, DELETED, CHANGED, CHILD, or NONE (a connection state change: kazoo
        drops every watch when the connection goes, and tells each with a NONE event)."""


NONE_EVENT: str = EventType.NONE

T_co = TypeVar("T_co", covariant=True)


class Pending(Protocol[T_co]):
    """kazoo's IAsyncResult: the answer to one asynchronous call, later."""

    def rawlink(self, callback: Callable[[Pending[T_co]], object]) -> None:
        """Call `callback(self)` once the answer is in (on kazoo's completion thread)."""

    def get_nowait(self) -> T_co:
        """The answer, or raise the call's error (do not call before it is in)."""


Watch = Callable[[WatchedEvent], object]
"""A one-shot ZooKeeper watch: called once (on kazoo's event thread), at the next change."""

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


_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT


def poll_select(
    rlist: Sequence[Any], wlist: Sequence[Any], xlist: Sequence[Any], timeout: float | None = None
) -> tuple[list[Any], list[Any], list[Any]]:
    """kazoo's select (`kazoo.handlers.utils.selector_select`: the same arguments, answers
    and errors) made with one poll(2) call instead of a new epoll selector per call.

    kazoo selects before every read of every packet (three times for one response), and each
    of its selects makes, registers, waits on and closes an epoll object: five system calls
    and about 20 us of the connection thread's time, holding the GIL. At 1,000 ZooKeeper
    changes/s (three packets each) that was a sixth of the server's busy time. A poll object
    needs no system call until it waits: about 2 us. poll, like epoll, takes any fd number
    (select(2) stops at 1024, why kazoo left it)."""
    if timeout is not None:
        if not isinstance(timeout, int | float):
            raise TypeError("timeout must be a number")
        if timeout < 0:
            raise ValueError("timeout must be non-negative")
    masks: dict[int, int] = {}
    objects: dict[int, list[Any]] = {}
    for mask, fileobjs in ((_READ, rlist), (_WRITE, wlist)):
        for fileobj in fileobjs:
            fd = fileobj_to_fd(fileobj)
            masks[fd] = masks.get(fd, 0) | mask
            objects.setdefault(fd, []).append(fileobj)
    poller = select.poll()
    for fd, mask in masks.items():
        poller.register(fd, mask)
    ready = poller.poll(None if timeout is None else timeout * 1000)
    readable: list[Any] = []
    writable: list[Any] = []
    for fd, events in ready:
        # as selectors' PollSelector: an error or hang-up wakes both readers and writers
        if events & ~_WRITE and masks[fd] & _READ:
            readable.extend(objects[fd])
        elif events & ~_READ and masks[fd] & _WRITE:
            writable.extend(objects[fd])
    return readable, writable, []


class PollHandler(SequentialThreadingHandler):  # type: ignore[misc]  # kazoo is untyped
    """kazoo's threading handler with `poll_select` as its select."""

    def select(self, *args: Any, **kwargs: Any) -> tuple[list[Any], list[Any], list[Any]]:
        return poll_select(*args, **kwargs)


def new_client(hosts: str, session_timeout: float, auth: tuple[str, str] | None = None) -> ZkClient:
    """A client that reconnects forever. Its command retry is for synchronous calls, which
    the registry does not make; an asynchronous read that fails is answered by the mirror
    (re-read after the reconnect, or retried with backoff)."""
    client: ZkClient = KazooClient(
        hosts=hosts,
        timeout=session_timeout,
        connection_retry=KazooRetry(max_tries=-1, delay=0.2, max_delay=5),
        command_retry=KazooRetry(max_tries=5, delay=0.2, max_delay=2),
        auth_data=[auth] if auth else None,
        handler=PollHandler(),
    )
    return client


def is_no_node(err: BaseException) -> bool:
    """The node does not exist (any more)."""
    return isinstance(err, NoNodeError)


def is_no_auth(err: BaseException) -> bool:
    """ZooKeeper refused a read for want of permission (the node's ACL)."""
    return isinstance(err, NoAuthError)


def is_connection_error(err: BaseException) -> bool:
    """The read was cut off with the connection (or the session, or the client closing):
    not an answer about the node. kazoo fails every pending read this way when the
    connection drops, and the re-read after the reconnect answers it."""
    return isinstance(err, ConnectionLoss | SessionExpiredError | ConnectionClosedError)


def is_zookeeper_error(err: BaseException) -> bool:
    """An error kazoo reports (from the server or the connection), as opposed to a bug."""
    return isinstance(err, KazooException)
