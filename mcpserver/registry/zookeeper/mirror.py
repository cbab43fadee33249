"""The thread side of the ZooKeeper registry: a raw copy of the watched tree, read with
pipelined asynchronous requests and one-shot ZooKeeper watches.

Of a providers node it keeps a digest of its listing (`listing_digest`), not the names: the
names of a listing that changed are held only until `take()` hands them to the assembly
(at 100k providers of ~400 characters each they were a third of the registry's memory).

Why this shape: at 10k interfaces x 10 providers the tree has 110k nodes. Watch recipes
(kazoo's ChildrenWatch or DataWatch, one object per node) read each node synchronously, one
round trip after another, and each registers a session listener: the first walk was bounded
by per-node latency and every node cost a recipe object. Here a node is a small `_Node`,
read with the client's `*_async` calls: the first walk issues the reads of every node it
learns of without waiting for any (up to `WINDOW` in flight), so it is bounded by
ZooKeeper's throughput, as a bare async walk is.

Threads (the client's, see `connection.py`, but the caller of the public methods):
- the client's thread calls `_on_*_done` with each answer: the node's copy is updated, the
  keys whose records changed are marked dirty, reads of newly found children are queued;
- the same thread calls `_on_event` when a watch fires: a re-read of that node is queued
  (nothing blocks: a read is only queued for the client to send);
- the loop's worker threads call `watch_roots()`, `relist()`, `retry()` and `redo()`; the
  loop calls `take()`, `close()` (in-memory only, never blocking);
- whoever queued reads sends them (`_pump`), the client's `*_async` returning at once.
No thread here ever waits on ZooKeeper.

What is read (one registry may have several roots of each kind):
- a root (`/ROOT`, `/SERVICES`): its children and stat; if it does not exist, an exists
  watch says when it comes;
- `/ROOT/<interface>/providers`: its children (the provider URLs) and stat (the ctime, which
  tells a deleted-and-created node from the old one); if missing, an exists watch;
- `/ROOT/mapping`: its children; each `/ROOT/mapping/<interface>`: data and stat;
- `/SERVICES/<application>`: its children (instance ids) and stat (ctime); each instance:
  its data.
A node found missing that its parent's listing brings back is read again then (an exists
watch on every deleted instance would be a server-side watch per dead instance, forever).

Watches and re-reads: every read of a node carries the node's `seq` at the time; an answer
or a watch event of any `seq` but the node's latest is stale and ignored. So a burst of
events on one node re-reads it once (the first event queues a read with a new `seq`, the
others carry the old one), and a read overtaken by a newer one (after a reconnect, a retry)
changes nothing. This is safe because ZooKeeper orders a session's replies and events: an
event of an older read's watch that arrives before a newer read's answer is already in
that answer, and one that arrives after it was also delivered to the newer read's watch
(the client hands an event to every callable registered on the path). The client delivers
answers and events in the server's order; the mirror does not depend on it.

Connection loss: the client drops every watch when the connection goes (and fails the reads in
flight); the watcher calls `relist()` on the reconnect, which re-reads every node, so what
changed meanwhile is reconciled and what is gone goes. A read that fails otherwise
(NoAuthError after an ACL change, a server error, a bug) is recorded in `_failed`; the loop
shows those paths (DEGRADED) and calls `retry()` with backoff; the entry clears when a read
of the node answers.

The first walk: every node found is "unsettled" until its first read answers (or fails for
good); `take()` hands over nothing until the first walk has settled, and `listed` is true
only while every root has been read and nothing is unsettled, so a view is never called
complete with part of the tree unread (a connection lost mid-walk leaves nodes unsettled
until the re-list reads them). The loop may assemble ahead meanwhile: `take(ahead=True)`
hands over what the walk has read so far, marked `walking` (to be assembled, never
published: the loop publishes once, after the take that ends the walk), and every
`WALK_BATCH` keys read wake the loop for it. Assembling 100k providers took as long as the
walk itself; ahead, it runs while the walk waits for ZooKeeper.

Lock rule: ONE lock, `Mirror._lock`, guards every mutable thing here: every node's fields
(`seq`, `reading`, `settled`, `missing`, `wanted`, and the copied data: `children`,
`listed`, `listing`, `names`, `ctime`, `data`, `instances`), the read queue and `_in_flight`, the
dirty sets, `_unsettled`, `_failed`, `_lost`, `_new_failures`, and the flags `_open`,
`_walking`, `_changed`, `_pending`, `_ahead`. Nothing mutable is read without it. What may be read
without it is what never changes once made: `_client`, `_wake`, `_mapping_enabled`, the
`_roots` table itself, a node's identity (`path`, `key`, `root`, `app`, `ident`), and
`_local` (each thread's own). The lock is held only
for in-memory work: never across a client call (sending a read happens after it is
released), never while calling `wake`. So a callback holds it for microseconds and never
waits on another thread while holding it.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar, Literal

from mcpserver.registry.zookeeper.assembly import (
    AppRecord,
    Changes,
    InterfaceRecord,
    Key,
    MappingRecord,
    listing_digest,
)
from mcpserver.registry.zookeeper.interface import (
    NONE_EVENT,
    Pending,
    WatchedEvent,
    ZkClient,
    ZnodeStat,
    is_connection_error,
    is_no_auth,
    is_no_node,
    is_zookeeper_error,
)

log = logging.getLogger("mcpserver.registry.zookeeper")

DUBBO_INTERNAL = frozenset(["mapping", "metadata", "config"])
"""Children of a Dubbo root that are Dubbo's own bookkeeping, not interfaces."""

