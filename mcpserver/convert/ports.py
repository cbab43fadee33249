"""Which Istio port a registry's protocol word becomes: the port's name and its protocol.

Registries carry a service's protocol as free text: Nacos and Eureka `protocol` metadata, a
Consul `protocol` meta or tag, the scheme of a Dubbo URL, a Cloud Map attribute. Each kind
maps it through the tables here, so the same word gets the same port wherever it was
registered, and the fallback for a word no table knows is written once.

Not in naming.py: that module is the syntax of names Istio accepts; this one is what a
protocol means to Istio (which protocol, and which name a port of it carries), and it uses
naming's rules for the fallback name.

The port name is part of every ServiceEntry (and of the endpoints' `ports`): renaming a
port churns every sidecar that uses the service, and two replicas must name it alike, so a
word these tables know is never mapped differently; add words, never change them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from mcpserver.convert.naming import DNS1123_LABEL_MAX, sanitize_label
from mcpserver.convert.validate import PROTOCOLS as ISTIO_PROTOCOLS

IstioPort = tuple[str, str]
"""(port name, Istio protocol): `("grpc-tri", "GRPC")`."""

METADATA: Mapping[str, IstioPort] = MappingProxyType(
    {
        "http": ("http", "HTTP"),
        "http2": ("http2", "HTTP2"),
        "grpc": ("grpc", "GRPC"),
        "https": ("https", "HTTPS"),
        "tls": ("tls", "TLS"),
        "tcp": ("tcp", "TCP"),
        "mongo": ("mongo", "MONGO"),
        "redis": ("redis", "REDIS"),
        "mysql": ("mysql", "MYSQL"),
    }
)
"""A `protocol` word in a registry's metadata (Nacos, Eureka, Consul) that names an Istio
protocol: the port is named by the word itself."""

DUBBO: Mapping[str, IstioPort] = MappingProxyType(
    {
        "dubbo": ("tcp-dubbo", "TCP"),  # a binary protocol over TCP
        "tri": ("grpc-tri", "GRPC"),  # Triple: gRPC-compatible HTTP/2
        "grpc": ("grpc", "GRPC"),
        "rest": ("http-rest", "HTTP"),
        "http": ("http", "HTTP"),
        "https": ("https", "HTTPS"),
        "hessian": ("http-hessian", "HTTP"),
    }
)
"""A Dubbo protocol (a provider URL's scheme, or Dubbo's `protocol` on Nacos)."""

ISTIO: Mapping[str, IstioPort] = MappingProxyType(
    {word: (sanitize_label(word), word.upper()) for word in sorted(ISTIO_PROTOCOLS)}
)
"""Every protocol Istio knows, by its lower-case name (Cloud Map's protocol attribute): the
port named by the word made a DNS-1123 label (`http_proxy` -> `http-proxy`, as istiod
refuses an underscore in a port name)."""


def known_port(protocol: str, *tables: Mapping[str, IstioPort]) -> IstioPort | None:
    """The port of `protocol` in the first of `tables` that knows it; None if none does."""
    for table in tables:
        found = table.get(protocol)
        if found is not None:
            return found
    return None


def other_port(protocol: str) -> IstioPort:
    """A protocol no table knows: TCP, on a port named `tcp-<protocol>` made a DNS-1123
    label (istiod's port name validation must not refuse `e.` or `Thrift`)."""
    return (f"tcp-{sanitize_label(protocol)}"[:DNS1123_LABEL_MAX].rstrip("-"), "TCP")


def istio_port(protocol: str, *tables: Mapping[str, IstioPort]) -> IstioPort:
    """The port of `protocol` in the first of `tables` that knows it, else `other_port`."""
    return known_port(protocol, *tables) or other_port(protocol)


def check_istio_protocol(value: str) -> str:
    """A configured protocol (a registry's `default_protocol` where it must be Istio's), upper
    case; ValueError naming the choices if Istio does not know it. Unchecked, a typo made
    every service relying on it invalid, withheld by validation."""
    if value.lower() not in ISTIO:
        raise ValueError(f"unknown protocol; expected one of {', '.join(sorted(ISTIO))}")
    return value.upper()
