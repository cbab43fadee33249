"""Composition root: builds every part from Settings, starts them in order, stops them in reverse.

Start order matters to istiod: the gRPC port opens first (istiod exits if it cannot open its
stream), but streams get nothing until the first complete snapshot; registries start next,
then the admin port (its code is imported while the registries read; start() returns with
it listening).
Stop order is the reverse, and every step runs even when an earlier one fails: a registry
that cannot stop must not keep the ports open.

Shutdown (SIGTERM) is a sequence load balancers and istiod can follow: /readyz 503 and gRPC
health NOT_SERVING at once; `shutdown.drain` seconds during which streams keep being served
while probes steer new clients away; then every stream ends with UNAVAILABLE (istiod
reconnects, to another replica behind the address) before registries stop, so nothing a
stopping registry does can reach istiod; everything after the drain is bounded by
`shutdown.grace`, and past drain + grace the process exits whatever still runs.

The app also keeps what only it can see: when each registry reports a change (the start of
the push latency histogram, and "last change" on the status page) and what each published
snapshot changed (one INFO line per publish that names it): its ChangeTracker (changes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import itertools
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final

from mcpserver import failure, runtime
from mcpserver.changes import ChangeTracker
from mcpserver.codec import Record
from mcpserver.debounce import Debouncer
from mcpserver.metrics import Metrics
from mcpserver.pipeline import Pipeline, PipelineOptions
from mcpserver.registry.base import Registry
from mcpserver.registry.kind import RegistryContext
from mcpserver.registry.kinds import kind_of
from mcpserver.settings import Settings
from mcpserver.statefiles import StateWriter, check_writable, read_states
from mcpserver.xds.callbacks import DefaultCallbacks
from mcpserver.xds.server import ServerOptions, TLSError, XdsServer
from mcpserver.xds.shards import (
    SHARD_HEADER,
    SHARD_PORTS_HEADER,
    SHARDS_HEADER,
    WHOLE,
    shard_label,
)
from mcpserver.xds.sotw import AdsHandler, Clients
from mcpserver.xds.store import ShardStore, SnapshotSource, SnapshotStore

if TYPE_CHECKING:
    # Imported where used: the admin port's by App.start, while the registries read (see
    # there); peers and the Kubernetes sink when configured. All three bring aiohttp.
    from mcpserver.admin import Admin
    from mcpserver.peers import Peers
    from mcpserver.sink.writer import KubernetesSink

log = logging.getLogger("mcpserver")

STREAM_GRACE: Final = 0.5
"""Seconds unary calls in flight (health checks) get before open streams are cut."""


class StartError(Exception):
    """The server cannot start (a port in use); the message says which and why."""


def bind_failure(address: str) -> str | None:
    """Why `address` cannot be bound (in words), or None if it can be now."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, int(port)))
        except OSError as err:
            return failure.describe(err)
        except (ValueError, UnicodeError):
            return None
    return None


def build_registries(settings: Settings, metrics: Metrics) -> list[Registry]:
    """One registry object per configured entry, built by its kind (registry/kinds.py)."""
    context = RegistryContext(metrics, dict(os.environ))
    return [kind_of(entry).build(entry, context) for entry in settings.registries]


def pipeline_options(settings: Settings) -> PipelineOptions:
    p = settings.protection
    return PipelineOptions(
        keep_when_empty={r.name: r.keep_when_empty for r in settings.registries},
        vip_cidr=settings.vip.cidr,
        merge_policy=settings.merge,
        protection=p.policy(),
        serve_partial_after=settings.startup.serve_partial_after,
        layouts=settings.server.layouts()[1:],
        recovery_grace={r.name: p.grace_for(r.kind) for r in settings.registries},
    )


def shutdown_times(settings: Settings) -> tuple[float, float]:
    """`shutdown.drain` and `shutdown.grace` in seconds."""
    return settings.shutdown.drain, settings.shutdown.grace


def admin_token(settings: Settings) -> str | None:
    """The admin bearer token, if `server.admin_token` is set; an empty one is refused (it
    would silently leave the admin port open)."""
    secret = settings.server.admin_token
    if secret is None:
        return None
    token: str = secret.resolve(os.environ)
    if not token:
        raise StartError("server.admin_token is set but resolves to an empty value")
    return token