NO_PROVIDERS = listing_digest(())

WINDOW = 1000
"""Reads in flight at most. Enough to keep ZooKeeper busy (its own default limit of
outstanding requests is 1,000), small enough that a walk of 100k nodes does not queue 100k
requests in the client at once."""

WALK_BATCH = 256
"""During the first walk, the loop is woken to assemble ahead (`take(ahead=True)`) each time
this many keys were read since its last take: small enough that little is left to assemble
once the walk ends, large enough that a batch's thread hop costs nothing beside its work."""

WALK_BACKLOG = 4 * WALK_BATCH
"""During a walk whose reads the loop takes ahead, reads wait while this many keys read
are not taken yet. The walk reads faster than the loop assembles: unbounded, a walk of 10k
interfaces held the names of up to 6,600 of them at once (60k provider names, ~25 MiB), and
what it freed stayed resident (issue 29, the peak RSS of a cold start). Bounded, the walk
goes at the assembly's pace, which the process's one GIL set anyway."""

Op = Literal["list", "get", "exists", "parent"]


# ------------------------------------------------------------------------- nodes


class _Node:
    """One watched path. `seq` numbers the reads issued for it; only the answer and the
    watch of the latest count. All mutable fields are guarded by the mirror's lock."""

    __slots__ = ("missing", "path", "reading", "seq", "settled", "wanted")

    read: ClassVar[Op]  # how it is read
    watch_absence: ClassVar[bool]  # when missing, an exists watch says when it comes back

    def __init__(self, path: str) -> None:
        self.path = path
        self.wanted = True  # false once it left the tree (or the mirror closed)
        self.seq = 0
        self.reading = False  # the read numbered `seq` is queued or in flight
        self.settled = False  # a read of it answered (or failed for good) once
        self.missing = False  # the last answer was: no such node

    def nodes(self) -> Iterator[_Node]:
        """This node and every node under it."""
        yield self


class _Root(_Node):
    """A Dubbo root (`/dubbo`: interfaces and `mapping`) or a services root (`/services`:
    Curator applications)."""

    __slots__ = ("children", "dubbo", "listed", "mapping")
    read = "list"
    watch_absence = True

    def __init__(self, path: str, dubbo: bool) -> None:
        super().__init__(path)
        self.dubbo = dubbo
        self.listed = False  # its children were read once (or it does not exist)
        self.children: dict[str, _Interface | _App] = {}
        self.mapping: _MappingRoot | None = None

    def nodes(self) -> Iterator[_Node]:
        yield self
        for child in self.children.values():
            yield from child.nodes()
        if self.mapping is not None:
            yield from self.mapping.nodes()


