"""Pure parsing of Dubbo's interface-level registration: `/ROOT/<interface>/providers/<URL>`.

Each provider is one znode whose name is a URL-encoded URL such as
`dubbo://10.0.0.5:20880/org.apache.dubbo.demo.DemoService?application=demo&side=provider&...`.
Anything that is not such a URL is rejected with a reason; the caller skips and counts it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

MAX_NODE_NAME = 8192  # a provider URL is a few hundred bytes; ZooKeeper allows much more


class RecordError(ValueError):
    """A registry record that cannot be used; the message says why, in a few words."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Provider:
    """One Dubbo provider URL, reduced to what the mesh needs."""

    protocol: str
    host: str
    port: int
    interface: str
    params: tuple[tuple[str, str], ...]

    def param(self, key: str, default: str = "") -> str:
        for k, v in self.params:
            if k == key:
                return v
        return default

    @property
    def group(self) -> str:
        return self.param("group")

    @property
    def version(self) -> str:
        return self.param("version")

    @property
    def enabled(self) -> bool:
        """Dubbo's own switches: `enabled=false` or `disabled=true` take a provider out."""
        return (
            self.param("enabled", "true").lower() != "false"
            and self.param("disabled", "false").lower() != "true"
        )


def check_host(host: str) -> str:
    """An IPv4/IPv6 literal (brackets already stripped by urlsplit)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise RecordError("bad-address", f"{host!r} is not an IP address") from None


def parse_provider(node_name: str) -> Provider:
    """A provider znode name to a Provider, or RecordError."""
    if len(node_name) > MAX_NODE_NAME:
        raise RecordError("too-long", f"{len(node_name)} characters")
    text = unquote(node_name)
    if "://" not in text:
        raise RecordError("not-a-url", repr(text[:80]))
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as err:
        raise RecordError("bad-port", str(err)) from None
    if not parts.scheme or not parts.hostname:
        raise RecordError("not-a-url", repr(text[:80]))
    if port is None or not 0 < port < 65536:
        raise RecordError("bad-port", f"port {port!r}")
    params = tuple(parse_qsl(parts.query, keep_blank_values=True))
    path = parts.path.strip("/")
    interface = dict(params).get("interface") or path
    if not interface:
        raise RecordError("no-interface", repr(text[:80]))
    return Provider(
        protocol=parts.scheme.lower(),
        host=check_host(parts.hostname),
        port=port,
        interface=interface,
        params=params,
    )


# Dubbo protocol -> (Istio port name prefix, Istio protocol). dubbo:// is a binary protocol over
# TCP; tri:// (Triple) is gRPC-compatible HTTP/2.
PROTOCOLS = {
    "dubbo": ("tcp-dubbo", "TCP"),
    "tri": ("grpc-tri", "GRPC"),
    "grpc": ("grpc", "GRPC"),
    "rest": ("http-rest", "HTTP"),
    "http": ("http", "HTTP"),
    "https": ("https", "HTTPS"),
    "hessian": ("http-hessian", "HTTP"),
}


def istio_port(protocol: str) -> tuple[str, str]:
    """The port name and Istio protocol for a Dubbo protocol."""
    if protocol in PROTOCOLS:
        return PROTOCOLS[protocol]
    return (f"tcp-{protocol}"[:63].rstrip("-"), "TCP")
