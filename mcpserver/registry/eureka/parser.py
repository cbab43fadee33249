"""Pure reading of Eureka's documents and their conversion into Services.

Eureka answers `GET /eureka/apps` (every application) and `GET /eureka/apps/delta` (what was
ADDED, MODIFIED or DELETED in the last ~3 minutes) with the same shape, asked as JSON
(`Accept: application/json`):

    {"applications": {"apps__hashcode": "UP_2_", "application": [
        {"name": "ORDERS", "instance": [{"instanceId": ..., "app": "ORDERS",
         "ipAddr": "10.0.0.1", "hostName": ..., "status": "UP", "actionType": "ADDED",
         "port": {"$": 8080, "@enabled": "true"}, "securePort": {"$": 443, "@enabled": "false"},
         "vipAddress": "orders", "metadata": {"zone": "zone-a"}, ...}]}]}}

We keep a mirror of every instance, whatever its status, as Eureka's Java client does
(`DiscoveryClient`): a full fetch replaces it, a delta is merged into it (ADDED and MODIFIED
replace the instance by id, DELETED removes it), and after each merge the mirror's
reconcile hash must equal the server's `apps__hashcode`, else the merge missed something and
the client fetches everything again. The hash (`Applications.getReconcileHashCode`) counts
instances per status, statuses sorted by name, each written `STATUS_count_`: `DOWN_1_UP_3_`.
So the mirror must hold instances of every status; which ones we serve is decided only when
converting.

Mapping (docs/configuration.md "Eureka registry"):
- only instances whose status is in `statuses` (default UP) are endpoints;
- host from `host_template` (default `{app}.eureka`; `{vip}` renders one host per VIP of an
  instance's comma-separated `vipAddress`), lower-cased and DNS-1123 sanitised; one
  ServiceEntry per host;
- the non-secure port when enabled (protocol from metadata `protocol`, else
  `default_protocol`, HTTP by default) and the secure port when enabled (HTTPS); each service
  port numbered by the port most instances use (a tie: not Eureka's default 7001/7002, which
  is what Eureka records for a client that gave no port, then the lowest), the others
  keeping theirs;
- a disabled port is never an endpoint's: Istio gives every endpoint of a ServiceEntry every
  port of it, so when the instances of a host enable different ports, the host is split by
  port set: its ServiceEntry (`<host>`) has every port and the instances that enable them
  all, and one more ServiceEntry per other set (`<host>.only-https`) has that set's ports and
  instances, created a second later and marked as a part of the first
  (`Service.shares_host_with`). istiod joins them: one service with the first one's ports,
  each endpoint on the ports of its own ServiceEntry;
- the address is `ipAddr` (or `hostName` when that is the IP): an instance that has no IP
  address is skipped and counted (`not-an-ip`), the rest of its application flows;
- metadata become labels (sanitised), `zone` metadata (or an AWS data center's
  availability zone) the locality's zone, `weight` metadata the endpoint weight (0: left out);
- `create_time` is 2000-01-01: Eureka's registration times differ per peer and per restart,
  and VIPs must be the same on every replica.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from mcpserver.convert.labels import DEFAULT_MAPPER, Mapper
from mcpserver.convert.naming import sanitize_host, sanitize_label_value
from mcpserver.convert.ports import METADATA, istio_port
from mcpserver.model import EPOCH_2000, Instance, Port, Problem, Service

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"
EUREKA_DEFAULT_PORTS = frozenset([7001, 7002])
"""What Eureka records for an instance registered without a port (InstanceInfo's defaults,
non-secure and secure): a port number that says nothing, so it loses a tie."""
PART_DELAY = timedelta(seconds=1)
"""How much later than its host's ServiceEntry a part with fewer ports is created: istiod
takes the oldest ServiceEntry of a host as the service."""
MAX_WEIGHT = 2**32 - 1  # Istio's weight is a uint32
SECURE = ("https", "HTTPS")

Mirror = dict[str, dict[str, "EurekaInstance"]]
"""Every instance the server holds: app name -> instance id -> instance."""


@dataclass(frozen=True, slots=True)
class EurekaOptions:
    registry: str
    namespace: str  # the Istio namespace of the resources
    host_template: str
    statuses: frozenset[str]
    default_protocol: str
    region: str
    endpoints_mode: str
    labels: Mapper = DEFAULT_MAPPER  # metadata -> endpoint labels (convert/labels.py)


@dataclass(frozen=True, slots=True)
class EurekaInstance:
    """One instance as the mirror keeps it. A record that names its app, id and status is
    mirrored even when it cannot be served (`flaw`), so the reconcile hash counts it as the
    server does."""

    app: str
    id: str
    status: str
    ip: str
    host_name: str
    port: int | None  # the non-secure port, None if disabled
    secure_port: int | None  # the secure port, None if disabled
    vips: tuple[str, ...]
    metadata: tuple[tuple[str, str], ...]
    zone: str
    weight: int | None  # from `weight` metadata
    flaw: tuple[str, str] | None = None  # (reason, detail): why it cannot be served


@dataclass(frozen=True, slots=True)
class Document:
    """One /apps or /apps/delta answer: the server's hash, each instance with its action,
    and the records that could not be read at all."""

    hashcode: str
    changes: tuple[tuple[str, EurekaInstance], ...]
    problems: tuple[Problem, ...]


class DocumentError(ValueError):
    """An answer that is not an Eureka applications document."""


# ------------------------------------------------------------------------------ reading


def _listed(value: object) -> list[object]:
    """Eureka's JSON writes a list, but its older (XStream) codec wrote a lone element as
    the element itself, and an empty list as nothing."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


