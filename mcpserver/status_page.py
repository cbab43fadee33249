"""The HTML status page on the admin port, and the table of every admin endpoint.

Why: the complaint about serving Istio config over MCP is that nobody can see what flows. The
JSON endpoints answer one question each; an operator paged at night wants one page that shows
every registry, the snapshot, every connected istiod and every problem at once, that works
in any browser without JavaScript or anything fetched from elsewhere (admin ports live on
networks without Internet access), and that refreshes itself.

`ENDPOINTS` is the one list of what the admin port serves, each with what it is for: the
admin server routes it and leaves the probes open from it, and the page links the JSON
endpoints from it (with the description on hover), as Istio's debug index lists its
handlers from the table they are registered in (pilot/pkg/xds/debug.go).

Everything here is pure: the admin server gathers the facts, these functions format them.
Every string that comes from a registry or a client (names, details, node ids, NACK
messages) is text, never markup: the page is built only with `markup()`, which escapes every
value it puts into our own markup, so no interpolation can forget to.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from mcpserver.model import Problem, Service
from mcpserver.xds.callbacks import ClientInfo
from mcpserver.xds.shards import WHOLE
from mcpserver.xds.snapshot import Snapshot
from mcpserver.xds.typeurls import SERVICE_ENTRY

# ------------------------------------------------------------------ the endpoints


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One path of the admin port and what it answers."""

    method: str
    path: str
    description: str
    open: bool = False
    """Readable without `server.admin_token` (probes and scrapers)."""
    links: tuple[tuple[str, str], ...] = ()
    """How the status page links it: (href, text), in the order shown."""


ENDPOINTS: Final = (
    Endpoint("GET", "/", "this status page"),
    Endpoint(
        "GET",
        "/debug/registries",
        "each registry: kind, source, status, services and instances listed and served, "
        "last change, detail, a held removal",
        links=(("/debug/registries", "registries"),),
    ),
    Endpoint(
        "POST",
        "/debug/registries/{name}/confirm",
        "apply a held mass removal now, here and on every peer",
    ),
    Endpoint(
        "GET",
        "/debug/snapshot",
        "names and versions per kind (and per shard); ?full=1 adds each resource as JSON",
        links=(("/debug/snapshot", "snapshot"), ("/debug/snapshot?full=1", "snapshot with bodies")),
    ),
    Endpoint(
        "GET",
        "/debug/clients",
        "every open stream: node, peer, shard, and per type what was sent, ACKed and NACKed",
        links=(("/debug/clients", "clients"),),
    ),
    Endpoint(
        "GET",
        "/debug/problems",
        "degraded registries, held removals, everything withheld or skipped",
        links=(("/debug/problems", "problems"),),
    ),
    Endpoint(
        "GET",
        "/debug/accepted",
        "what protection remembers of each registry: what a starting peer takes over",
    ),
    Endpoint(
        "GET",
        "/debug/sink",
        "the Kubernetes sink (sink: [kubernetes]): whether this replica leads, what it owns, "
        "what it could not write",
        links=(("/debug/sink", "sink"),),
    ),
    Endpoint("GET", "/metrics", "Prometheus metrics", open=True, links=(("/metrics", "metrics"),)),
    Endpoint(
        "GET",
        "/readyz",
        "200 while a current snapshot is served, else 503 with the reason",
        open=True,
        links=(("/readyz", "readyz"),),
    ),
    Endpoint("GET", "/healthz", "the process is up", open=True, links=(("/healthz", "healthz"),)),
)

# ------------------------------------------------------------------ markup


class Html(str):
    """Markup: our own, or text already escaped. Anything else is text, escaped where it
    meets markup."""

    __slots__ = ()


def escape(value: object) -> Html:
    """The one escaping function: text (anything but Html) for an element or a quoted
    attribute; Html as it is."""
    if isinstance(value, Html):
        return value
    return Html(html.escape(str(value), quote=True))


def markup(template: str, /, *values: object) -> Html:
    """Our markup `template` with each `{}` filled by a value, escaped."""
    return Html(template.format(*map(escape, values)))


def join(separator: str, parts: Iterable[object]) -> Html:
    """Parts (each escaped) between our markup `separator`."""
    return Html(separator.join(map(escape, parts)))


NOTHING: Final = Html("")