class App:
    """The running server; tests build it directly with ephemeral ports.

    `registries` replaces the ones the settings describe (tests inject registries whose
    sync they control).
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        registries: Sequence[Registry] | None = None,
    ) -> None:
        self.settings = s = settings
        token = admin_token(s)  # before any port is bound: a refused token binds nothing
        self.state: StateWriter | None = None
        if s.state_dir is not None:  # likewise: a state_dir we cannot write binds nothing
            try:
                check_writable(s.state_dir)
            except OSError as err:
                raise StartError(f"state_dir {s.state_dir}: cannot write there: {err}") from None
        self.metrics = metrics or Metrics()
        self.store = SnapshotStore()
        self.clients = Clients()
        self.replica = uuid.uuid4().hex  # tells this process apart among its peers
        self.peers: Peers | None = None
        if s.peers is not None:
            from mcpserver.peers import Peers

            self.peers = Peers(s.peers.addresses, s.peers.wait, self.replica, token)
        self.registries = (
            list(registries) if registries is not None else build_registries(s, self.metrics)
        )
        self.changes = ChangeTracker(self.store, lambda: self.pipeline.views(), self.metrics)  # noqa: PLW0108  # built after this
        ids = itertools.count(1)

        def handler(source: SnapshotSource, shard: str) -> AdsHandler:
            callbacks = DefaultCallbacks(self.metrics, self.clients, self.changes.origin, shard)
            return AdsHandler(
                source,
                self.metrics,
                self.clients,
                callbacks=callbacks,
                send_timeout=s.server.send_timeout,
                ids=ids,
                shard=shard,
            )

        self.layouts = s.server.layouts()
        whole = handler(self.store, WHOLE)
        shards = [
            (s.server.shard_listen(n, k), handler(ShardStore(self.store, n, k), shard_label(n, k)))
            for n in self.layouts[1:]
            for k in range(n)
        ]
        try:
            self.xds = XdsServer(
                ServerOptions(
                    listen=s.server.listen,
                    max_message_bytes=s.server.max_message_bytes,
                    cert_file=str(s.server.tls.cert_file) if s.server.tls else None,
                    key_file=str(s.server.tls.key_file) if s.server.tls else None,
                ),
                whole,
                self.metrics,
                shards,
            )
        except TLSError as err:
            raise StartError(str(err)) from None
        except (OSError, RuntimeError) as err:  # grpc raises RuntimeError when bind fails
            # gRPC says only "Failed to bind ...; set GRPC_VERBOSITY=debug": ask the OS why
            for what, address in (
                ("server.listen", s.server.listen),
                *((f"shard {h.shard}", a) for a, h in shards),
            ):
                why = bind_failure(address)
                if why is not None:
                    raise StartError(f"cannot listen on {what} {address}: {why}") from None
            raise StartError(f"cannot listen on server.listen {s.server.listen}: {err}") from None
        # every stream says which shard it serves and where the shards of server.shards are
        # (`mcpserver dump` gathers them from there)
        ports = ",".join(map(str, self.shard_ports(s.server.shards)))
        for label, served_by in ((WHOLE, whole), *((h.shard, h) for _, h in shards)):
            served_by.metadata = (
                (SHARD_HEADER, label),
                (SHARDS_HEADER, str(s.server.shards)),
                (SHARD_PORTS_HEADER, ports),
            )
        self.debouncer: Debouncer
        self.pipeline = Pipeline(
            self.registries,
            self.store,
            self.metrics,
            pipeline_options(s),
            trigger=lambda: self.debouncer.trigger(),  # noqa: PLW0108  # built after the pipeline
            on_serving=self._serving,
        )
        self.debouncer = Debouncer(self._rebuild, s.debounce.after, s.debounce.max)
        if s.state_dir is not None:
            self.state = StateWriter(
                s.state_dir,
                s.state_write_interval,
                self.replica,
                self.pipeline.revisions,
                self.pipeline.remembered,
            )
            self.pipeline.on_decided = self.state.changed
        self.sink: KubernetesSink | None = None
        if "kubernetes" in s.sink:
            from mcpserver.sink.client import ApiError
            from mcpserver.sink.writer import KubernetesSink

            identity = f"{os.environ.get('HOSTNAME') or socket.gethostname()}-{self.replica[:8]}"
            try:
                self.sink = KubernetesSink(
                    s.kubernetes, self.store, self.metrics, identity, os.environ
                )
            except ApiError as err:
                raise StartError(str(err)) from None
        self._token = token
        self._admin: Admin | None = None
        self._waiter: asyncio.Task[None] | None = None
        self._taking_over: asyncio.Task[None] | None = None

    @property
    def admin(self) -> Admin:
        """The admin port's server, built by start()."""
        if self._admin is None:
            raise RuntimeError("the admin server is built by App.start()")
        return self._admin

    def _build_admin(self, admin: type[Admin]) -> Admin:
        s = self.settings
        return admin(
            s.server.admin,
            self.store,
            self.pipeline,
            self.clients,
            self.metrics,
            s.registries,
            token=self._token,
            activity=self.changes.activity,
            shard_ports={n: self.shard_ports(n) for n in self.layouts},
            replica=self.replica,
            forward=self.peers.forward_confirm if self.peers is not None else None,
            sink=self.sink.status if self.sink is not None else None,
        )

    @property
    def port(self) -> int:
        """The port of the whole set (server.listen)."""
        return self.xds.port

    def shard_ports(self, shards: int) -> list[int]:
        """The bound ports of layout `shards`, in shard order ([port] for layout 1)."""
        if shards == 1:
            return [self.xds.port]
        at = 1 + sum(n for n in self.layouts[1:] if n < shards)
        if shards not in self.layouts:
            raise KeyError(f"layout {shards} is not served (layouts: {self.layouts})")
        return self.xds.ports[at : at + shards]

    async def _rebuild(self) -> None:
        """The debouncer's action: one pipeline rebuild, timed from the registry changes it
        carries."""
        self.changes.rebuild_started()
        try:
            await self.pipeline.rebuild()
        finally:
            self.changes.rebuild_ended(failed=bool(self.pipeline.failure))

    def _registry_changed(self, name: str) -> Callable[[], None]:
        """The on_change callback of one registry: note when, then wake the debouncer."""

        def changed() -> None:
            self.changes.registry_changed(name)
            self.pipeline.count_status(name)  # /metrics says a new status at once
            self._wake()

        return changed

    def _wake(self) -> None:
        """A rebuild after the debounce; the first snapshot at once when nothing is waited
        for any more: istiod has nothing yet, and every registry has listed (the debounce
        coalesces changes into few pushes, and before the first there is none)."""
        first = self.store.snapshot is None and not self.pipeline.waiting_for()
        self.debouncer.trigger(at_once=first)

    async def _serving(self, serving: bool) -> None:
        if serving:
            await self.xds.serving()
        else:
            await self.xds.not_serving()

    async def start(self) -> None:
        if not self.registries:
            log.warning("no registries configured: istiod will receive empty sets")
        await self.xds.start()
        self.debouncer.start()
        if self.peers is not None or self.state is not None:
            # read while the registries list: the first snapshot waits for both
            self.pipeline.taking_over = True
            self._taking_over = asyncio.create_task(self._take_over(), name="take-over")
        for registry in self.registries:
            await registry.start(self._registry_changed(registry.name))
        # The admin port's code (aiohttp, the status page: a third of the start's imports)
        # is imported once the registries read, in a thread so the loop keeps taking their
        # reads over. /healthz answers once start() returns, as before; /readyz says ready
        # only once the first snapshot is served.
        module = await asyncio.to_thread(importlib.import_module, "mcpserver.admin")
        self._admin = self._build_admin(module.Admin)
        try:
            await self._admin.start()
        except OSError as err:
            raise StartError(
                f"cannot listen on server.admin {self.settings.server.admin}: "
                f"{failure.describe(err)}"
            ) from None
        self._waiter = asyncio.create_task(self._first_snapshot(), name="first-snapshot")
        self._wake()
        if self.sink is not None:
            await self.sink.start()  # it writes nothing before the first snapshot

    async def _take_over(self) -> None:
        """Before the first snapshot: what the last run wrote to the state directory,
        then what the peers remember (fresher: it wins), becomes this replica's own
        reference for each registry (statefiles.py, peers.py); bounded by peers.wait."""
        picked: dict[str, tuple[str, str, Record]] = {}
        names = [r.name for r in self.registries]
        try:
            state_dir = self.settings.state_dir
            if state_dir is not None:
                hold_for = self.settings.protection.hold_for
                picked.update(await asyncio.to_thread(read_states, state_dir, names, hold_for))
                for name, (_, phrase, record) in picked.items():
                    log.info(
                        "taking over registry=%s from the state directory: %d services, %s",
                        name,
                        len(record.checkpoints[-1].services),
                        phrase,
                    )
            if self.peers is not None:
                from mcpserver.peers import describe, pick

                chosen = pick(await self.peers.accepted())
                for line in describe(chosen, names):
                    log.info("taking over what a peer accepted: %s", line)
                for name, (label, record) in chosen.items():
                    picked[name] = (label, f"what {label} accepted", record)
        except Exception:
            log.exception("reading what peers or the state directory remember failed")
        finally:
            self.pipeline.take_over(picked)

    async def _first_snapshot(self) -> None:
        """Until the first snapshot: say every 30 s who we wait for, and rebuild when the
        opt-in partial-serving deadline passes."""
        from mcpserver.pipeline import WAITING_LOG_EVERY

        # Woken by the first publish as well: the task ends with the wait, instead of
        # sleeping out up to 30 s more (a task count then says what the server runs).
        published = asyncio.Event()
        unsubscribe = self.store.subscribe(published.set)
        try:
            while self.store.snapshot is None:
                remaining = self.pipeline.partial_remaining()
                delay = WAITING_LOG_EVERY
                if remaining:
                    # wake at the deadline once; once it has passed (0), the rebuild it
                    # triggered is publishing: waking every few ms until then wrote a
                    # warning per wake and kept postponing that very rebuild (debounce)
                    delay = min(WAITING_LOG_EVERY, remaining)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(published.wait(), delay + 0.01)
                if self.store.snapshot is None:
                    self.pipeline.note_waiting()
                    self.debouncer.trigger()
        finally:
            unsubscribe()

    async def stop(
        self,
        drain: float = 0.0,
        grace: float | None = None,
        skip_drain: asyncio.Event | None = None,
    ) -> bool:
        """Stop: unready at once, serve streams `drain` more seconds (until `skip_drain` is
        set), end them with UNAVAILABLE, then stop registries, the debouncer and the admin
        port. Every step runs even if an earlier one failed; with `grace`, all of it after
        the drain is bounded by that many seconds. True when everything stopped in time."""
        loop = asyncio.get_running_loop()
        if self._admin is not None:
            self._admin.shutting_down = True
        clean = True
        try:
            # final: a rebuild finishing while registries stop must not flip health back
            await self.xds.not_serving(final=True)
        except Exception:
            clean = False
            log.exception("setting gRPC health NOT_SERVING failed; stopping the rest")
        if drain > 0:
            log.info(
                "shutting down: draining %gs with /readyz 503 and gRPC health NOT_SERVING; "
                "%d istiod streams stay served until then (send the signal again to skip)",
                drain,
                len(self.clients.open),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for((skip_drain or asyncio.Event()).wait(), drain)
        for task in (self._waiter, self._taking_over):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        streams = len(self.clients.open)
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            # streams end first, so nothing a stopping registry does reaches istiod
            ("xds", functools.partial(self.xds.stop, STREAM_GRACE)),
            # the sink stops writing and hands its lease over before registries stop
            *((("kubernetes sink", self.sink.stop),) if self.sink is not None else ()),
            *((f"registry {r.name}", r.stop) for r in reversed(self.registries)),
            ("debouncer", self.debouncer.stop),
            *((("state_dir", self.state.stop),) if self.state is not None else ()),
            *((("admin", self._admin.stop),) if self._admin is not None else ()),
        ]
        deadline = None if grace is None else loop.time() + grace
        for what, step in steps:
            # a step always gets a moment, so one slow step cannot skip the ones after it
            budget = None if deadline is None else max(0.2, deadline - loop.time())
            try:
                async with asyncio.timeout(budget):
                    await step()
            except TimeoutError:
                clean = False
                log.error("stopping %s took longer than shutdown.grace; stopping the rest", what)
            except Exception:
                clean = False
                log.exception("stopping %s failed; stopping the rest", what)
            if what == "xds" and streams:
                log.info("closed %d istiod streams with UNAVAILABLE", streams)
        return clean


