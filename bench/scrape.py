"""Reading a process's Prometheus metrics (mcpserver's admin /metrics, istiod's monitoring
port) into plain numbers, so a part can report what a server counted between two moments:
responses per shard, bytes sent, istiod's pushes and inbound updates.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""(sample name, its labels) -> value."""


def scrape(url: str, timeout: float = 10.0) -> Samples:
    """Every sample the endpoint exposes now."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over every sample whose labels include `labels`."""
    wanted = labels.items()
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= dict(ls).items())


def by_label(samples: Samples, name: str, label: str, **labels: str) -> dict[str, float]:
    """`name` summed per value of `label` (over samples whose labels include `labels`)."""
    out: dict[str, float] = {}
    wanted = labels.items()
    for (n, ls), value in samples.items():
        found = dict(ls)
        if n == name and label in found and wanted <= found.items():
            out[found[label]] = out.get(found[label], 0.0) + value
    return out


def delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """Per key, what was counted between two readings (keys of either)."""
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after.keys() | before.keys()}