def _port(raw: object, default_enabled: bool) -> tuple[int | None, str]:
    """(number or None when disabled, error) of `{"$": 8080, "@enabled": "true"}`."""
    enabled = default_enabled
    number: object = raw
    if isinstance(raw, Mapping):
        flag = raw.get("@enabled", default_enabled)
        enabled = flag is True or str(flag).lower() == "true"
        number = raw.get("$")
    if not enabled or raw is None:
        return None, ""
    if isinstance(number, str) and number.strip().isdigit():
        number = int(number)
    if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < 65536:
        return None, f"port {number!r}"
    return number, ""


def _weight(raw: str | None) -> tuple[int | None, str]:
    if raw is None:
        return None, ""
    text = raw.strip()
    if not text.isdigit() or int(text) > MAX_WEIGHT:
        return None, f"weight {raw!r} (a whole number from 0)"
    return int(text), ""


def _zone(raw: Mapping[str, object], metadata: Mapping[str, str]) -> str:
    zone = metadata.get("zone", "")
    if not zone:
        info = raw.get("dataCenterInfo")
        aws = info.get("metadata") if isinstance(info, Mapping) else None
        if isinstance(aws, Mapping):
            zone = str(aws.get("availability-zone") or "")
    return zone


def parse_instance(raw: object, app_name: str = "") -> EurekaInstance:
    """One `instance` object; DocumentError if it names no app, id or status."""
    if not isinstance(raw, Mapping):
        raise DocumentError("instance is not an object")
    app = str(raw.get("app") or app_name).upper()  # Eureka upper-cases app names
    host_name = str(raw.get("hostName") or "")
    ident = str(raw.get("instanceId") or host_name)  # InstanceInfo.getId()
    status = raw.get("status")
    if not app or not ident or not isinstance(status, str) or not status:
        raise DocumentError("instance without app, instanceId/hostName or status")
    meta_raw = raw.get("metadata") or {}
    metadata = (
        {str(k): str(v) for k, v in meta_raw.items() if not str(k).startswith("@")}
        if isinstance(meta_raw, Mapping)
        else {}
    )
    port, port_error = _port(raw.get("port"), True)
    secure_port, secure_error = _port(raw.get("securePort"), False)
    weight, weight_error = _weight(metadata.get("weight"))
    flaw = None
    if port_error or secure_error:
        flaw = ("bad-port", port_error or secure_error)
    elif weight_error:
        flaw = ("bad-weight", weight_error)
    vips = tuple(v.strip() for v in str(raw.get("vipAddress") or "").split(",") if v.strip())
    return EurekaInstance(
        app=app,
        id=ident,
        status=status.upper(),
        ip=str(raw.get("ipAddr") or ""),
        host_name=host_name,
        port=port,
        secure_port=secure_port,
        vips=vips,
        metadata=tuple(sorted(metadata.items())),
        zone=_zone(raw, metadata),
        weight=weight,
        flaw=flaw,
    )


def parse_document(body: object, registry: str) -> Document:
    """An /apps or /apps/delta answer; DocumentError if it is not one at all. A record that
    cannot be read is a Problem, and the others are read."""
    root = body.get("applications") if isinstance(body, Mapping) else None
    if not isinstance(root, Mapping):
        raise DocumentError("answer without `applications`")
    hashcode = root.get("apps__hashcode")
    changes: list[tuple[str, EurekaInstance]] = []
    problems: list[Problem] = []
    for app in _listed(root.get("application")):
        if not isinstance(app, Mapping):
            problems.append(Problem(registry, "?", "application is not an object", "bad-json"))
            continue
        name = str(app.get("name") or "")
        for raw in _listed(app.get("instance")):
            try:
                instance = parse_instance(raw, name)
            except DocumentError as err:
                ident = raw.get("instanceId") if isinstance(raw, Mapping) else None
                subject = f"{name or '?'}/{ident or '?'}"
                problems.append(Problem(registry, subject, str(err), "bad-json"))
                continue
            action = raw.get("actionType") if isinstance(raw, Mapping) else None
            changes.append((str(action or ADDED).upper(), instance))
    return Document(
        hashcode=hashcode if isinstance(hashcode, str) else "",
        changes=tuple(changes),
        problems=tuple(problems),
    )


