"""The thread side of the ZooKeeper registry: a raw copy of the watched tree.

kazoo calls its watch callbacks on its own threads. They touch nothing but this mirror: they
copy node names, data and ctimes as they find them (never parsing: a malformed record is the
assembly's business, on the loop), mark the key that changed as dirty, and wake the loop
through the `wake` callable (the watcher makes it `loop.call_soon_threadsafe`). The loop then
`take()`s immutable records of the dirty keys and assembles Services from them
(assembly.py).

Watched layout (one registry may have several roots of each kind):
- `/ROOT` (data watch: does it exist) and its children: interfaces, `mapping`;
- `/ROOT/<interface>/providers` (data watch: existence and ctime) and, for each incarnation
  of that node, its children: the provider URLs;
- `/ROOT/mapping` children, and a data watch on each `/ROOT/mapping/<interface>`;
- `/SERVICES` (data watch) and its children: applications; `exists()` of each application
  for its ctime, then its children (instance ids) and a data watch on each instance.

Lock rule: ONE lock, `Mirror._lock`, guards every mutable thing here: the node tables
(`_interfaces`, `_apps`, `_mapping_roots`, `_mappings`); the mutable fields of every node
(`_Root.children/listed`, `_Interface.providers_slot/ctime/providers`,
`_App.ctime/instances/watched`, `_Mapping.data/ctime`); every `_Slot`'s `wanted`,
`generation` and `armed` (so `active` too); the dirty sets, `_failed`, `_new_failures`; the
flags `_changed`, `_pending`, `_notifying`. Nothing mutable is read without it. What may be
read without it is what never changes once made: `_client`, `_wake`, `_mapping_enabled`, the
`_roots` table itself, and a node's identity (`path`, `dubbo`, `key`, `root`, its `slot`,
a slot's `parent`). The lock is held only for in-memory work: never across a ZooKeeper call
(kazoo may be waiting on the connection), never while calling `wake`, never while arming a
watch (its first callback runs at once, in the same thread, and takes the lock). So a
callback holds it for microseconds and never waits on another thread while holding it.

Every watch belongs to a `_Slot`: a path we want watched for as long as its parent slot is
wanted (an interface's slot hangs off its root's children slot, so a root that goes away
takes everything under it along). Callbacks of a watch that is no longer its slot's current
one return False, which is how kazoo watches are stopped. A watch that fails (NoAuthError
after an ACL change, a retry kazoo gave up on) stops and is recorded in `_failed`; the loop
shows those paths (DEGRADED) and calls `retry()` with backoff, which arms fresh watches; the
entry clears when a fresh watch delivers.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from mcpserver.registry.zookeeper.assembly import (
    AppRecord,
    Changes,
    InterfaceRecord,
    Key,
    MappingRecord,
)
from mcpserver.registry.zookeeper.client import (
    OnError,
    ZkClient,
    ZnodeStat,
    is_no_auth,
    is_zookeeper_error,
    watch_children,
    watch_data,
)

log = logging.getLogger("mcpserver.registry.zookeeper")

DUBBO_INTERNAL = frozenset(["mapping", "metadata", "config"])
"""Children of a Dubbo root that are Dubbo's own bookkeeping, not interfaces."""


class _Slot:
    """A path we want watched while this slot and all its parents are wanted. `generation`
    numbers the kazoo watches armed on it; only the current one's callbacks count."""

    __slots__ = ("armed", "generation", "parent", "wanted")

    def __init__(self, parent: _Slot | None) -> None:
        self.parent = parent
        self.wanted = True
        self.generation = 0
        self.armed = False  # the current generation is a live watch (not failed, not unarmed)

    @property
    def active(self) -> bool:
        slot: _Slot | None = self
        while slot is not None:
            if not slot.wanted:
                return False
            slot = slot.parent
        return True


@dataclass(eq=False)
class _Root:
    path: str
    dubbo: bool  # a Dubbo root (interfaces, mapping) or a services root (applications)
    slot: _Slot  # data watch on the root: does it exist
    children: _Slot | None = None  # children watch, while it exists
    listed: bool = False  # its children were read once (or it does not exist)