class _Interface(_Node):
    """`/ROOT/<interface>/providers`: a digest of its provider node names, the names while
    not handed over yet, and the node's ctime."""

    __slots__ = ("ctime", "key", "listing", "names")
    read = "list"
    watch_absence = True  # the interface node exists: its providers node may come later

    def __init__(self, key: Key) -> None:
        super().__init__(f"{key[0]}/{key[1]}/providers")
        self.key = key
        self.listing = NO_PROVIDERS  # listing_digest() of the names
        # the names (sorted) since they changed, until take() hands them over: not None
        # while the key is dirty
        self.names: tuple[str, ...] | None = None
        self.ctime = 0  # 0: no providers node


class _App(_Node):
    """`/SERVICES/<application>`: its ctime and instances."""

    __slots__ = ("ctime", "instances", "key")
    read = "list"
    watch_absence = False

    def __init__(self, key: Key) -> None:
        super().__init__(f"{key[0]}/{key[1]}")
        self.key = key
        self.ctime = 0
        self.instances: dict[str, _Instance] = {}

    def nodes(self) -> Iterator[_Node]:
        yield self
        yield from self.instances.values()


class _Instance(_Node):
    """`/SERVICES/<application>/<id>`: one Curator instance's JSON."""

    __slots__ = ("app", "data", "ident")
    read = "get"
    watch_absence = False

    def __init__(self, app: _App, ident: str) -> None:
        super().__init__(f"{app.path}/{ident}")
        self.app = app
        self.ident = ident
        self.data: bytes | None = None  # None: not read, or gone


class _MappingRoot(_Node):
    """`/ROOT/mapping`: one child per interface Dubbo 3 maps to applications."""

    __slots__ = ("children", "root")
    read = "list"
    watch_absence = False

    def __init__(self, root: str) -> None:
        super().__init__(f"{root}/mapping")
        self.root = root
        self.children: dict[str, _Mapping] = {}

    def nodes(self) -> Iterator[_Node]:
        yield self
        yield from self.children.values()


class _Mapping(_Node):
    """`/ROOT/mapping/<interface>`: the application names, and the node's ctime."""

    __slots__ = ("ctime", "data", "key")
    read = "get"
    watch_absence = False

    def __init__(self, key: Key) -> None:
        super().__init__(f"{key[0]}/mapping/{key[1]}")
        self.key = key
        self.data = b""
        self.ctime = 0


# -------------------------------------------------------------------- the loop's view


@dataclass(frozen=True, slots=True, order=True)
class ReadFailure:
    """A node that could not be read: no watch is on it until `retry()`."""

    path: str
    error: str  # the exception's class name: NoAuthError, ...
    no_auth: bool = False  # refused by the node's ACL


@dataclass(frozen=True, slots=True)
class Taken:
    """What the loop takes from the mirror: all immutable."""

    changes: Changes  # raw records of the dirty keys
    listed: bool  # every root and every node under them was read: a complete listing
    unreadable: tuple[ReadFailure, ...]  # paths whose read failed, waiting for retry()
    failures: tuple[ReadFailure, ...]  # every failed read since the last take()
    lost: bool = False  # reads cut off by a lost connection wait for a re-read
    walking: bool = False  # the first walk has not settled: `changes` are part of it only


