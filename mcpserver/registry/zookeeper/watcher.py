"""Keeps a ZooKeeper registry's view current with kazoo children and data watches.

Threads: kazoo runs watch callbacks on its own threads. They only record raw node names and
data under a lock, mark what changed, and cross into the event loop with
`call_soon_threadsafe`; parsing and Service building happen on the loop, per changed
interface or application, with the pure functions in dubbo.py, curator.py and services.py.

Watched layout (one registry may have several roots of each kind):
- `/ROOT/<interface>/providers/<URL>`: Dubbo interface-level providers;
- `/ROOT/mapping/<interface>` (data: application names): Dubbo 3 service-name mapping;
- `/SERVICES/<name>/<id>` (data: Curator JSON): Dubbo 3 applications, Spring Cloud services.

Failure policy (design.md): a suspended connection keeps the last view (DEGRADED); kazoo's
watch recipes re-list everything after a reconnect or a new session, which reconciles what
changed meanwhile; a session expiry removes only what is really gone from ZooKeeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.recipe.watchers import ChildrenWatch, DataWatch
from kazoo.retry import KazooRetry

from mcpserver.metrics import Metrics
from mcpserver.model import Problem, Service
from mcpserver.registry.base import OnChange, Registry, Status, View
from mcpserver.registry.zookeeper.curator import CuratorInstance, parse_instance
from mcpserver.registry.zookeeper.dubbo import Provider, RecordError, parse_provider
from mcpserver.registry.zookeeper.services import (
    ZkOptions,
    application_service,
    interface_services,
    mapped_service,
)
from mcpserver.settings import ZooKeeperRegistrySettings

log = logging.getLogger("mcpserver.registry.zookeeper")

# Children of a Dubbo root that are Dubbo's own bookkeeping, not interfaces.
DUBBO_INTERNAL = frozenset(["mapping", "metadata", "config"])


@dataclass
class _Interface:
    ctime: int
    providers: tuple[str, ...] = ()
    generation: int = 0  # bumps when the providers node goes or is re-created
    active: bool = True


@dataclass
class _App:
    ctime: int
    instances: dict[str, bytes] = field(default_factory=dict)
    watched: dict[str, list[bool]] = field(default_factory=dict)  # id -> [active]
    active: bool = True


@dataclass
class _Mapping:
    ctime: int
    apps: tuple[str, ...] = ()
    active: bool = True


class ZooKeeperRegistry(Registry):
    """One ZooKeeper ensemble, any number of Dubbo and Curator roots."""

    def __init__(
        self, settings: ZooKeeperRegistrySettings, metrics: Metrics, env: Mapping[str, str]
    ) -> None:
        self.name = settings.name
        self._settings = settings
        self._metrics = metrics
        self._options = ZkOptions(
            registry=settings.name,
            namespace=settings.namespace,
            host_template=settings.host_template,
            application_host_template=settings.application_host_template,
            label_params=tuple(settings.label_params),
            endpoints_mode=settings.endpoints,
        )
        auth = (
            [(settings.auth.scheme, settings.auth.credential.resolve(env))]
            if settings.auth
            else None
        )
        self._client = KazooClient(
            hosts=settings.hosts,
            timeout=settings.session_timeout,
            connection_retry=KazooRetry(max_tries=-1, delay=0.2, max_delay=5),
            command_retry=KazooRetry(max_tries=5, delay=0.2, max_delay=2),
            auth_data=auth,
        )
        self._lock = threading.Lock()
        self._interfaces: dict[tuple[str, str], _Interface] = {}
        self._apps: dict[tuple[str, str], _App] = {}
        self._mappings: dict[tuple[str, str], _Mapping] = {}
        self._root_watched: set[str] = set()
        self._dirty_interfaces: set[tuple[str, str]] = set()
        self._dirty_apps: set[tuple[str, str]] = set()
        self._dirty_mappings = False
        self._pending = False
        # loop-side state
        self._interface_services: dict[tuple[str, str], list[Service]] = {}
        self._interface_problems: dict[tuple[str, str], list[Problem]] = {}
        self._app_services: dict[tuple[str, str], Service] = {}
        self._app_problems: dict[tuple[str, str], list[Problem]] = {}
        self._mapped: list[Service] = []
        self._reported: set[str] = set()
        self._synced = False
        self._walked = False  # the first walk of every root is done
        self._status = Status.STARTING
        self._detail = "connecting"
        self._view = View(settings.name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_change: OnChange = lambda: None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    # ----------------------------------------------------------------- lifecycle

    def view(self) -> View:
        return self._view

    async def start(self, on_change: OnChange) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_change = on_change
        self._client.add_listener(self._on_state)
        self._task = asyncio.create_task(self._connect(), name=f"zookeeper-{self.name}")

    async def stop(self) -> None:
        self._stopped = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with contextlib.suppress(KazooException, OSError):
            self._client.stop()
            self._client.close()

    async def _connect(self) -> None:
        """Connect (retrying forever), then list and watch everything once."""
        delay = 0.5
        while not self._stopped:
            try:
                await asyncio.to_thread(self._client.start, self._settings.connect_timeout)
                break
            except (KazooTimeoutError, KazooException, OSError) as err:
                self._set_status(
                    Status.DEGRADED, f"cannot connect to {self._settings.hosts}: {err}"
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        await asyncio.to_thread(self._watch_roots)
        with self._lock:
            self._walked = True
        self._synced = True
        self._refresh()
        self._set_status(Status.READY, "")

    def _watch_roots(self) -> None:
        """Kazoo's recipes call back synchronously with the current state, so when this
        returns the whole tree has been listed once."""
        for root in self._settings.roots:
            DataWatch(self._client, root, self._root_watcher(root, self._on_dubbo_root))
        for root in self._settings.services_roots:
            DataWatch(self._client, root, self._root_watcher(root, self._on_services_root))

    # ----------------------------------------------------------- kazoo threads

    def _on_state(self, state: str) -> None:
        """Kazoo's connection thread: never block, hand over to the loop."""
        if self._loop is None or self._stopped:
            return
        detail = {
            KazooState.SUSPENDED: "connection suspended; serving the last known view",
            KazooState.LOST: "session lost; serving the last known view until re-listed",
        }.get(state, "")
        status = Status.DEGRADED if detail else Status.READY
        if detail:
            self._metrics.registry_errors.labels(self.name, str(state).lower()).inc()
        self._loop.call_soon_threadsafe(self._set_status, status, detail)

    def _notify(self) -> None:
        with self._lock:
            # during the first walk, changes only accumulate: one refresh follows it
            if self._pending or self._loop is None or not self._walked:
                return
            self._pending = True
        self._loop.call_soon_threadsafe(self._refresh)

    def _root_watcher(
        self, root: str, on_children: Callable[[str, list[str]], Any]
    ) -> Callable[[Any, Any], None]:
        def on_root(data: Any, stat: Any) -> None:
            if self._stopped:
                return
            if stat is None:  # root absent (or deleted): nothing under it
                with self._lock:
                    self._root_watched.discard(root)
                on_children(root, [])
                return
            with self._lock:
                if root in self._root_watched:
                    return
                self._root_watched.add(root)

            def children(names: list[str]) -> bool:
                on_children(root, names)
                with self._lock:
                    return root in self._root_watched and not self._stopped

            ChildrenWatch(self._client, root, children)

        return on_root

    def _ctime(self, path: str) -> int | None:
        try:
            stat = self._client.exists(path)
        except KazooException:
            return None
        return None if stat is None else int(stat.ctime)

    def _on_dubbo_root(self, root: str, names: list[str]) -> None:
        present = set(names)
        new: list[tuple[str, str]] = []
        with self._lock:
            for key in [k for k in self._interfaces if k[0] == root and k[1] not in present]:
                self._interfaces.pop(key).active = False
                self._dirty_interfaces.add(key)
            for key in [k for k in self._mappings if k[0] == root and "mapping" not in present]:
                self._mappings.pop(key).active = False
                self._dirty_mappings = True
            for name in names:
                if name not in DUBBO_INTERNAL and (root, name) not in self._interfaces:
                    new.append((root, name))
        for key in new:
            self._watch_interface(key)
        if self._settings.mapping and "mapping" in present:
            self._watch_mapping_root(root)
        self._notify()

    def _watch_interface(self, key: tuple[str, str]) -> None:
        """Two round trips per interface, as a plain walk needs: a data watch on
        `<interface>/providers` (its existence, and its ctime as create_time) and, while it
        exists, a children watch on it."""
        path = f"{key[0]}/{key[1]}/providers"
        state = _Interface(ctime=0)
        with self._lock:
            self._interfaces[key] = state

        def node(data: Any, stat: Any) -> bool:
            if not state.active:
                return False
            if stat is None:  # no providers node (yet, or any more)
                state.generation += 1
                with self._lock:
                    state.providers = ()
                    self._dirty_interfaces.add(key)
                self._notify()
                return True
            if state.ctime != int(stat.ctime):  # new, or deleted and re-created
                state.ctime = int(stat.ctime)
                state.generation += 1
                generation = state.generation

                def providers(names: list[str]) -> bool:
                    if not state.active or state.generation != generation:
                        return False
                    with self._lock:
                        state.providers = tuple(sorted(names))
                        self._dirty_interfaces.add(key)
                    self._notify()
                    return True

                with contextlib.suppress(NoNodeError):
                    ChildrenWatch(self._client, path, providers)
            return True

        DataWatch(self._client, path, node)

    def _watch_mapping_root(self, root: str) -> None:
        with self._lock:
            if (root, "") in self._mappings:
                return
            marker = _Mapping(0)
            self._mappings[(root, "")] = marker

        def children(names: list[str]) -> bool:
            if not marker.active:
                return False
            present = set(names)
            with self._lock:
                for key in [
                    k for k in self._mappings if k[0] == root and k[1] and k[1] not in present
                ]:
                    self._mappings.pop(key).active = False
                    self._dirty_mappings = True
                new = [n for n in names if (root, n) not in self._mappings]
            for name in new:
                self._watch_mapping(root, name)
            self._notify()
            return True

        ChildrenWatch(self._client, f"{root}/mapping", children)

    def _watch_mapping(self, root: str, interface: str) -> None:
        state = _Mapping(0)
        with self._lock:
            self._mappings[(root, interface)] = state

        def data(value: bytes | None, stat: Any) -> bool:
            if not state.active:
                return False
            with self._lock:
                if value is None:
                    state.apps = ()
                else:
                    state.ctime = int(stat.ctime)
                    text = value.decode("utf-8", errors="replace")
                    state.apps = tuple(sorted({a.strip() for a in text.split(",") if a.strip()}))
                self._dirty_mappings = True
            self._notify()
            return True

        DataWatch(self._client, f"{root}/mapping/{interface}", data)

    def _on_services_root(self, root: str, names: list[str]) -> None:
        present = set(names)
        with self._lock:
            for key in [k for k in self._apps if k[0] == root and k[1] not in present]:
                self._apps.pop(key).active = False
                self._dirty_apps.add(key)
            new = [(root, n) for n in names if (root, n) not in self._apps]
        for key in new:
            self._watch_app(key)
        self._notify()

    def _watch_app(self, key: tuple[str, str]) -> None:
        path = f"{key[0]}/{key[1]}"
        ctime = self._ctime(path)
        if ctime is None:
            return
        state = _App(ctime)
        with self._lock:
            self._apps[key] = state

        def children(ids: list[str]) -> bool:
            if not state.active:
                return False
            present = set(ids)
            with self._lock:
                for gone in [i for i in state.watched if i not in present]:
                    state.watched.pop(gone)[0] = False
                    state.instances.pop(gone, None)
                    self._dirty_apps.add(key)
                new = [i for i in ids if i not in state.watched]
                for ident in new:
                    state.watched[ident] = [True]
            for ident in new:
                self._watch_instance(key, state, ident)
            self._notify()
            return True

        ChildrenWatch(self._client, path, children)

    def _watch_instance(self, key: tuple[str, str], state: _App, ident: str) -> None:
        flag = state.watched[ident]

        def data(value: bytes | None, stat: Any) -> bool:
            if not flag[0] or not state.active:
                return False
            with self._lock:
                if value is None:
                    state.instances.pop(ident, None)
                else:
                    state.instances[ident] = value
                self._dirty_apps.add(key)
            self._notify()
            return True

        with contextlib.suppress(NoNodeError):
            DataWatch(self._client, f"{key[0]}/{key[1]}/{ident}", data)

    # --------------------------------------------------------------- the loop

    def _set_status(self, status: Status, detail: str) -> None:
        if status is Status.READY and not self._synced:
            status, detail = Status.STARTING, "listing"
        if (status, detail) == (self._status, self._detail):
            return
        if status is Status.DEGRADED:
            log.warning("registry degraded registry=%s: %s", self.name, detail)
        elif self._status is Status.DEGRADED:
            log.info("registry recovered registry=%s", self.name)
        self._status, self._detail = status, detail
        self._publish()

    def _skip(self, path: str, err: RecordError) -> Problem:
        if path not in self._reported:
            self._reported.add(path)
            log.warning("skipped record registry=%s path=%s: %s", self.name, path, err)
            self._metrics.skipped_records.labels(self.name, err.reason).inc()
        return Problem(self.name, path, str(err))

    def _refresh(self) -> None:
        """On the loop: rebuild the Services of what changed, then publish a new view."""
        with self._lock:
            self._pending = False
            interfaces = {
                k: (self._interfaces[k].providers, self._interfaces[k].ctime)
                if k in self._interfaces
                else None
                for k in self._dirty_interfaces
            }
            apps = {
                k: (dict(self._apps[k].instances), self._apps[k].ctime) if k in self._apps else None
                for k in self._dirty_apps
            }
            mappings_dirty = self._dirty_mappings or bool(apps)
            mappings = [
                (k[1], m.apps, m.ctime) for k, m in self._mappings.items() if k[1] and m.apps
            ]
            self._dirty_interfaces.clear()
            self._dirty_apps.clear()
            self._dirty_mappings = False
        for key, raw in interfaces.items():
            self._build_interface(key, raw)
        for key, raw_app in apps.items():
            self._build_app(key, raw_app)
        if mappings_dirty:
            self._build_mapped(mappings)
        self._publish()

    def _build_interface(
        self, key: tuple[str, str], raw: tuple[tuple[str, ...], int] | None
    ) -> None:
        if raw is None:
            self._interface_services.pop(key, None)
            self._interface_problems.pop(key, None)
            return
        names, ctime = raw
        parsed: list[Provider] = []
        problems: list[Problem] = []
        for name in names:
            try:
                parsed.append(parse_provider(name))
            except RecordError as err:
                problems.append(self._skip(f"{key[0]}/{key[1]}/providers/{name[:200]}", err))
        self._interface_services[key] = interface_services(self._options, parsed, ctime)
        self._interface_problems[key] = problems

    def _build_app(self, key: tuple[str, str], raw: tuple[dict[str, bytes], int] | None) -> None:
        if raw is None:
            self._app_services.pop(key, None)
            self._app_problems.pop(key, None)
            return
        instances, ctime = raw
        parsed: list[CuratorInstance] = []
        problems: list[Problem] = []
        for ident, data in sorted(instances.items()):
            try:
                parsed.append(parse_instance(data, self._settings.default_protocol))
            except RecordError as err:
                problems.append(self._skip(f"{key[0]}/{key[1]}/{ident[:200]}", err))
        self._app_problems[key] = problems
        if parsed:
            self._app_services[key] = application_service(self._options, key[1], parsed, ctime)
        else:
            self._app_services.pop(key, None)

    def _build_mapped(self, mappings: list[tuple[str, tuple[str, ...], int]]) -> None:
        by_app = {key[1]: service for key, service in self._app_services.items()}
        direct = {s.name for services in self._interface_services.values() for s in services}
        mapped: list[Service] = []
        for interface, apps, ctime in sorted(mappings):
            service = mapped_service(
                self._options, interface, [by_app[a] for a in apps if a in by_app], ctime
            )
            if service is not None and service.name not in direct:
                mapped.append(service)
        self._mapped = mapped

    def _publish(self) -> None:
        services: list[Service] = []
        for group in self._interface_services.values():
            services.extend(group)
        direct = {s.name for s in services}
        services.extend(self._app_services.values())
        services.extend(s for s in self._mapped if s.name not in direct)
        problems = [p for ps in self._interface_problems.values() for p in ps]
        problems += [p for ps in self._app_problems.values() for p in ps]
        self._view = View(
            registry=self.name,
            services=tuple(services),
            synced=self._synced,
            status=self._status,
            detail=self._detail,
            problems=tuple(problems),
        )
        self._on_change()