@dataclass(eq=False)
class _Interface:
    key: Key
    slot: _Slot  # data watch on <interface>/providers
    providers_slot: _Slot | None = None  # children watch on this incarnation of providers
    ctime: int = 0  # of the providers node; 0: none
    providers: tuple[str, ...] = ()


@dataclass(eq=False)
class _App:
    key: Key
    slot: _Slot  # exists() for the ctime, then a children watch
    ctime: int = 0
    instances: dict[str, bytes] = field(default_factory=dict)
    watched: dict[str, _Slot] = field(default_factory=dict)  # instance id -> its data watch


@dataclass(eq=False)
class _MappingRoot:
    root: str
    slot: _Slot  # children watch on /ROOT/mapping


@dataclass(eq=False)
class _Mapping:
    key: Key
    slot: _Slot  # data watch on /ROOT/mapping/<interface>
    data: bytes = b""
    ctime: int = 0


@dataclass(frozen=True, slots=True, order=True)
class ReadFailure:
    """A node kazoo could not read: the watch on it has stopped until `retry()`."""

    path: str
    error: str  # the exception's class name: NoAuthError, ConnectionLoss, ...
    no_auth: bool = False  # refused by the node's ACL


@dataclass(frozen=True, slots=True)
class Taken:
    """What the loop takes from the mirror: all immutable."""

    changes: Changes  # raw records of the dirty keys
    listed: bool  # every root was read once (or found absent): a complete first listing
    unreadable: tuple[ReadFailure, ...]  # paths whose watch failed, waiting for retry()
    failures: tuple[ReadFailure, ...]  # every failed read since the last take()


@dataclass(frozen=True, slots=True)
class _Failed:
    failure: ReadFailure
    rearm: Callable[[], None]


Start = Callable[[int, OnError], None]
"""Arms the kazoo watch of one slot generation; reports a failure through OnError."""