# ------------------------------------------------------------------ the page's facts


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


def instances_of(services: Iterable[Service]) -> int:
    """Instances across a registry's services."""
    return sum(len(s.instances) for s in services)


# ------------------------------------------------------------------ the page

LATE_ACK: Final = 10.0
"""Seconds after which an un-ACKed response shows as stuck, not merely pending."""

STYLE: Final = Html("""
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
""")


def when(ts: float | None, now: float) -> Html:
    """A <time> element: local ISO 8601 with offset, and how long ago."""
    if ts is None:
        return Html('<span class="muted">never</span>')
    stamp = datetime.fromtimestamp(ts, UTC).astimezone().isoformat(timespec="seconds")
    return markup(
        '<time datetime="{}">{}</time> <span class="muted">({})</span>',
        stamp,
        stamp,
        ago(now - ts),
    )


def ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86400:.1f}d ago"


def short(version: str) -> Html:
    """A version as shown: the first 10 characters, the whole one on hover."""
    if not version:
        return Html('<span class="muted">-</span>')
    return markup('<span class="v" title="{}">{}</span>', version, version[:10])


def type_name(type_url: str) -> str:
    """networking.istio.io/v1/ServiceEntry -> ServiceEntry."""
    return type_url.rsplit("/", 1)[-1] or type_url


def badge(text: str, css: str) -> Html:
    return markup('<span class="badge {}">{}</span>', css, text)


def plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def headline(page: Page) -> tuple[str, Html]:
    """(text, HTML) of the page's state: readiness, then the worst registry state, e.g.
    `ready, 2 registries degraded`. A held removal counts its registry degraded; a registry
    still starting counts once a snapshot is served (before, readiness names it)."""
    degraded = sum(1 for r in page.registries if r.status == "degraded" or r.held is not None)
    starting = 0
    if page.snapshot is not None:
        starting = sum(1 for r in page.registries if r.status == "starting" and r.held is None)
    text = ["ready" if page.ready else "NOT READY"]
    shown = [
        badge("ready", "ready")
        if page.ready
        else markup("{} <span>{}</span>", badge("not ready", "degraded"), page.ready_reason)
    ]
    for count, state in ((degraded, "degraded"), (starting, "starting")):
        if count:
            said = f"{plural(count, 'registry', 'registries')} {state}"
            text.append(said)
            shown.append(badge(said, state))
    return ", ".join(text), join(", ", shown)


def render(page: Page) -> str:
    """The whole status page as one HTML document."""
    now = page.now
    title, state = headline(page)
    auto = f"refreshes every {page.refresh} s" if page.refresh > 0 else "automatic refresh off"
    parts = [
        Html("<!DOCTYPE html>"),
        Html('<html lang="en"><head><meta charset="utf-8">'),
        Html('<meta name="viewport" content="width=device-width, initial-scale=1">'),
        markup('<meta http-equiv="refresh" content="{}">', page.refresh)
        if page.refresh > 0
        else NOTHING,
        markup("<title>mcpserver {}</title>", title),
        markup("<style>{}</style></head><body>", STYLE),
        markup(
            '<h1>mcpserver <span class="muted">{}</span> <span id="readiness">{}</span></h1>',
            page.version,
            state,
        ),
        markup(
            '<div class="bar muted">page at {} &middot; {} &middot; up since {}</div>',
            when(now, now),
            auto,
            when(page.started_at, now),
        ),
        _registries(page),
        _snapshot(page),
        _shards(page),
        _clients(page),
        _problems(page),
        Html('<h2>JSON</h2><p id="links">'),
        _links(),
        Html("</p></body></html>"),
    ]
    return "\n".join(p for p in parts if p)


def _links() -> Html:
    """Every JSON endpoint the table links, its description on hover."""
    return join(
        " &middot; ",
        (
            markup('<a href="{}" title="{}">{}</a>', href, endpoint.description, text)
            for endpoint in ENDPOINTS
            for href, text in endpoint.links
        ),
    )