# ----------------------------------------------------------------------- the mirror


def mirror_of(document: Document) -> Mirror:
    """The mirror a full fetch gives (its instances' actions do not matter)."""
    mirror: Mirror = {}
    for _, instance in document.changes:
        mirror.setdefault(instance.app, {})[instance.id] = instance
    return mirror


def merge(mirror: Mirror, document: Document) -> set[str]:
    """Merge a delta into the mirror, as the Java client's `updateDelta` does: ADDED and
    MODIFIED put the instance (replacing one with its id), DELETED removes it. Returns the
    apps it touched. An unknown action changes nothing."""
    touched: set[str] = set()
    for action, instance in document.changes:
        if action in (ADDED, MODIFIED):
            mirror.setdefault(instance.app, {})[instance.id] = instance
        elif action == DELETED:
            app = mirror.get(instance.app)
            if app is None or app.pop(instance.id, None) is None:
                continue
            if not app:
                del mirror[instance.app]
        else:
            continue
        touched.add(instance.app)
    return touched


def reconcile_hash(mirror: Mirror) -> str:
    """Eureka's `Applications.getReconcileHashCode()` of the mirror: instances counted per
    status, statuses in name order, each `STATUS_count_` (empty for no instances)."""
    counts = Counter(i.status for app in mirror.values() for i in app.values())
    return "".join(f"{status}_{counts[status]}_" for status in sorted(counts))


# ---------------------------------------------------------------------- conversion


@dataclass(frozen=True, slots=True)
class _Member:
    instance: EurekaInstance
    address: str
    ports: tuple[tuple[str, str, int], ...]  # (port name, Istio protocol, number)


def address_of(instance: EurekaInstance) -> str:
    """The instance's IP: `ipAddr`, or `hostName` when that is the IP (prefer-ip-address
    clients); ValueError if neither is one."""
    for candidate in (instance.ip, instance.host_name):
        try:
            return str(ipaddress.ip_address(candidate.strip("[]")))
        except ValueError:
            continue
    raise ValueError(
        f"no IP address (ipAddr {instance.ip!r}, hostName {instance.host_name!r}); "
        "mcpserver serves IP endpoints only"
    )


def _ports(options: EurekaOptions, instance: EurekaInstance) -> tuple[tuple[str, str, int], ...]:
    ports: list[tuple[str, str, int]] = []
    if instance.port is not None:
        raw = (dict(instance.metadata).get("protocol") or options.default_protocol).lower()
        # an Istio protocol by its name, any other word TCP (no Dubbo table: `tri` on
        # Eureka is whatever the application meant, not Dubbo's Triple)
        name, protocol = istio_port(raw, METADATA)
        ports.append((name, protocol, instance.port))
    # one port number is one ServiceEntry port: a securePort equal to the port (both enabled)
    # is the same listener, kept once, as the non-secure one
    if instance.secure_port is not None and instance.secure_port != instance.port:
        name = SECURE[0] if not ports or ports[0][0] != SECURE[0] else "https-secure"
        ports.append((name, SECURE[1], instance.secure_port))
    return tuple(ports)


def _labels(options: EurekaOptions, instance: EurekaInstance) -> tuple[tuple[str, str], ...]:
    return options.labels(instance.metadata)


def hosts_of(options: EurekaOptions, instance: EurekaInstance) -> list[str]:
    """The hosts an instance serves: one per VIP when the template uses `{vip}`."""
    app = instance.app.lower()
    vips = instance.vips or (app,)
    if "{vip}" not in options.host_template:
        vips = vips[:1]
    return sorted({sanitize_host(options.host_template.format(app=app, vip=v)) for v in vips})


def served(
    options: EurekaOptions, instances: Iterable[EurekaInstance]
) -> tuple[list[_Member], list[Problem]]:
    """The instances of one app to serve (status wanted, weight above 0) and those skipped."""
    members: list[_Member] = []
    problems: list[Problem] = []
    for instance in sorted(instances, key=lambda i: i.id):
        if instance.status not in options.statuses:
            continue
        subject = f"{instance.app}/{instance.id}"
        if instance.flaw is not None:
            reason, detail = instance.flaw
            problems.append(Problem(options.registry, subject, f"{reason}: {detail}", reason))
            continue
        if instance.weight == 0:
            continue  # weight 0: send nothing here
        try:
            address = address_of(instance)
        except ValueError as err:
            problems.append(Problem(options.registry, subject, str(err), "not-an-ip"))
            continue
        ports = _ports(options, instance)
        if not ports:
            problems.append(
                Problem(options.registry, subject, "neither port nor securePort enabled", "no-port")
            )
            continue
        members.append(_Member(instance, address, ports))
    return members, problems


