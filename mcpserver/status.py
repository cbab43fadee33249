"""What the server says about itself to people: the change line of each published snapshot,
and the HTML status page on the admin port.

Why: the complaint about serving Istio config over MCP is that nobody can see what flows. The
JSON endpoints answer one question each; an operator paged at night wants one page that shows
every registry, the snapshot, every connected istiod and every problem at once, that works
in any browser without JavaScript or anything fetched from elsewhere (admin ports live on
networks without Internet access), and that refreshes itself. A log line per published
change that names what changed, by registry, answers "what did we just send istiod?".

Everything here is pure: the admin server gathers the facts, these functions format them.
Every string that comes from a registry or a client (names, details, node ids, NACK
messages) is HTML-escaped where it is written.
"""

from __future__ import annotations

import bisect
import html
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from typing import Final

from mcpserver.model import Problem, Service
from mcpserver.xds.callbacks import ClientInfo
from mcpserver.xds.resources import PackedResource
from mcpserver.xds.shards import WHOLE
from mcpserver.xds.snapshot import SetChange, Snapshot, TypeSet

_NAME = attrgetter("name")

SERVICE_KIND: Final = "ServiceEntry"
NAMES_SHOWN: Final = 3
"""Names a change line lists per registry and kind before `and N more`."""
NAMES_IN_FIELDS: Final = 100
"""Names the structured (JSON) fields of a change carry per list: a first snapshot of 50k
services must not become a megabyte log line; the counts are always whole."""

# ------------------------------------------------------------------ snapshot changes


@dataclass(frozen=True, slots=True)
class Delta:
    """Resource names added, removed and changed (new content) between two snapshots."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self, limit: int = NAMES_SHOWN) -> str:
        """`added 1 (shop/new), changed 2 (shop/a, shop/b)`."""
        parts = []
        for verb, names in (
            ("added", self.added),
            ("removed", self.removed),
            ("changed", self.changed),
        ):
            if names:
                parts.append(f"{verb} {len(names)} ({listed(names, limit)})")
        return ", ".join(parts)


def listed(names: Sequence[str], limit: int = NAMES_SHOWN) -> str:
    """`a, b, c` or `a, b, c and 117 more`."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


@dataclass(frozen=True, slots=True)
class SnapshotChange:
    """What one publish changed: ServiceEntries by registry, other kinds in total."""

    version: str
    first: bool
    counts: Mapping[str, int]
    services: Mapping[str, Delta]  # registry -> ServiceEntry changes
    others: Mapping[str, Delta]  # kind -> changes, for kinds other than ServiceEntry

    def summary(self, limit: int = NAMES_SHOWN) -> str:
        """One line for the log and the status page."""
        counts = " ".join(f"{kind}={count}" for kind, count in self.counts.items())
        head = "first snapshot" if self.first else "snapshot"
        parts = [
            f"registry {registry or '?'} {delta.describe(limit)}"
            for registry, delta in self.services.items()
        ]
        parts += [f"{kind} {delta.describe(limit)}" for kind, delta in self.others.items()]
        what = "; ".join(parts) if parts else "no resource changed"
        return f"{head} {self.version} published: {what} (now {counts})"

    def fields(self) -> dict[str, object]:
        """The same, as structured fields for JSON logs: per registry the names added,
        removed and changed (up to NAMES_IN_FIELDS each) and how many there were."""
        services: dict[str, object] = {}
        for registry, d in self.services.items():
            entry: dict[str, object] = {}
            for what, names in (("added", d.added), ("removed", d.removed), ("changed", d.changed)):
                entry[what] = list(names[:NAMES_IN_FIELDS])
                entry[f"{what}_count"] = len(names)
            services[registry or "?"] = entry
        return {
            "snapshot_version": self.version,
            "first": self.first,
            "counts": dict(self.counts),
            "services": services,
            "others": {
                kind: {"added": len(d.added), "removed": len(d.removed), "changed": len(d.changed)}
                for kind, d in self.others.items()
            },
        }


def diff_sets(
    old: TypeSet | None, new: TypeSet
) -> tuple[list[PackedResource], list[PackedResource], list[PackedResource]]:
    """Added, removed (from `old`) and changed resources of one kind, in name order."""
    if old is None:
        return list(new.resources), [], []
    if old is new or old.version == new.version:
        return [], [], []
    before = {r.name: r for r in old.resources}
    after = {r.name: r for r in new.resources}
    added = [r for r in new.resources if r.name not in before]
    removed = [r for r in old.resources if r.name not in after]
    changed = [r for r in new.resources if r.name in before and before[r.name].version != r.version]
    return added, removed, changed


