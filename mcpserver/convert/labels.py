"""Which registry metadata become endpoint labels, and how many: one rule for every kind.

Registries carry metadata of every sort (a Spring Boot app's Eureka metadata, Consul tags and
service meta, Nacos instance metadata, Cloud Map attributes, Dubbo URL parameters), and every
kind maps it to endpoint labels the same way, so DestinationRule subsets can select on it.
Unbounded, one instance with 500 metadata keys became an endpoint with 500 labels, copied into
every istiod and every sidecar that reads the service. A rule bounds it per registry:

- `allow`: glob patterns of label keys (as they appear on the endpoint, after sanitising);
  `["*"]` by default, so nothing a DestinationRule may use today is dropped on upgrade;
- `max_count`: labels from metadata per endpoint (32); past it, the keys Istio and routing
  rely on (`PRIORITY`: `version`, `app`, Istio's own label keys, the Dubbo parameters
  docs/configuration.md names, `zone`) go first, then the others in key order, so the cut is
  the same on every replica;
- `max_size`: a key name or value longer than this (63, Kubernetes' own limit) is dropped,
  not cut and hashed into a value nobody wrote.

Pure: `apply()` returns the labels and what it dropped (key, reason); the registry reports
each dropped key once (registry/labels.py). Cached by (rule, metadata): one provider's
parameters are mapped once however many rebuilds read them.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable
from dataclasses import dataclass

from mcpserver.convert.naming import sanitize_label_key, sanitize_label_value
from mcpserver.model import Labels

PRIORITY = (
    "version",
    "app",
    "security.istio.io/tlsMode",
    "service.istio.io/canonical-name",
    "service.istio.io/canonical-revision",
    "topology.istio.io/network",
    "topology.istio.io/subzone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "group",
    "application",
    "revision",
    "release",
    "zone",
)
"""Kept ahead of other keys when an endpoint has more than `max_count`: what Istio reads
(telemetry's app/version, mTLS mode, locality, network) and what docs/configuration.md's
examples route by."""
_RANK = {key: rank for rank, key in enumerate(PRIORITY)}

NOT_ALLOWED = "not-allowed"
TOO_LONG = "too-long"
TOO_MANY = "too-many"

Pairs = tuple[tuple[str, str], ...]
Dropped = tuple[tuple[str, str], ...]
"""(label key, reason) of each metadata key that did not become a label."""


@dataclass(frozen=True, slots=True)
class LabelRule:
    allow: tuple[str, ...] = ("*",)
    max_count: int = 32
    max_size: int = 63

    def allows(self, key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.allow)


DEFAULT_RULE = LabelRule()


@functools.lru_cache(maxsize=65536)
def apply(rule: LabelRule, pairs: Pairs) -> tuple[Labels, Dropped]:
    """(labels, dropped) for one endpoint's metadata; an empty value (after sanitising)
    makes no label and is not counted as dropped (as before the rule)."""
    kept: dict[str, str] = {}
    dropped: list[tuple[str, str]] = []
    for key, value in pairs:
        if len(key.rpartition("/")[2]) > rule.max_size or len(value) > rule.max_size:
            dropped.append((sanitize_label_key(key[:200]), TOO_LONG))
            continue
        clean = sanitize_label_value(value)
        if not clean:
            continue
        label = sanitize_label_key(key)
        if not rule.allows(label):
            dropped.append((label, NOT_ALLOWED))
            continue
        kept[label] = clean
    if len(kept) > rule.max_count:
        order = sorted(kept, key=lambda k: (_RANK.get(k, len(PRIORITY)), k))
        for label in order[rule.max_count :]:
            del kept[label]
            dropped.append((label, TOO_MANY))
    return tuple(sorted(kept.items())), tuple(dropped)


Mapper = Callable[[Pairs], Labels]
"""What a parser calls with an endpoint's metadata pairs to get its labels."""


def silently(rule: LabelRule = DEFAULT_RULE) -> Mapper:
    """A mapper that drops what the rule drops and tells nobody (tests, offline checks)."""
    return lambda pairs: apply(rule, pairs)[0]


DEFAULT_MAPPER: Mapper = silently()