def _registries(page: Page) -> Html:
    rows = []
    for r in page.registries:
        status = badge(r.status, r.status)
        detail = escape(r.detail)
        if r.held is not None:
            h = r.held
            status = markup("{} {}", badge("degraded", "degraded"), badge("removal held", "held"))
            origin = (
                NOTHING if r.origin in ("", "own") else markup(" (taken over from {})", r.origin)
            )
            detail = markup(
                "{}<br><span class='muted'>held since {}{}: {} services and {} of {} instances "
                "would go. Confirm with <code>curl -X POST {}/debug/registries/{}/confirm</code>"
                "</span>{}",
                h.reason,
                when(h.since, page.now),
                origin,
                h.removed_services,
                h.removed_instances,
                h.instances,
                page.admin_url,
                r.name,
                markup("<br>source: {}", r.detail) if r.detail else NOTHING,
            )
        services, instances = escape(r.services), escape(r.instances)
        if r.listed is not None:
            services = markup('{} <span class="muted">(lists {})</span>', r.services, r.listed[0])
            instances = markup('{} <span class="muted">(lists {})</span>', r.instances, r.listed[1])
        rows.append(
            markup(
                '<tr id="registry-{}" data-status="{}"><td><b>{}</b>{}</td><td>{}</td><td>{}{}</td>'
                '<td class="n">{}</td><td class="n">{}</td><td>{}</td><td class="detail">{}</td>'
                "</tr>",
                r.name,
                "held" if r.held else r.status,
                r.name,
                markup("<br><span class=muted>{}</span>", r.source) if r.source else NOTHING,
                r.kind,
                status,
                NOTHING if r.synced else Html(" <span class=muted>(listing)</span>"),
                services,
                instances,
                when(r.last_change, page.now),
                detail,
            )
        )
    body = join("", rows) or Html('<tr><td colspan="7" class="muted">no registries</td></tr>')
    return markup(
        '<h2>Registries ({})</h2><table id="registries"><tr><th>name</th><th>kind</th>'
        "<th>status</th><th>services served</th><th>instances served</th><th>last change</th>"
        "<th>detail / last error</th></tr>{}</table>",
        len(page.registries),
        body,
    )


def _snapshot(page: Page) -> Html:
    snapshot = page.snapshot
    if snapshot is None:
        return markup(
            '<h2>Snapshot</h2><p id="snapshot">{} no snapshot yet: istiod is answered nothing '
            "until every registry has listed (see readiness above)</p>",
            badge("waiting", "waiting"),
        )
    rows = join(
        "",
        (
            markup(
                '<tr data-kind="{}"><td>{}</td><td>{}</td><td class="n">{}</td></tr>',
                kind,
                kind,
                short(s.version),
                len(s.resources),
            )
            for kind, s in snapshot.sets.items()
        ),
    )
    change = (
        markup(
            '<p class="detail">last change: <span id="last-change">{}</span></p>',
            page.last_change,
        )
        if page.last_change
        else NOTHING
    )
    return markup(
        '<h2>Snapshot</h2><div id="snapshot"><p>version {}, published {}</p>'
        "<table><tr><th>kind</th><th>version</th><th>resources</th></tr>{}</table>{}</div>",
        short(snapshot.version),
        when(page.published_at, page.now),
        rows,
        change,
    )


def _shards(page: Page) -> Html:
    """Each shard's port, set versions and sizes, and readers (nothing when unsharded)."""
    if not page.shards:
        return NOTHING
    kinds = list(page.snapshot.sets) if page.snapshot is not None else [SERVICE_ENTRY]
    head = join("", (markup("<th>{}</th>", kind) for kind in kinds))
    rows = []
    for shard in page.shards:
        sets = shard.snapshot.sets if shard.snapshot is not None else {}
        cells = join(
            "",
            (
                markup('<td class="n">{}</td>', len(sets[kind].resources))
                if kind in sets
                else Html('<td class="muted">-</td>')
                for kind in kinds
            ),
        )
        version = short(shard.snapshot.version) if shard.snapshot is not None else "-"
        rows.append(
            markup(
                '<tr data-shard="{}"><td>{}</td><td>{}</td><td>{}</td>{}<td class="n">{}</td></tr>',
                shard.label,
                shard.label,
                shard.port,
                version,
                cells,
                shard.clients,
            )
        )
    return markup(
        '<h2>Shards ({})</h2><p class="muted">the whole set is also served on server.listen; '
        "each istiod lists one configSources entry per shard of server.shards "
        '(<code>mcpserver mesh-config</code>)</p><table id="shards"><tr><th>shard</th>'
        "<th>port</th><th>version</th>{}<th>istiods</th></tr>{}</table>",
        len(page.shards),
        head,
        join("", rows),
    )