def _find(type_set: TypeSet | None, name: str) -> PackedResource | None:
    """The resource called `name` in a set (sorted by name), if any."""
    if type_set is None:
        return None
    resources = type_set.resources
    at = bisect.bisect_left(resources, name, key=_NAME)
    return resources[at] if at < len(resources) and resources[at].name == name else None


def describe_change(
    old: Snapshot | None, new: Snapshot, owner: Callable[[PackedResource], str]
) -> SnapshotChange:
    """Compare two snapshots; `owner` names the registry a ServiceEntry came from."""
    services: dict[str, dict[str, list[str]]] = {}
    others: dict[str, Delta] = {}
    for kind, type_set in new.sets.items():
        names: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]
        if old is not None and new.base == old.version:
            # the pipeline says what changed: no need to compare the sets
            found = new.changes.get(kind, SetChange())
            names = (found.added, found.removed, found.changed)
        else:
            before = old.sets.get(kind) if old is not None else None
            if old is not None and before is None:
                before = TypeSet.of(kind, ())
            added, removed, changed = diff_sets(before, type_set)
            names = (
                tuple(r.name for r in added),
                tuple(r.name for r in removed),
                tuple(r.name for r in changed),
            )
        if kind != SERVICE_KIND:
            delta = Delta(*names)
            if delta:
                others[kind] = delta
            continue
        for what, listed in zip(("added", "removed", "changed"), names, strict=True):
            for name in listed:
                registry = new.owners.get(name)
                if registry is None:
                    resource = _find(type_set, name) or (
                        _find(old.sets.get(kind), name) if old is not None else None
                    )
                    registry = owner(resource) if resource is not None else ""
                entry = services.setdefault(registry, {})
                entry.setdefault(what, []).append(name)
    return SnapshotChange(
        version=new.version,
        first=old is None,
        counts={kind: len(s.resources) for kind, s in new.sets.items()},
        services={
            registry: Delta(
                tuple(found.get("added", ())),
                tuple(found.get("removed", ())),
                tuple(found.get("changed", ())),
            )
            for registry, found in sorted(services.items())
        },
        others=others,
    )


@dataclass
class Activity:
    """What the status page shows that no other part keeps: when each registry last reported
    a change, and when the snapshot last changed and how."""

    started_at: float = field(default_factory=time.time)
    registry_changed: dict[str, float] = field(default_factory=dict)  # name -> Unix time
    published_at: float | None = None
    last_change: SnapshotChange | None = None


# ------------------------------------------------------------------------ the page


@dataclass(frozen=True, slots=True)
class HeldRemoval:
    """A mass removal protection holds back (docs/operations.md "What mcpserver does when things go
    wrong")."""

    reason: str
    since: float  # Unix time
    removed_services: int
    removed_instances: int
    instances: int


@dataclass(frozen=True, slots=True)
class RegistryRow:
    name: str
    kind: str
    status: str
    synced: bool
    services: int  # served to istiod (as mcpserver_registry_services)
    instances: int
    detail: str
    last_change: float | None
    held: HeldRemoval | None = None
    listed: tuple[int, int] | None = None
    """(services, instances) the registry itself lists, when not what is served (a held
    removal, invalid entries withheld, nothing served yet)."""
    source: str = ""  # where its records come from: a file, hosts, an address
    origin: str = ""  # a hold's: own, peer HOST:PORT, state_dir


@dataclass(frozen=True, slots=True)
class ShardRow:
    """One shard of server.shards (or previous_shards): its port, its part of the snapshot
    (None before the first one) and how many streams read it."""

    label: str  # k/N
    port: int
    snapshot: Snapshot | None
    clients: int


@dataclass(frozen=True, slots=True)
class Page:
    """Everything the status page shows, gathered by the admin server."""

    version: str
    now: float
    started_at: float
    ready: bool
    ready_reason: str
    registries: Sequence[RegistryRow]
    snapshot: Snapshot | None
    published_at: float | None
    last_change: str
    clients: Sequence[ClientInfo]
    problems: Sequence[Problem]
    refresh: int  # seconds; 0: no automatic refresh
    shards: Sequence[ShardRow] = ()
    admin_url: str = "ADMIN"  # how the reader reached this page, for the commands it shows


LATE_ACK: Final = 10.0
"""Seconds after which an un-ACKed response shows as stuck, not merely pending."""

