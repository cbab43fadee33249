"""What the benchmark's figures rest on, as pure code: a rolling restart's writes are each
observable without ambiguity (the lag of a write is matched to the first sighting of its
address), a rolling restart is bounded, the spread of writes over shards per window is
counted right, and Go's collections are read from istiod's gctrace log."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from bench.istiodcost import collections_in, shares, spread
from bench.workload import ZK_NAMESPACE, address, fresh_address, zk_host
from bench.zkwriter import Rolling
from mcpserver.xds.shards import shard_of

pytestmark = pytest.mark.unit


def test_a_rolling_restart_writes_every_address_once_and_keeps_each_service_up() -> None:
    services, instances, window = 40, 4, 3
    rolling = Rolling(services, instances, window, random.Random(7))
    made = iter(range(10**6))
    live = {s: {address(s, j) for j in range(instances)} for s in range(services)}
    added: Counter[str] = Counter()
    removed: Counter[str] = Counter()
    steps: Counter[int] = Counter()  # writes of each service's current restart
    # more writes than one pass over every service: the second pass replaces the new ones
    for _ in range(3 * services * 2 * instances):
        kind, service, target = rolling.next(lambda: fresh_address(next(made)))
        if kind == "add":
            assert target not in live[service]
            live[service].add(target)
            added[target] += 1
        else:
            assert target in live[service], "a removal names a provider that is there"
            live[service].remove(target)
            removed[target] += 1
        assert len(live[service]) >= instances - 1, "one instance down at a time"
        steps[service] += 1
        if steps[service] == 2 * instances:
            del steps[service]  # this service's restart is done
        assert len(steps) <= window, "a bounded number of services change at once"
    assert max(added.values()) == 1
    assert max(removed.values()) == 1
    assert all(len(a) == instances for a in live.values())


def test_the_spread_counts_distinct_services_and_shards_per_window() -> None:
    def op(service: int, issued: float) -> list[object]:
        return ["add", service, "11.0.0.1", issued, issued, ""]

    # two windows of 0.5 s: services {1, 2, 2} then {3}
    ops = [op(1, 10.0), op(2, 10.1), op(2, 10.4), op(3, 10.6)]
    shard = {s: shard_of(f"{ZK_NAMESPACE}/{zk_host(s)}", 16) for s in (1, 2, 3)}
    found = spread(ops, 16)
    assert found["services_per_window"] == 1.5
    assert found["shards_per_window"] == (len({shard[1], shard[2]}) + 1) / 2
    assert spread(ops, 1)["shards_per_window"] == 1


def test_go_collections_are_read_from_istiods_log() -> None:
    log = (
        "gc 1 @0.011s 3%: 0.048+3.4+0.003 ms clock, 0.097+0.19/0.91/0.44+0.007 ms cpu, "
        "3->4->2 MB, 4 MB goal, 0 MB stacks, 0 MB globals, 2 P\n"
        "2026-01-01T00:00:00.000000Z\tinfo\tads\tPush debounce stable[12] 3 for config\n"
        "gc 2 @5.250s 1%: 0.5+120+0.1 ms clock, 1.0+2.0/230/5.0+0.2 ms cpu, "
        "900->950->480 MB, 960 MB goal, 0 MB stacks, 0 MB globals, 2 P (forced)\n"
    )
    found = collections_in(log)
    assert sorted(found) == [1, 2]
    assert found[1] == pytest.approx(0.097 + 0.19 + 0.91 + 0.44 + 0.007)
    assert found[2] == pytest.approx(1.0 + 2.0 + 230 + 5.0 + 0.2)


def test_where_istiods_cpu_goes_is_read_from_a_cumulative_profile() -> None:
    top = [
        "Showing top 45 nodes out of 273",
        "      flat  flat%   sum%        cum   cum%",
        "         0     0%     0%      8.17s 40.67%  istio.io/istio/pkg/adsc.(*ADSC).handleRecv",
        "         0     0%     0%      7.82s 38.92%  istio.io/istio/pkg/adsc.(*ADSC).handleMCP",
        "     0.01s  0.05%  0.2%      3.82s 19.01%  runtime.gcBgMarkWorker",
        "     0.01s  0.05%  0.2%      3.82s 19.01%  runtime.gcBgMarkWorker.func2",
    ]
    found = shares(top)
    assert found == {
        "adsc.handleMCP (config sources: every resource of each response)": pytest.approx(0.3892),
        "Go garbage collection (background marking)": pytest.approx(0.1901),
    }