class Mirror:
    """The raw tree under a registry's roots, kept current by the client's callbacks."""

    def __init__(
        self,
        client: ZkClient,
        roots: list[str],
        services_roots: list[str],
        *,
        mapping: bool,
        wake: Callable[[], None],
    ) -> None:
        self._client = client
        self._wake = wake
        self._mapping_enabled = mapping
        self._lock = threading.Lock()
        self._local = threading.local()  # per thread, so unguarded: `pumping`
        self._roots = {path: _Root(path, True) for path in roots}  # the table never changes
        for path in services_roots:
            self._roots.setdefault(path, _Root(path, False))
        # guarded by _lock (see the module docstring): everything below, and every node's
        # mutable fields
        self._queue: collections.deque[tuple[_Node, int, Op]] = collections.deque()
        self._in_flight = 0
        self._dirty_interfaces: set[Key] = set()
        self._dirty_apps: set[Key] = set()
        self._dirty_mappings: set[Key] = set()
        self._unsettled: set[_Node] = set(self._roots.values())
        self._failed: dict[_Node, ReadFailure] = {}
        self._lost: set[_Node] = set()  # its read was cut off by a lost connection
        self._new_failures: list[ReadFailure] = []
        self._open = True
        self._walking = True  # the first walk has not settled: take() hands over nothing yet
        self._changed = False  # something for take() since the last one
        self._pending = False  # a wake is on its way to the loop
        self._ahead = False  # the last take() took ahead: a walk's reads wait for the next

    # ------------------------------------------------------------- the loop's side

    def watch_roots(self) -> None:
        """Start the first walk: read the roots; what they list is read as the answers
        come, on the client's thread, and the loop is woken once everything found has been
        read. Roots already read are left alone: calling it again is harmless."""
        with self._lock:
            for root in self._roots.values():
                if root.seq == 0:
                    self._enqueue(root)
            if self._walking and not self._unsettled:  # no roots at all: nothing to walk
                self._walking = False
                self._changed = True
            wake = self._owe_wake()
        self._pump()
        if wake:
            self._wake()

    def relist(self) -> None:
        """Read every node again (after a reconnect: the client dropped every watch with the
        connection, and anything may have changed meanwhile)."""
        with self._lock:
            if not self._open:
                return
            for root in self._roots.values():
                for node in root.nodes():
                    if node.wanted:
                        self._enqueue(node)
            self._lost.clear()
        self._pump()

    def retry(self) -> None:
        """Read again every node whose read failed, or was cut off by a lost connection.
        One that fails again is recorded again."""
        with self._lock:
            if not self._open:
                return
            for node in [*self._failed, *self._lost]:
                if node.wanted and not node.reading:
                    self._enqueue(node)
            self._lost.clear()
        self._pump()

    def take(self, ahead: bool = False) -> Taken:
        """Immutable records of everything that changed since the last take(). While the
        first walk runs: nothing, or with `ahead` the records of what it has read so far
        (`walking` says so: part of the tree, to assemble ahead and never publish)."""
        with self._lock:
            self._pending = False
            self._changed = False
            walking = self._walking
            if walking and not ahead:
                changes = Changes()
            else:
                changes = Changes(
                    interfaces={k: self._interface_record(k) for k in self._dirty_interfaces},
                    apps={k: self._app_record(k) for k in self._dirty_apps},
                    mappings={k: self._mapping_record(k) for k in self._dirty_mappings},
                )
                self._dirty_interfaces.clear()
                self._dirty_apps.clear()
                self._dirty_mappings.clear()
            unreadable = tuple(sorted(set(self._failed.values())))
            failures = tuple(self._new_failures)
            self._new_failures.clear()
            listed = not self._unsettled and all(r.listed for r in self._roots.values())
            self._ahead = ahead
            taken = Taken(changes, listed, unreadable, failures, bool(self._lost), walking)
        if walking:
            self._pump()  # reads that waited for this take (WALK_BACKLOG)
        return taken

    def redo(self) -> None:
        """Hand the whole tree over again: every key dirty, and every providers node read
        again (their names were handed over and not kept), as a first walk: take() hands
        nothing over (but ahead) until it has settled. For the loop side starting over after
        a crash: what the take() it was assembling held is lost."""
        with self._lock:
            for root in self._roots.values():
                for node in root.nodes():
                    if isinstance(node, _Interface):
                        if not node.wanted or not self._open:
                            continue
                        node.listing = b""  # its next listing is a change, whatever it holds
                        node.settled = False
                        self._unsettled.add(node)
                        self._walking = True
                        self._enqueue(node)
                    elif isinstance(node, _App):
                        self._dirty_apps.add(node.key)
                    elif isinstance(node, _Mapping):
                        self._dirty_mappings.add(node.key)
            self._changed = True
            wake = self._owe_wake()
        self._pump()
        if wake:
            self._wake()

    def close(self) -> None:
        """Every callback from now on changes nothing and reads nothing."""
        with self._lock:
            self._open = False
            self._queue.clear()

    # ------------------------------------------------------- records (lock held)

    def _interface_record(self, key: Key) -> InterfaceRecord | None:
        root = self._roots.get(key[0])
        node = root.children.get(key[1]) if root is not None and root.dubbo else None
        if not isinstance(node, _Interface):
            return None
        names, node.names = node.names, None  # handed over: the digest is what stays
        if names is None:  # dirty without a new listing (never: see _Interface.names)
            raise RuntimeError(f"no listing to hand over for {node.path}")
        return InterfaceRecord(names, node.ctime, node.listing)

    def _app_record(self, key: Key) -> AppRecord | None:
        root = self._roots.get(key[0])
        node = root.children.get(key[1]) if root is not None and not root.dubbo else None
        if not isinstance(node, _App):
            return None
        instances = sorted(
            (ident, instance.data)
            for ident, instance in node.instances.items()
            if instance.data is not None
        )
        return AppRecord(tuple(instances), node.ctime)

    def _mapping_record(self, key: Key) -> MappingRecord | None:
        root = self._roots.get(key[0])
        mapping_root = root.mapping if root is not None else None
        node = mapping_root.children.get(key[1]) if mapping_root is not None else None
        return None if node is None else MappingRecord(node.data, node.ctime)

    # ----------------------------------------------------------- reading (lock held)

    def _enqueue(self, node: _Node, op: Op | None = None) -> None:
        """Queue a read of `node` under a new `seq`: any read or watch of it before is
        stale from now on. Lock held; the caller calls `_pump()` after releasing it."""
        node.seq += 1
        node.reading = True
        self._queue.append((node, node.seq, op or node.read))

    def _pump(self) -> None:
        """Send queued reads while fewer than WINDOW are in flight. Called without the
        lock, by whoever queued reads or saw one finish. Not re-entered on one thread: a
        stopped client answers a read inside the call that sends it, and each answer pumps
        again; the outer call sends what they queue (no recursion as deep as the queue)."""
        if getattr(self._local, "pumping", False):
            return
        self._local.pumping = True
        try:
            while True:
                batch: list[tuple[_Node, int, Op]] = []
                with self._lock:
                    while self._queue and self._in_flight < WINDOW and not self._backlogged():
                        node, seq, op = self._queue.popleft()
                        if node.seq == seq and node.wanted and self._open:  # not overtaken
                            self._in_flight += 1
                            batch.append((node, seq, op))
                if not batch:
                    return
                for node, seq, op in batch:
                    self._send(node, seq, op)
        finally:
            self._local.pumping = False

    def _backlogged(self) -> bool:
        """Whether reads wait for the loop to take what the walk read (lock held): while it
        takes ahead, WALK_BACKLOG keys read and not taken. It is woken for them (the
        backlog is past WALK_BATCH) and its take() sends the reads again. Not for a walk
        whose reads it does not take ahead (a re-list): that one is taken whole once read."""
        if not (self._walking and self._ahead):
            return False
        dirty = len(self._dirty_interfaces) + len(self._dirty_apps) + len(self._dirty_mappings)
        return dirty >= WALK_BACKLOG

    def _send(self, node: _Node, seq: int, op: Op) -> None:
        """One asynchronous read with its watch; returns at once (the client's
        thread sends it). Lock not held."""
        watch = functools.partial(self._on_event, node, seq)
        try:
            if op == "list":
                listed = self._client.get_children_async(node.path, watch, True)
                listed.rawlink(functools.partial(self._on_list_done, node, seq))
            elif op == "get":
                got = self._client.get_async(node.path, watch)
                got.rawlink(functools.partial(self._on_get_done, node, seq))
            elif op == "parent":
                parent = self._client.get_children_async(node.path.rpartition("/")[0], watch, True)
                parent.rawlink(functools.partial(self._on_parent_done, node, seq))
            else:
                found = self._client.exists_async(node.path, watch)
                found.rawlink(functools.partial(self._on_exists_done, node, seq))
        except Exception as err:  # the client raises only for bad arguments: a bug
            self._finish(node, seq, err, lambda: None)

    # ----------------------------------------------- the client's thread: callbacks

    def _on_event(self, node: _Node, seq: int, event: WatchedEvent) -> None:
        """A watch fired (the client's thread): read the node again, once per burst."""
        if event.type == NONE_EVENT:
            return  # the connection went; relist() reads everything after the reconnect
        with self._lock:
            if node.seq != seq or not node.wanted or not self._open:
                return  # a newer read is on its way (its own watch covers what follows)
            self._enqueue(node)
        self._pump()

    def _on_list_done(
        self, node: _Node, seq: int, result: Pending[tuple[list[str], ZnodeStat]]
    ) -> None:
        try:
            names, stat = result.get_nowait()
        except Exception as err:
            self._finish(node, seq, err, lambda: None)
            return
        self._finish(node, seq, None, functools.partial(self._listed, node, names, stat))

    def _on_parent_done(
        self, node: _Node, seq: int, result: Pending[tuple[list[str], ZnodeStat]]
    ) -> None:
        """A missing providers node's parent, listed with a watch (see `_gone`)."""
        try:
            names, _ = result.get_nowait()
        except Exception as err:
            if is_no_node(err):  # the interface is gone too: no watch was left; its
                self._finish(node, seq, None, lambda: None)  # parent's listing drops it
            else:
                self._finish(node, seq, err, lambda: None)
            return
        if node.path.rpartition("/")[2] in names:  # it came between the two reads
            self._finish(node, seq, None, functools.partial(self._enqueue, node))
        else:  # still missing; the parent's children watch says when it comes
            self._finish(node, seq, None, lambda: None)

    def _on_get_done(self, node: _Node, seq: int, result: Pending[tuple[bytes, ZnodeStat]]) -> None:
        try:
            data, stat = result.get_nowait()
        except Exception as err:
            self._finish(node, seq, err, lambda: None)
            return
        self._finish(node, seq, None, functools.partial(self._got, node, data or b"", stat))

    def _on_exists_done(self, node: _Node, seq: int, result: Pending[ZnodeStat | None]) -> None:
        try:
            stat = result.get_nowait()
        except Exception as err:
            self._finish(node, seq, err, lambda: None)
            return
        if stat is None:  # still missing; the exists watch says when it comes
            self._finish(node, seq, None, lambda: None)
        else:  # it came between the two reads: read it now
            self._finish(node, seq, None, functools.partial(self._enqueue, node))

    def _finish(
        self, node: _Node, seq: int, err: Exception | None, apply: Callable[[], object]
    ) -> None:
        """One read answered (the client's thread; or ours, for a read that could
        not be sent). Applies the answer if it is the node's latest, sends what it queued,
        wakes the loop if it must. Never raises: the client would only log it."""
        failure: Exception | None = None
        with self._lock:
            self._in_flight -= 1
            if node.seq == seq and node.wanted and self._open:
                node.reading = False
                try:
                    if err is None:
                        apply()
                        self._read_ok(node)
                    elif is_no_node(err):
                        self._gone(node)
                        self._read_ok(node)
                    elif is_connection_error(err):
                        self._lost.add(node)  # relist() or retry() reads it again
                    else:
                        failure = err
                except Exception as bug:  # ours: show where, and treat it as a failed read
                    failure = bug
                if failure is not None:
                    self._read_failed(node, failure)
            if self._walking and not self._unsettled:
                self._walking = False  # the first walk is done: one take() of it all
                self._changed = True
            wake = self._owe_wake()
        if failure is not None:
            if is_zookeeper_error(failure):
                log.debug("read failed path=%s: %r", node.path, failure)
            else:
                log.error("read failed path=%s", node.path, exc_info=failure)
        self._pump()
        if wake:
            self._wake()

    # ------------------------------------------------------- answers (lock held)

    def _read_ok(self, node: _Node) -> None:
        """The node answered: it is readable, and settled."""
        self._settle(node)
        if self._failed.pop(node, None) is not None:
            self._changed = True

    def _read_failed(self, node: _Node, err: Exception) -> None:
        self._settle(node)
        failure = ReadFailure(node.path, type(err).__name__, is_no_auth(err))
        self._failed[node] = failure
        self._new_failures.append(failure)
        self._changed = True

    def _settle(self, node: _Node) -> None:
        if not node.settled:
            node.settled = True
            self._unsettled.discard(node)

    def _listed(self, node: _Node, names: list[str], stat: ZnodeStat) -> None:
        node.missing = False
        if isinstance(node, _Interface):
            providers = tuple(sorted(names))
            listing = listing_digest(providers)
            if (listing, stat.ctime) != (node.listing, node.ctime):
                node.listing, node.ctime, node.names = listing, stat.ctime, providers
                self._dirty_interfaces.add(node.key)
        elif isinstance(node, _Root):
            if not node.listed:
                node.listed = True
                self._changed = True
            if node.dubbo:
                self._list_dubbo_root(node, names)
            else:
                self._list_services_root(node, names)
        elif isinstance(node, _App):
            if node.ctime != stat.ctime:
                node.ctime = stat.ctime
                self._dirty_apps.add(node.key)
            self._list_app(node, names)
        elif isinstance(node, _MappingRoot):
            self._list_mapping_root(node, names)

    def _got(self, node: _Node, data: bytes, stat: ZnodeStat) -> None:
        node.missing = False
        if isinstance(node, _Mapping):
            if (data, stat.ctime) != (node.data, node.ctime):
                node.data, node.ctime = data, stat.ctime
                self._dirty_mappings.add(node.key)
        elif isinstance(node, _Instance) and node.data != data:
            node.data = data
            self._dirty_apps.add(node.app.key)

    def _gone(self, node: _Node) -> None:
        """No such node: it holds nothing now. One whose parent would not tell us it came
        back gets an exists watch; the others wait for their parent's listing."""
        node.missing = True
        if isinstance(node, _Interface):
            if node.listing != NO_PROVIDERS or node.ctime:
                node.listing, node.ctime, node.names = NO_PROVIDERS, 0, ()
                self._dirty_interfaces.add(node.key)
        elif isinstance(node, _Root):
            self._drop_content(node)
            if not node.listed:
                node.listed = True
                self._changed = True
        elif isinstance(node, _Mapping):
            if node.data:
                node.data = b""  # maps to nothing; its parent's listing drops it soon
                self._dirty_mappings.add(node.key)
        elif isinstance(node, _Instance) and node.data is not None:
            node.data = None
            self._dirty_apps.add(node.app.key)
        if node.watch_absence:
            # A missing providers node is watched through its interface node's children,
            # not with an exists watch: ZooKeeper keeps an exists watch on a path that never
            # comes back for the whole session (and the client its callback, holding the
            # node), one per interface ever deleted; a children watch goes with the node,
            # and a read of a missing parent leaves none.
            self._enqueue(node, "parent" if isinstance(node, _Interface) else "exists")

    # ------------------------------------------------------- the tree (lock held)

    def _adopt(self, node: _Node) -> None:
        """A node just found in its parent's listing: read it."""
        self._unsettled.add(node)
        self._enqueue(node)

    def _readopt(self, node: _Node) -> None:
        """A child its parent lists again: read it again if it was found missing (deleted
        and created again between two reads), unless its own exists watch covers that."""
        if node.missing and not node.reading and not node.watch_absence:
            self._enqueue(node)

    def _drop(self, node: _Node) -> None:
        """A node and everything under it left the tree: its callbacks change nothing
        from now on, and the keys it held are dirty (their records are None now, or
        smaller)."""
        for gone in node.nodes():
            gone.wanted = False
            self._unsettled.discard(gone)
            self._failed.pop(gone, None)
            self._lost.discard(gone)
            if isinstance(gone, _Interface):
                self._dirty_interfaces.add(gone.key)
            elif isinstance(gone, _App):
                self._dirty_apps.add(gone.key)
            elif isinstance(gone, _Mapping):
                self._dirty_mappings.add(gone.key)
        self._changed = True

    def _drop_content(self, root: _Root) -> None:
        for child in root.children.values():
            self._drop(child)
        root.children = {}
        if root.mapping is not None:
            self._drop(root.mapping)
            root.mapping = None

    def _list_dubbo_root(self, root: _Root, names: list[str]) -> None:
        present = set(names)
        known = root.children
        for name in [n for n in known if n not in present]:
            self._drop(known.pop(name))
        for name in names:
            if name in DUBBO_INTERNAL:
                continue
            node = known.get(name)
            if node is None:
                known[name] = node = _Interface((root.path, name))
                self._adopt(node)
            else:
                self._readopt(node)
        if not self._mapping_enabled or "mapping" not in present:
            if root.mapping is not None:
                self._drop(root.mapping)
                root.mapping = None
        elif root.mapping is None:
            root.mapping = _MappingRoot(root.path)
            self._adopt(root.mapping)
        else:
            self._readopt(root.mapping)

    def _list_services_root(self, root: _Root, names: list[str]) -> None:
        present = set(names)
        known = root.children
        for name in [n for n in known if n not in present]:
            self._drop(known.pop(name))
        for name in names:
            node = known.get(name)
            if node is None:
                known[name] = node = _App((root.path, name))
                self._adopt(node)
            else:
                self._readopt(node)

    def _list_app(self, app: _App, ids: list[str]) -> None:
        present = set(ids)
        for ident in [i for i in app.instances if i not in present]:
            gone = app.instances.pop(ident)
            self._drop(gone)
            if gone.data is not None:
                self._dirty_apps.add(app.key)
        for ident in ids:
            node = app.instances.get(ident)
            if node is None:
                app.instances[ident] = node = _Instance(app, ident)
                self._adopt(node)
            else:
                self._readopt(node)

    def _list_mapping_root(self, mapping_root: _MappingRoot, names: list[str]) -> None:
        present = set(names)
        known = mapping_root.children
        for name in [n for n in known if n not in present]:
            self._drop(known.pop(name))
        for name in names:
            node = known.get(name)
            if node is None:
                known[name] = node = _Mapping((mapping_root.root, name))
                self._adopt(node)
            else:
                self._readopt(node)

    # ---------------------------------------------------------- waking (lock held)

    def _owe_wake(self) -> bool:
        """Whether the caller must wake the loop once it has released the lock: something
        changed, no wake is on its way already, and the first walk is done (until then
        its end wakes the loop, and every WALK_BATCH keys it read, to assemble ahead)."""
        if self._pending or not self._open:
            return False
        if self._walking:
            dirty = len(self._dirty_interfaces) + len(self._dirty_apps) + len(self._dirty_mappings)
            if dirty < WALK_BATCH:
                return False
            self._pending = True
            return True
        if not (
            self._changed or self._dirty_interfaces or self._dirty_apps or self._dirty_mappings
        ):
            return False
        self._pending = True
        return True