def _acked(client: ClientInfo, url: str, now: float) -> Html:
    """What istiod made of the last response of one type: ACKed, NACKed, pending, stuck."""
    s = client.types[url]
    if not s.version:
        return badge("waiting", "waiting")
    if not client.awaits_ack(url):
        return Html('<span class="muted">not ACKed by istiod</span>')
    if s.acked == s.version:
        shown = badge("ACKed", "ok")
    elif s.nacked == s.version:
        shown = badge("NACKed", "bad")
    elif client.lag(url, now) >= LATE_ACK:
        # istiod takes a set in well under a second: this one is stuck
        shown = badge("not ACKed", "held")
    else:
        shown = badge("pending", "waiting")
    return markup("{} {}", short(s.acked), shown)


def _client_types(client: ClientInfo, now: float, served: set[str]) -> Html:
    rows = []
    quiet = 0
    for url, s in client.types.items():
        nack = client.nacks.get(url)
        in_sync = bool(s.version) and (s.acked == s.version or not client.awaits_ack(url))
        if type_name(url) not in served and in_sync and nack is None:
            quiet += 1  # an empty type ACKed (or MeshConfig, never ACKed): nothing to see
            continue
        lag = client.lag(url, now)
        nack_text = (
            markup(
                "{} {} {}: <span class='detail'>{}</span>",
                badge("NACK", "bad"),
                short(nack.version),
                when(nack.at, now),
                nack.message,
            )
            if nack is not None
            else Html('<span class="muted">-</span>')
        )
        rows.append(
            markup(
                '<tr data-type="{}" data-sent="{}" data-acked="{}"><td title="{}">{}</td>'
                "<td>{} {}</td><td>{}</td><td class='n'>{}</td><td>{}</td></tr>",
                url,
                s.version,
                s.acked,
                url,
                type_name(url),
                short(s.version),
                when(client.sent_at.get(url), now) if url in client.sent_at else NOTHING,
                _acked(client, url, now),
                f"{lag:.1f}s" if lag else "0",
                nack_text,
            )
        )
    if quiet:
        rows.append(
            markup(
                '<tr><td colspan="5" class="muted">{} other types: empty sets, in sync</td></tr>',
                quiet,
            )
        )
    return markup(
        "<table><tr><th>type</th><th>version sent</th><th>version ACKed</th><th>lag</th>"
        "<th>last NACK</th></tr>{}</table>",
        join("", rows),
    )


def _clients(page: Page) -> Html:
    served = set(page.snapshot.sets) if page.snapshot is not None else {SERVICE_ENTRY}
    blocks = [
        markup(
            '<div class="client" id="client-{}"><b>node</b> <code class="node">{}</code> '
            "&middot; <b>peer</b> <code>{}</code> &middot; {}stream {} &middot; connected {} "
            "&middot; {} responses{}</div>",
            c.stream_id,
            c.node_id or "(not sent yet)",
            c.peer,
            NOTHING if c.shard == WHOLE else markup("shard <code>{}</code> &middot; ", c.shard),
            c.stream_id,
            when(c.connected_at, page.now),
            c.responses,
            _client_types(c, page.now, served),
        )
        for c in page.clients
    ]
    body = join("", blocks) or Html(
        '<p class="muted">no istiod connected (istiod dials us: check meshConfig.configSources)</p>'
    )
    return markup(
        '<h2>Connected istiods ({})</h2><div id="clients">{}</div>', len(page.clients), body
    )


def _problems(page: Page) -> Html:
    if not page.problems:
        return Html(
            '<h2 id="problems-heading">Problems (0)</h2><p id="problems" class="muted">none</p>'
        )
    rows = join(
        "",
        (
            markup(
                '<tr><td>{}</td><td>{}</td><td class="detail">{}</td></tr>',
                p.registry or "-",
                p.subject,
                p.message,
            )
            for p in page.problems
        ),
    )
    return markup(
        '<h2 id="problems-heading">Problems ({})</h2><table id="problems"><tr><th>registry</th>'
        "<th>subject</th><th>problem</th></tr>{}</table>",
        len(page.problems),
        rows,
    )
