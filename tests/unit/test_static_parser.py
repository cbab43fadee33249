"""The static registry file: per-entry problems, whole-file errors, defaults."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mcpserver.model import EPOCH_2000
from mcpserver.registry.static.parser import StaticFileError, StaticOptions, parse_static

pytestmark = pytest.mark.unit

OPTIONS = StaticOptions("files", "default", "{name}.{namespace}.svc.mesh", "inline")


def test_demo_shape_and_defaults() -> None:
    services, problems = parse_static(
        """
services:
  - name: reviews
    namespace: bookinfo
    host: reviews.bookinfo.mesh
    ports: [{name: http, number: 9080, protocol: HTTP}]
    instances:
      - {address: 10.0.0.11, labels: {version: v1}}
      - {address: 10.0.0.12, ports: {http: 9081}, labels: {version: v2}, weight: 3, locality: us-east/zone-a}
  - name: ratings
    ports: [{name: http, number: 9080}]
    created: 2024-02-03T04:05:06Z
""",
        OPTIONS,
    )
    assert problems == []
    reviews, ratings = services
    assert reviews.hosts == ("reviews.bookinfo.mesh",)
    assert reviews.instances[1].ports == (("http", 9081),)
    assert reviews.instances[1].weight == 3
    assert reviews.create_time == EPOCH_2000
    assert ratings.namespace == "default"
    assert ratings.hosts == ("ratings.default.svc.mesh",)
    assert ratings.ports[0].protocol == "TCP"
    assert ratings.create_time == datetime(2024, 2, 3, 4, 5, 6, tzinfo=UTC)


def test_malformed_entries_are_skipped_with_their_field() -> None:
    services, problems = parse_static(
        """
services:
  - name: good
    ports: [{name: http, number: 80}]
  - name: noports
  - name: badport
    ports: [{name: http, number: eighty}]
  - just a string
  - name: extra
    ports: []
    colour: blue
""",
        OPTIONS,
    )
    assert [s.name for s in services] == ["good"]
    messages = {p.subject: p.message for p in problems}
    assert messages["services[1] (noports)"].startswith("ports: Field required")
    assert messages["services[2] (badport)"].startswith("ports.0.number")
    assert "services[3] (#3)" in messages
    assert messages["services[4] (extra)"].startswith("colour: Extra inputs")


@pytest.mark.parametrize("text", ["services: [", "- a\n- b\n", "services: 3\n"])
def test_unusable_files(text: str) -> None:
    with pytest.raises(StaticFileError):
        parse_static(text, OPTIONS)


def test_empty_file_is_an_empty_registry() -> None:
    assert parse_static("", OPTIONS) == ([], [])