def _exit_now(limit: float) -> None:
    """The last resort of a shutdown that outlives drain + grace (a thread that will not
    end, a task that ignores cancellation): say so and leave."""
    log.critical("shutdown still running after %gs (shutdown.drain + grace); exiting now", limit)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)


async def serve(
    settings: Settings, stop: asyncio.Event | None = None, *, hard_exit: bool = False
) -> bool:
    """Run until SIGINT/SIGTERM (or until `stop` is set), then shut down in order; a second
    signal skips the drain. With `hard_exit` (the CLI), the process exits by drain + grace
    whatever still runs. True when the shutdown was clean."""
    app = App(settings)
    stop = stop or asyncio.Event()
    skip_drain = asyncio.Event()
    drain, grace = shutdown_times(settings)

    def signalled() -> None:
        if stop.is_set():
            skip_drain.set()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, signalled)
    started = False
    try:
        await app.start()
        started = True
        runtime.settle_after_first(app.store, app.metrics)
        if settings.server.shards > 1:
            log.info(
                "mcpserver serving xds=%s (the whole set) shards=%d ports=%s admin=%s",
                settings.server.listen,
                settings.server.shards,
                ",".join(map(str, app.shard_ports(settings.server.shards))),
                settings.server.admin,
            )
        else:
            log.info(
                "mcpserver serving xds=%s admin=%s", settings.server.listen, settings.server.admin
            )
        await stop.wait()
    finally:
        began = time.monotonic()
        if hard_exit:
            # a daemon thread: it ends with the process when the shutdown finishes in time
            watchdog = threading.Timer(drain + grace, _exit_now, (drain + grace,))
            watchdog.daemon = True
            watchdog.start()
        clean = await app.stop(drain if started else 0.0, grace, skip_drain)
    log.info("stopped in %.1fs", time.monotonic() - began)
    return clean