LINKS: Final = (
    ("/debug/registries", "registries"),
    ("/debug/snapshot", "snapshot"),
    ("/debug/snapshot?full=1", "snapshot with bodies"),
    ("/debug/clients", "clients"),
    ("/debug/problems", "problems"),
    ("/metrics", "metrics"),
    ("/readyz", "readyz"),
    ("/healthz", "healthz"),
)

STYLE: Final = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.2em 2em;
color:#1d1d1f;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff;margin-bottom:.6em}
th,td{border:1px solid #d8d8d8;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0;font-weight:600}td.n{text-align:right}
code,.v{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em}
.muted{color:#6e6e73}.bar{margin:.2em 0 1em}
.badge{display:inline-block;padding:0 .5em;border-radius:.7em;font-weight:600;font-size:.9em}
.ready,.ok{background:#d9f2df;color:#13652b}.starting,.waiting{background:#ececec;color:#444}
.degraded,.bad{background:#fadbd8;color:#9c1c12}.held{background:#fde9c8;color:#8a4b00}
.client{background:#fff;border:1px solid #d8d8d8;padding:.5em .8em;margin-bottom:.8em}
.client table{margin:.4em 0 0}.detail{max-width:60em;white-space:pre-wrap;word-break:break-word}
"""


def e(value: object) -> str:
    """HTML-escape anything for text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def when(ts: float | None, now: float) -> str:
    """A <time> element: local ISO 8601 with offset, and how long ago."""
    if ts is None:
        return '<span class="muted">never</span>'
    stamp = datetime.fromtimestamp(ts, UTC).astimezone().isoformat(timespec="seconds")
    since = ago(now - ts)
    return f'<time datetime="{e(stamp)}">{e(stamp)}</time> <span class="muted">({since})</span>'


def ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86400:.1f}d ago"


def short(version: str) -> str:
    """A version as shown: the first 10 characters, the whole one on hover."""
    if not version:
        return '<span class="muted">-</span>'
    return f'<span class="v" title="{e(version)}">{e(version[:10])}</span>'


def type_name(type_url: str) -> str:
    """networking.istio.io/v1/ServiceEntry -> ServiceEntry."""
    return type_url.rsplit("/", 1)[-1] or type_url


def badge(text: str, css: str) -> str:
    return f'<span class="badge {e(css)}">{e(text)}</span>'


def registry_problems(rows: Sequence[RegistryRow], served: bool) -> list[Problem]:
    """The registries' own troubles as problems: each degraded registry with its detail and,
    once a snapshot is `served`, each registry still starting (served without it, after
    startup.serve_partial_after). A held removal is a problem of its own ("removal held",
    from the pipeline), so a registry that is only held adds nothing here."""
    found = []
    for r in rows:
        if r.status == "degraded":
            found.append(Problem(r.name, "registry degraded", r.detail or "degraded", "degraded"))
        elif r.status == "starting" and served:
            message = f"{r.detail or 'listing'}: not completely listed yet; served without it"
            found.append(Problem(r.name, "registry starting", message, "starting"))
    return found


def plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def headline(page: Page) -> tuple[str, str]:
    """(text, HTML) of the page's state: readiness, then the worst registry state, e.g.
    `ready, 2 registries degraded`. A held removal counts its registry degraded; a registry
    still starting counts once a snapshot is served (before, readiness names it)."""
    degraded = sum(1 for r in page.registries if r.status == "degraded" or r.held is not None)
    starting = 0
    if page.snapshot is not None:
        starting = sum(1 for r in page.registries if r.status == "starting" and r.held is None)
    text = ["ready" if page.ready else "NOT READY"]
    html = [
        badge("ready", "ready")
        if page.ready
        else badge("not ready", "degraded") + f" <span>{e(page.ready_reason)}</span>"
    ]
    for count, state in ((degraded, "degraded"), (starting, "starting")):
        if count:
            said = f"{plural(count, 'registry', 'registries')} {state}"
            text.append(said)
            html.append(badge(said, state))
    return ", ".join(text), ", ".join(html)


def render(page: Page) -> str:
    """The whole status page as one HTML document."""
    now = page.now
    refresh = f'<meta http-equiv="refresh" content="{page.refresh}">' if page.refresh > 0 else ""
    title, state = headline(page)
    auto = f"refreshes every {page.refresh} s" if page.refresh > 0 else "automatic refresh off"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        refresh,
        f"<title>mcpserver {e(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f'<h1>mcpserver <span class="muted">{e(page.version)}</span> '
        f'<span id="readiness">{state}</span></h1>',
        f'<div class="bar muted">page at {when(now, now)} &middot; {e(auto)} &middot; up since '
        f"{when(page.started_at, now)}</div>",
        _registries(page),
        _snapshot(page),
        _shards(page),
        _clients(page),
        _problems(page),
        '<h2>JSON</h2><p id="links">',
        " &middot; ".join(f'<a href="{e(href)}">{e(text)}</a>' for href, text in LINKS),
        "</p></body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _registries(page: Page) -> str:
    rows = []
    for r in page.registries:
        status = badge(r.status, r.status)
        detail = e(r.detail)
        if r.held is not None:
            h = r.held
            status = badge("degraded", "degraded") + " " + badge("removal held", "held")
            origin = "" if r.origin in ("", "own") else f" (taken over from {e(r.origin)})"
            detail = (
                f"{e(h.reason)}<br><span class='muted'>held since {when(h.since, page.now)}"
                f"{origin}: {h.removed_services} services and {h.removed_instances} of "
                f"{h.instances} instances would go. Confirm with <code>curl -X POST "
                f"{e(page.admin_url)}/debug/registries/{e(r.name)}/confirm</code></span>"
                + (f"<br>source: {e(r.detail)}" if r.detail else "")
            )
        services, instances = str(r.services), str(r.instances)
        if r.listed is not None:
            services += f' <span class="muted">(lists {r.listed[0]})</span>'
            instances += f' <span class="muted">(lists {r.listed[1]})</span>'
        rows.append(
            f'<tr id="registry-{e(r.name)}" data-status="{e("held" if r.held else r.status)}">'
            f"<td><b>{e(r.name)}</b>"
            f"{f'<br><span class=muted>{e(r.source)}</span>' if r.source else ''}</td>"
            f"<td>{e(r.kind)}</td><td>{status}"
            f"{'' if r.synced else ' <span class=muted>(listing)</span>'}</td>"
            f'<td class="n">{services}</td><td class="n">{instances}</td>'
            f"<td>{when(r.last_change, page.now)}</td>"
            f'<td class="detail">{detail}</td></tr>'
        )
    body = "".join(rows) or '<tr><td colspan="7" class="muted">no registries</td></tr>'
    return (
        f'<h2>Registries ({len(page.registries)})</h2><table id="registries"><tr><th>name</th>'
        "<th>kind</th><th>status</th><th>services served</th><th>instances served</th>"
        "<th>last change</th>"
        f"<th>detail / last error</th></tr>{body}</table>"
    )


def _snapshot(page: Page) -> str:
    snapshot = page.snapshot
    if snapshot is None:
        return (
            '<h2>Snapshot</h2><p id="snapshot">'
            + badge("waiting", "waiting")
            + " no snapshot yet: istiod is answered nothing until every registry has listed"
            " (see readiness above)</p>"
        )
    rows = "".join(
        f'<tr data-kind="{e(kind)}"><td>{e(kind)}</td><td>{short(s.version)}</td>'
        f'<td class="n">{len(s.resources)}</td></tr>'
        for kind, s in snapshot.sets.items()
    )
    change = (
        f'<p class="detail">last change: <span id="last-change">{e(page.last_change)}</span></p>'
        if page.last_change
        else ""
    )
    return (
        f'<h2>Snapshot</h2><div id="snapshot"><p>version {short(snapshot.version)}, '
        f"published {when(page.published_at, page.now)}</p>"
        f"<table><tr><th>kind</th><th>version</th><th>resources</th></tr>{rows}</table>"
        f"{change}</div>"
    )


def _shards(page: Page) -> str:
    """Each shard's port, set versions and sizes, and readers (nothing when unsharded)."""
    if not page.shards:
        return ""
    kinds = list(page.snapshot.sets) if page.snapshot is not None else [SERVICE_KIND]
    head = "".join(f"<th>{e(kind)}</th>" for kind in kinds)
    rows = []
    for shard in page.shards:
        sets = shard.snapshot.sets if shard.snapshot is not None else {}
        cells = "".join(
            f'<td class="n">{len(sets[kind].resources)}</td>'
            if kind in sets
            else '<td class="muted">-</td>'
            for kind in kinds
        )
        version = short(shard.snapshot.version) if shard.snapshot is not None else "-"
        rows.append(
            f'<tr data-shard="{e(shard.label)}"><td>{e(shard.label)}</td><td>{shard.port}</td>'
            f'<td>{version}</td>{cells}<td class="n">{shard.clients}</td></tr>'
        )
    return (
        f'<h2>Shards ({len(page.shards)})</h2><p class="muted">the whole set is also served '
        "on server.listen; each istiod lists one configSources entry per shard of "
        'server.shards (<code>mcpserver mesh-config</code>)</p><table id="shards"><tr>'
        f"<th>shard</th><th>port</th><th>version</th>{head}<th>istiods</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _client_types(client: ClientInfo, now: float, served: set[str]) -> str:
    rows = []
    quiet = 0
    for url, s in client.types.items():
        nack = client.nacks.get(url)
        in_sync = bool(s.version) and (s.acked == s.version or not client.awaits_ack(url))
        if type_name(url) not in served and in_sync and nack is None:
            quiet += 1  # an empty type ACKed (or MeshConfig, never ACKed): nothing to see
            continue
        if not s.version:
            acked = badge("waiting", "waiting")
        elif not client.awaits_ack(url):
            acked = '<span class="muted">not ACKed by istiod</span>'
        elif s.acked == s.version:
            acked = f"{short(s.acked)} {badge('ACKed', 'ok')}"
        elif s.nacked == s.version:
            acked = f"{short(s.acked)} {badge('NACKed', 'bad')}"
        elif client.lag(url, now) >= LATE_ACK:
            # istiod takes a set in well under a second: this one is stuck
            acked = f"{short(s.acked)} {badge('not ACKed', 'held')}"
        else:
            acked = f"{short(s.acked)} {badge('pending', 'waiting')}"
        lag = client.lag(url, now)
        nack_text = (
            f"{badge('NACK', 'bad')} {short(nack.version)} {when(nack.at, now)}: "
            f"<span class='detail'>{e(nack.message)}</span>"
            if nack is not None
            else '<span class="muted">-</span>'
        )
        rows.append(
            f'<tr data-type="{e(url)}" data-sent="{e(s.version)}" data-acked="{e(s.acked)}">'
            f'<td title="{e(url)}">{e(type_name(url))}</td><td>{short(s.version)} '
            f"{when(client.sent_at.get(url), now) if url in client.sent_at else ''}</td>"
            f"<td>{acked}</td><td class='n'>{f'{lag:.1f}s' if lag else '0'}</td>"
            f"<td>{nack_text}</td></tr>"
        )
    if quiet:
        rows.append(
            f'<tr><td colspan="5" class="muted">{quiet} other types: empty sets, in sync</td></tr>'
        )
    return (
        "<table><tr><th>type</th><th>version sent</th><th>version ACKed</th><th>lag</th>"
        f"<th>last NACK</th></tr>{''.join(rows)}</table>"
    )


def _clients(page: Page) -> str:
    served = set(page.snapshot.sets) if page.snapshot is not None else {SERVICE_KIND}
    blocks = [
        f'<div class="client" id="client-{c.stream_id}"><b>node</b> '
        f'<code class="node">{e(c.node_id or "(not sent yet)")}</code> &middot; <b>peer</b> '
        f"<code>{e(c.peer)}</code> &middot; "
        f"{'' if c.shard == WHOLE else f'shard <code>{e(c.shard)}</code> &middot; '}"
        f"stream {c.stream_id} &middot; connected "
        f"{when(c.connected_at, page.now)} &middot; {c.responses} responses"
        f"{_client_types(c, page.now, served)}</div>"
        for c in page.clients
    ]
    body = "".join(blocks) or (
        '<p class="muted">no istiod connected (istiod dials us: check meshConfig.configSources)</p>'
    )
    return f'<h2>Connected istiods ({len(page.clients)})</h2><div id="clients">{body}</div>'


def _problems(page: Page) -> str:
    rows = "".join(
        f"<tr><td>{e(p.registry or '-')}</td><td>{e(p.subject)}</td>"
        f'<td class="detail">{e(p.message)}</td></tr>'
        for p in page.problems
    )
    if not rows:
        return '<h2 id="problems-heading">Problems (0)</h2><p id="problems" class="muted">none</p>'
    return (
        f'<h2 id="problems-heading">Problems ({len(page.problems)})</h2>'
        '<table id="problems"><tr><th>registry</th>'
        f"<th>subject</th><th>problem</th></tr>{rows}</table>"
    )


def instances_of(services: Iterable[Service]) -> int:
    """Instances across a registry's services."""
    return sum(len(s.instances) for s in services)
