"""What a Dubbo provider is, whichever registry it was read from, and which Istio port each
Dubbo protocol becomes.

ZooKeeper stores a provider as a URL-encoded URL (registry/zookeeper/dubbo.py parses it);
Nacos stores it as an instance (address, port) whose metadata is the URL's parameters. Both
reduce it to the same `Provider`, so one mapping (dubbo/mapping.py) serves both.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from mcpserver.convert import ports


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
    # params by key, the first of a repeated key winning (as a scan of `params` finds it):
    # building a service asks each provider for a dozen params
    lookup: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def param(self, key: str, default: str = "") -> str:
        return self.lookup.get(key, default)

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


@functools.lru_cache(maxsize=65536)
def check_host(host: str) -> str:
    """An IPv4/IPv6 literal (brackets already stripped by urlsplit). Cached: one host
    serves many interfaces, and `ipaddress` is slow to parse."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise RecordError("bad-address", f"{host!r} is not an IP address") from None


def istio_port(protocol: str) -> tuple[str, str]:
    """The port name and Istio protocol for a Dubbo protocol (convert/ports.py's Dubbo
    table); any other protocol is TCP, named `tcp-<protocol>`."""
    return ports.istio_port(protocol, ports.DUBBO)