def convert_app(
    options: EurekaOptions, app: str, instances: Iterable[EurekaInstance]
) -> tuple[list[Service], list[Problem]]:
    """One Eureka application's instances to its Services (one per host) and the records
    skipped."""
    members, problems = served(options, instances)
    by_host: dict[str, list[_Member]] = {}
    for member in members:
        for host in hosts_of(options, member.instance):
            by_host.setdefault(host, []).append(member)
    services = [
        service
        for host, group in sorted(by_host.items())
        for service in _services(options, app, host, group)
    ]
    return services, problems


def rank_ports(counts: Counter[int]) -> list[int]:
    """Port numbers in the order they claim a service port: the one most instances use
    first; of a tie, a port other than Eureka's defaults (7001, 7002: what Eureka records
    when a client gave none), then the lowest."""
    return sorted(counts, key=lambda n: (-counts[n], n in EUREKA_DEFAULT_PORTS, n))


def _services(
    options: EurekaOptions, app: str, host: str, members: Sequence[_Member]
) -> list[Service]:
    """The ServiceEntries of one host: one with every port, and a part with fewer ports
    for each other set of ports its instances enable (see the module docstring)."""
    counts: dict[str, Counter[int]] = {}
    protocols: dict[str, str] = {}
    for member in members:
        for name, protocol, number in member.ports:
            counts.setdefault(name, Counter())[number] += 1
            protocols[name] = protocol
    # each port numbered by rank_ports; two names on one number would be an invalid
    # ServiceEntry (istiod: "port already defined"), so the first name in order keeps it
    # and the other's endpoints keep their own number
    numbers: dict[str, int] = {}
    for name in sorted(counts):
        taken = set(numbers.values())
        free = [number for number in rank_ports(counts[name]) if number not in taken]
        if free:
            numbers[name] = free[0]
    by_set: dict[frozenset[str], list[_Member]] = {}
    for member in members:
        names = frozenset(name for name, _, _ in member.ports if name in numbers)
        if names:  # else its only port's name lost its number: nothing to reach
            by_set.setdefault(names, []).append(member)
    everything = frozenset(numbers)
    main = _service(options, app, host, host, everything, numbers, protocols, by_set)
    parts = [
        replace(
            _service(
                options,
                app,
                host,
                f"{host}.only-{'-'.join(sorted(names))}",
                names,
                numbers,
                protocols,
                by_set,
            ),
            create_time=EPOCH_2000 + PART_DELAY,
            shares_host_with=main.key,
            annotations=(("mcpserver.io/eureka-app", app), ("mcpserver.io/part-of", main.key)),
        )
        for names in sorted(by_set, key=sorted)
        if names != everything
    ]
    return [main, *parts]


def _service(
    options: EurekaOptions,
    app: str,
    host: str,
    name: str,
    names: frozenset[str],
    numbers: Mapping[str, int],
    protocols: Mapping[str, str],
    by_set: Mapping[frozenset[str], Sequence[_Member]],
) -> Service:
    """One ServiceEntry of `host`: the ports `names`, the instances enabling exactly those."""
    by_key: dict[str, Instance] = {}
    members = by_set.get(names, ())
    for member in sorted(members, key=lambda m: (m.address, m.ports, m.instance.id)):
        own = {port: number for port, _, number in member.ports if port in names}
        first = min(own.values())
        # several instances on one host (another port each) are several endpoints
        key = member.address if member.address not in by_key else f"{member.address}:{first}"
        zone = member.instance.zone
        by_key.setdefault(
            key,
            Instance(
                address=member.address,
                ports=tuple(sorted((n, p) for n, p in own.items() if numbers[n] != p)),
                labels=_labels(options, member.instance),
                weight=member.instance.weight or 0,
                locality=f"{options.region}/{zone}" if zone and options.region else zone,
            ),
        )
    return Service(
        registry=options.registry,
        namespace=options.namespace,
        name=name,
        hosts=(host,),
        ports=tuple(Port(n, numbers[n], protocols[n]) for n in sorted(names)),
        instances=tuple(by_key[k] for k in sorted(by_key)),
        labels=(("eureka-app", sanitize_label_value(app.lower()) or "x"),),
        annotations=(("mcpserver.io/eureka-app", app),),
        endpoints_mode=options.endpoints_mode,
        create_time=EPOCH_2000,
    )