class Mirror:
    """The raw tree under a registry's roots, kept current by kazoo's callbacks."""

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
        # guarded by _lock (see the module docstring): everything below
        self._open = _Slot(None)  # every slot descends from it; close() unwants it
        self._roots = {path: _Root(path, True, _Slot(self._open)) for path in roots}
        for path in services_roots:
            self._roots.setdefault(path, _Root(path, False, _Slot(self._open)))
        self._interfaces: dict[str, dict[str, _Interface]] = {}  # root -> interface -> node
        self._apps: dict[str, dict[str, _App]] = {}  # services root -> application -> node
        self._mapping_roots: dict[str, _MappingRoot] = {}
        self._mappings: dict[str, dict[str, _Mapping]] = {}  # root -> interface -> node
        self._dirty_interfaces: set[Key] = set()
        self._dirty_apps: set[Key] = set()
        self._dirty_mappings: set[Key] = set()
        self._failed: dict[_Slot, _Failed] = {}
        self._new_failures: list[ReadFailure] = []
        self._changed = False  # something for take() since the last one
        self._pending = False  # a wake is on its way to the loop
        self._notifying = False  # the first walk is done: changes wake the loop

    # ------------------------------------------------------------- the loop's side

    def watch_roots(self) -> None:
        """Arm the roots' watches (blocking: run it in a worker thread). kazoo's watches
        read at once, in this thread, so when this returns the whole readable tree has been
        listed once. Roots already watched are left alone: calling it again is harmless."""
        for root in self._roots.values():
            self._arm(root.slot, root.path, functools.partial(self._start_root, root))

    def notify(self) -> None:
        """From now on every change wakes the loop (during the first walk changes only
        accumulate: one take() follows it)."""
        with self._lock:
            self._notifying = True

    def take(self) -> Taken:
        """Immutable records of everything that changed since the last take()."""
        with self._lock:
            self._pending = False
            self._changed = False
            changes = Changes(
                interfaces={k: self._interface_record(k) for k in self._dirty_interfaces},
                apps={k: self._app_record(k) for k in self._dirty_apps},
                mappings={k: self._mapping_record(k) for k in self._dirty_mappings},
            )
            self._dirty_interfaces.clear()
            self._dirty_apps.clear()
            self._dirty_mappings.clear()
            for slot in [s for s in self._failed if not s.active]:
                del self._failed[slot]  # its node left the tree: nothing to read any more
            unreadable = tuple(sorted({f.failure for f in self._failed.values()}))
            failures = tuple(self._new_failures)
            self._new_failures.clear()
            listed = all(root.listed for root in self._roots.values())
        return Taken(changes, listed, unreadable, failures)

    def redo(self) -> None:
        """Mark every key dirty: the next take() hands over the whole tree. For the loop
        side starting over after a crash: what the take() it was assembling held is lost."""
        with self._lock:
            for root, interfaces in self._interfaces.items():
                self._dirty_interfaces.update((root, name) for name in interfaces)
            for root, apps in self._apps.items():
                self._dirty_apps.update((root, name) for name in apps)
            for root, mappings in self._mappings.items():
                self._dirty_mappings.update((root, name) for name in mappings)
            self._changed = True

    def retry(self) -> None:
        """Arm a fresh watch on every path whose watch failed (blocking: run it in a worker
        thread). One that fails again is recorded again."""
        with self._lock:
            rearms = [f.rearm for slot, f in self._failed.items() if slot.active]
        for rearm in rearms:
            rearm()

    def close(self) -> None:
        """Every callback from now on stops its watch and changes nothing."""
        with self._lock:
            self._open.wanted = False

    # ------------------------------------------------------- records (lock held)

    def _interface_record(self, key: Key) -> InterfaceRecord | None:
        node = self._interfaces.get(key[0], {}).get(key[1])
        return None if node is None else InterfaceRecord(node.providers, node.ctime)

    def _app_record(self, key: Key) -> AppRecord | None:
        node = self._apps.get(key[0], {}).get(key[1])
        if node is None:
            return None
        return AppRecord(tuple(sorted(node.instances.items())), node.ctime)

    def _mapping_record(self, key: Key) -> MappingRecord | None:
        node = self._mappings.get(key[0], {}).get(key[1])
        return None if node is None else MappingRecord(node.data, node.ctime)

    # ---------------------------------------------------- bookkeeping (lock held)

    def _current(self, slot: _Slot, generation: int) -> bool:
        """The callback of this watch still counts."""
        return slot.generation == generation and slot.armed and slot.active

    def _accept(self, slot: _Slot, generation: int) -> bool:
        """`_current`, and since this watch just read its node, that node is readable."""
        if not self._current(slot, generation):
            return False
        if self._failed.pop(slot, None) is not None:
            self._changed = True
        return True

    def _owe_wake(self, force: bool = False) -> bool:
        """Whether the caller must wake the loop once it has released the lock. `force`:
        the caller is about to arm watches whose first reads will change things; waking
        after them makes one take() of the lot rather than one per watch."""
        if not (self._changed or force) or self._pending or not self._notifying:
            return False
        if not self._open.wanted:
            return False
        self._pending = True
        return True

    def _dirty_interface(self, key: Key) -> None:
        self._dirty_interfaces.add(key)
        self._changed = True

    def _dirty_app(self, key: Key) -> None:
        self._dirty_apps.add(key)
        self._changed = True

    def _dirty_mapping(self, key: Key) -> None:
        self._dirty_mappings.add(key)
        self._changed = True

    def _drop_root_content(self, root: _Root) -> None:
        """The root went away: so did everything under it."""
        if root.children is not None:
            root.children.wanted = False
            root.children = None
        for name, interface in self._interfaces.pop(root.path, {}).items():
            interface.slot.wanted = False
            self._dirty_interface((root.path, name))
        for name, app in self._apps.pop(root.path, {}).items():
            app.slot.wanted = False
            self._dirty_app((root.path, name))
        self._drop_mapping_root(root.path)

    def _drop_mapping_root(self, path: str) -> None:
        mapping_root = self._mapping_roots.pop(path, None)
        if mapping_root is not None:
            mapping_root.slot.wanted = False
        for name in self._mappings.pop(path, {}):
            self._dirty_mapping((path, name))

    # ----------------------------------------------------------------- arming

    def _arm(self, slot: _Slot, path: str, start: Start) -> None:
        """Arm a new generation of watch on `slot`, unless one is live or nobody wants it.
        Called without the lock: `start` talks to ZooKeeper."""
        with self._lock:
            if slot.armed or not slot.active:
                return
            slot.armed = True
            slot.generation += 1
            generation = slot.generation
        rearm = functools.partial(self._arm, slot, path, start)
        start(generation, functools.partial(self._read_failed, slot, generation, path, rearm))

    def _read_failed(
        self, slot: _Slot, generation: int, path: str, rearm: Callable[[], None], err: Exception
    ) -> None:
        """A watch could not read its node and has stopped (kazoo's thread, or ours)."""
        if is_zookeeper_error(err):
            log.debug("watch failed path=%s: %r", path, err)
        else:  # a bug (ours or kazoo's): show where
            log.error("watch callback failed path=%s", path, exc_info=err)
        with self._lock:
            if not self._current(slot, generation):
                return
            slot.armed = False
            failure = ReadFailure(path, type(err).__name__, is_no_auth(err))
            self._failed[slot] = _Failed(failure, rearm)
            self._new_failures.append(failure)
            self._changed = True
            wake = self._owe_wake()
        if wake:
            self._wake()

    # ------------------------------------------------------------------ roots

    def _start_root(self, root: _Root, generation: int, on_error: OnError) -> None:
        watch_data(
            self._client,
            root.path,
            functools.partial(self._on_root, root, generation),
            on_error,
        )

    def _on_root(
        self, root: _Root, generation: int, data: bytes | None, stat: ZnodeStat | None
    ) -> bool:
        arm: _Slot | None = None
        with self._lock:
            if not self._accept(root.slot, generation):
                return False
            if stat is None:  # no such root (or it went away): nothing under it
                self._drop_root_content(root)
                if not root.listed:
                    root.listed = True
                    self._changed = True
            elif root.children is None:
                root.children = arm = _Slot(root.slot)
            wake = self._owe_wake(force=arm is not None)
        if arm is not None:
            on_children = self._on_dubbo_root if root.dubbo else self._on_services_root
            self._arm(
                arm, root.path, functools.partial(self._start_root_children, root, arm, on_children)
            )
        if wake:
            self._wake()
        return True

    def _start_root_children(
        self,
        root: _Root,
        slot: _Slot,
        on_children: Callable[[_Root, _Slot, int, list[str]], bool],
        generation: int,
        on_error: OnError,
    ) -> None:
        watch_children(
            self._client,
            root.path,
            functools.partial(on_children, root, slot, generation),
            on_error,
        )

    def _on_dubbo_root(self, root: _Root, slot: _Slot, generation: int, names: list[str]) -> bool:
        new: list[_Interface] = []
        mapping_root: _MappingRoot | None = None
        with self._lock:
            if not self._accept(slot, generation):
                return False
            if not root.listed:
                root.listed = True
                self._changed = True
            present = set(names)
            known = self._interfaces.setdefault(root.path, {})
            for name in [n for n in known if n not in present]:
                known.pop(name).slot.wanted = False
                self._dirty_interface((root.path, name))
            for name in names:
                if name not in DUBBO_INTERNAL and name not in known:
                    node = known[name] = _Interface((root.path, name), _Slot(slot))
                    new.append(node)
            if not self._mapping_enabled or "mapping" not in present:
                self._drop_mapping_root(root.path)
            elif root.path not in self._mapping_roots:
                mapping_root = _MappingRoot(root.path, _Slot(slot))
                self._mapping_roots[root.path] = mapping_root
            wake = self._owe_wake(force=bool(new) or mapping_root is not None)
        for node in new:
            path = f"{node.key[0]}/{node.key[1]}/providers"
            self._arm(node.slot, path, functools.partial(self._start_interface, node, path))
        if mapping_root is not None:
            self._arm(
                mapping_root.slot,
                f"{root.path}/mapping",
                functools.partial(self._start_mapping_root, mapping_root),
            )
        if wake:
            self._wake()
        return True

    # -------------------------------------------------------------- interfaces

    def _start_interface(
        self, node: _Interface, path: str, generation: int, on_error: OnError
    ) -> None:
        watch_data(
            self._client,
            path,
            functools.partial(self._on_providers_node, node, path, generation),
            on_error,
        )

    def _on_providers_node(
        self,
        node: _Interface,
        path: str,
        generation: int,
        data: bytes | None,
        stat: ZnodeStat | None,
    ) -> bool:
        """`<interface>/providers` exists or not; a new ctime is a new node (deleted and
        created again), whose children need a watch of their own."""
        arm: _Slot | None = None
        with self._lock:
            if not self._accept(node.slot, generation):
                return False
            if stat is None:
                if node.providers_slot is not None:
                    node.providers_slot.wanted = False
                    node.providers_slot = None
                if node.providers or node.ctime:
                    node.providers, node.ctime = (), 0
                    self._dirty_interface(node.key)
            elif node.providers_slot is None or node.ctime != stat.ctime:
                if node.providers_slot is not None:
                    node.providers_slot.wanted = False
                node.ctime = stat.ctime
                node.providers_slot = arm = _Slot(node.slot)
                self._dirty_interface(node.key)
            wake = self._owe_wake(force=arm is not None)
        if arm is not None:
            self._arm(arm, path, functools.partial(self._start_providers, node, arm, path))
        if wake:
            self._wake()
        return True

    def _start_providers(
        self, node: _Interface, slot: _Slot, path: str, generation: int, on_error: OnError
    ) -> None:
        watch_children(
            self._client,
            path,
            functools.partial(self._on_providers, node, slot, generation),
            on_error,
        )

    def _on_providers(
        self, node: _Interface, slot: _Slot, generation: int, names: list[str]
    ) -> bool:
        with self._lock:
            if not self._accept(slot, generation):
                return False
            providers = tuple(sorted(names))
            if providers != node.providers:
                node.providers = providers
                self._dirty_interface(node.key)
            wake = self._owe_wake()
        if wake:
            self._wake()
        return True

    # --------------------------------------------------------- Dubbo 3 mapping

    def _start_mapping_root(
        self, mapping_root: _MappingRoot, generation: int, on_error: OnError
    ) -> None:
        watch_children(
            self._client,
            f"{mapping_root.root}/mapping",
            functools.partial(self._on_mapping_root, mapping_root, generation),
            on_error,
        )

    def _on_mapping_root(
        self, mapping_root: _MappingRoot, generation: int, names: list[str]
    ) -> bool:
        root = mapping_root.root
        new: list[_Mapping] = []
        with self._lock:
            if not self._accept(mapping_root.slot, generation):
                return False
            present = set(names)
            known = self._mappings.setdefault(root, {})
            for name in [n for n in known if n not in present]:
                known.pop(name).slot.wanted = False
                self._dirty_mapping((root, name))
            for name in names:
                if name not in known:
                    node = known[name] = _Mapping((root, name), _Slot(mapping_root.slot))
                    new.append(node)
            wake = self._owe_wake(force=bool(new))
        for node in new:
            path = f"{root}/mapping/{node.key[1]}"
            self._arm(node.slot, path, functools.partial(self._start_mapping, node, path))
        if wake:
            self._wake()
        return True

    def _start_mapping(self, node: _Mapping, path: str, generation: int, on_error: OnError) -> None:
        watch_data(
            self._client, path, functools.partial(self._on_mapping, node, generation), on_error
        )

    def _on_mapping(
        self, node: _Mapping, generation: int, data: bytes | None, stat: ZnodeStat | None
    ) -> bool:
        with self._lock:
            if not self._accept(node.slot, generation):
                return False
            # a deleted mapping node maps to nothing; its parent's watch drops it soon
            value = (data or b"", stat.ctime) if stat is not None else (b"", node.ctime)
            if value != (node.data, node.ctime):
                node.data, node.ctime = value
                self._dirty_mapping(node.key)
            wake = self._owe_wake()
        if wake:
            self._wake()
        return True

    # ------------------------------------------------------ Curator applications

    def _on_services_root(
        self, root: _Root, slot: _Slot, generation: int, names: list[str]
    ) -> bool:
        arm: list[_App] = []
        with self._lock:
            if not self._accept(slot, generation):
                return False
            if not root.listed:
                root.listed = True
                self._changed = True
            present = set(names)
            known = self._apps.setdefault(root.path, {})
            for name in [n for n in known if n not in present]:
                known.pop(name).slot.wanted = False
                self._dirty_app((root.path, name))
            for name in names:
                node = known.get(name)
                if node is None:
                    node = known[name] = _App((root.path, name), _Slot(slot))
                    arm.append(node)
                elif not node.slot.armed and node.slot not in self._failed:
                    # it was gone when we looked for its ctime (deleted, maybe created again
                    # between two reads of this list): look again
                    arm.append(node)
            wake = self._owe_wake(force=bool(arm))
        for node in arm:
            path = f"{node.key[0]}/{node.key[1]}"
            self._arm(node.slot, path, functools.partial(self._start_app, node, path))
        if wake:
            self._wake()
        return True

    def _start_app(self, node: _App, path: str, generation: int, on_error: OnError) -> None:
        try:
            stat = self._client.exists(path)
        except Exception as err:
            on_error(err)
            return
        with self._lock:
            if not self._current(node.slot, generation):
                return
            if stat is None:  # gone already; the root's children watch drops it
                node.slot.armed = False
                return
            if node.ctime != stat.ctime:
                node.ctime = stat.ctime
                self._dirty_app(node.key)
        watch_children(
            self._client,
            path,
            functools.partial(self._on_instances, node, path, generation),
            on_error,
        )

    def _on_instances(self, node: _App, path: str, generation: int, ids: list[str]) -> bool:
        new: list[tuple[str, _Slot]] = []
        with self._lock:
            if not self._accept(node.slot, generation):
                return False
            present = set(ids)
            for ident in [i for i in node.watched if i not in present]:
                node.watched.pop(ident).wanted = False
                if node.instances.pop(ident, None) is not None:
                    self._dirty_app(node.key)
            for ident in ids:
                if ident not in node.watched:
                    node.watched[ident] = slot = _Slot(node.slot)
                    new.append((ident, slot))
            wake = self._owe_wake(force=bool(new))
        for ident, slot in new:
            instance = f"{path}/{ident}"
            self._arm(
                slot, instance, functools.partial(self._start_instance, node, ident, slot, instance)
            )
        if wake:
            self._wake()
        return True

    def _start_instance(
        self, node: _App, ident: str, slot: _Slot, path: str, generation: int, on_error: OnError
    ) -> None:
        watch_data(
            self._client,
            path,
            functools.partial(self._on_instance, node, ident, slot, generation),
            on_error,
        )

    def _on_instance(
        self,
        node: _App,
        ident: str,
        slot: _Slot,
        generation: int,
        data: bytes | None,
        stat: ZnodeStat | None,
    ) -> bool:
        with self._lock:
            if not self._accept(slot, generation):
                return False
            if stat is None:  # deleted; the application's children watch retires the slot
                if node.instances.pop(ident, None) is not None:
                    self._dirty_app(node.key)
            elif node.instances.get(ident) != (data or b""):
                node.instances[ident] = data or b""
                self._dirty_app(node.key)
            wake = self._owe_wake()
        if wake:
            self._wake()
        return True
