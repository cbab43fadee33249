"""A registry's metadata-to-label rule, with every dropped key reported once.

The rule itself is pure (convert/labels.py); this is the side that tells people: the first
time a key is dropped for a reason, one log line names it and
`mcpserver_registry_dropped_labels_total{registry, reason}` counts it. Later drops of the same
key (on other instances, at later rebuilds) are not counted again, so the counter reads "how
many distinct keys were dropped", and a flood of instances cannot flood the log. Parsers call
it from whichever thread converts (the ZooKeeper assembly runs in worker threads), so the
set of keys already reported is guarded by a lock.
"""

from __future__ import annotations

import logging
import threading

from mcpserver.config import LabelSettings
from mcpserver.convert.labels import NOT_ALLOWED, LabelRule, Pairs, apply
from mcpserver.metrics import Metrics
from mcpserver.model import Labels

log = logging.getLogger("mcpserver.registry")

WHY = {
    NOT_ALLOWED: "not in labels.allow",
    "too-long": "longer than labels.max_size",
    "too-many": "past labels.max_count on an endpoint",
}


def rule_of(settings: LabelSettings) -> LabelRule:
    return LabelRule(tuple(settings.allow), settings.max_count, settings.max_size)


class LabelFilter:
    """A `convert.labels.Mapper` for one registry that reports what it drops, once per key."""

    def __init__(self, registry: str, settings: LabelSettings, metrics: Metrics) -> None:
        self._registry = registry
        self._rule = rule_of(settings)
        self._metrics = metrics
        self._lock = threading.Lock()
        self._reported: set[tuple[str, str]] = set()

    def __call__(self, pairs: Pairs) -> Labels:
        labels, dropped = apply(self._rule, pairs)
        if dropped:
            self._report(dropped)
        return labels

    def _report(self, dropped: tuple[tuple[str, str], ...]) -> None:
        with self._lock:
            new = [d for d in dict.fromkeys(dropped) if d not in self._reported]
            self._reported.update(new)
        for key, reason in new:
            self._metrics.registry_dropped_labels.labels(self._registry, reason).inc()
            level = logging.INFO if reason == NOT_ALLOWED else logging.WARNING
            log.log(
                level,
                "metadata key not made a label registry=%s key=%s: %s (said once per key)",
                self._registry,
                key,
                WHY.get(reason, reason),
            )
