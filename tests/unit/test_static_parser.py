"""The static registry file: per-entry problems, whole-file errors, defaults."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import mcpserver.registry.static.parser as parser_module
from mcpserver.model import EPOCH_2000
from mcpserver.registry.static.parser import (
    StaticFileError,
    StaticOptions,
    entry_texts,
    parse_static,
)

pytestmark = pytest.mark.unit

OPTIONS = StaticOptions("files", "default", "{name}.{namespace}.svc.mesh", "inline")


def test_demo_shape_and_defaults() -> None:
    parsed = parse_static(
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
    assert parsed.problems == ()
    reviews, ratings = parsed.services
    assert reviews.hosts == ("reviews.bookinfo.mesh",)
    assert reviews.instances[1].ports == (("http", 9081),)
    assert reviews.instances[1].weight == 3
    assert reviews.create_time == EPOCH_2000
    assert ratings.namespace == "default"
    assert ratings.hosts == ("ratings.default.svc.mesh",)
    assert ratings.ports[0].protocol == "TCP"
    assert ratings.create_time == datetime(2024, 2, 3, 4, 5, 6, tzinfo=UTC)


def test_malformed_entries_are_skipped_with_their_field() -> None:
    parsed = parse_static(
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
    assert [s.name for s in parsed.services] == ["good"]
    messages = {p.subject: p.message for p in parsed.problems}
    assert messages["services[1] (noports)"].startswith("ports: Field required")
    assert messages["services[2] (badport)"].startswith("ports[0].number")
    assert "services[3] (#3)" in messages
    assert messages["services[4] (extra)"].startswith("colour: Extra inputs")
    assert parsed.locations == {"default/good": "services[0] (good)"}


def test_every_bad_field_of_an_entry_is_reported() -> None:
    parsed = parse_static(
        """
services:
  - name: huge
    ports: [{name: tcp, number: 4294967296}, {name: t2, number: 0, target_port: 70000}]
    instances: [{address: 10.0.0.1, weight: 99999999999, ports: {tcp: 65536}}]
""",
        OPTIONS,
    )
    assert parsed.services == ()
    fields = sorted(p.message.split(":")[0] for p in parsed.problems)
    assert fields == [
        "instances[0].ports.tcp",
        "instances[0].weight",
        "ports[0].number",
        "ports[1].number",
        "ports[1].target_port",
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("services: [", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("services: 3\n", "must be a list"),
        ("", "empty"),
        ("# only a comment\n", "empty"),
        ("service:\n  - name: a\n", "unknown top-level key 'service'"),
        ("services: []\nextra: 1\n", "unknown top-level key 'extra'"),
        ("{}\n", "no `services` key"),
        ("services:\n", "must be a list"),
    ],
)
def test_unusable_files(text: str, why: str) -> None:
    """Never "zero services" for a file that lost its content or its key."""
    with pytest.raises(StaticFileError, match=why):
        parse_static(text, OPTIONS)


def test_explicit_empty_list_is_no_services() -> None:
    assert parse_static("services: []\n", OPTIONS).services == ()


def test_unchanged_entries_keep_their_service_objects_across_reloads() -> None:
    """Work proportional to what changed: one edited entry is validated again, the others
    keep their Service objects (so the pipeline's identity check skips them)."""
    text = "services:\n" + "".join(
        f"  - {{name: s{i}, ports: [{{name: http, number: 80}}], instances: [{{address: 10.0.0.{i}}}]}}\n"
        for i in range(1, 6)
    )
    first = parse_static(text, OPTIONS)
    edited = text.replace("10.0.0.3", "10.0.9.3")
    second = parse_static(edited, OPTIONS, first.known)
    same = [a is b for a, b in zip(first.services, second.services, strict=True)]
    assert same == [True, True, False, True, True]
    assert second.services[2].instances[0].address == "10.0.9.3"
    assert second.known.keys() != first.known.keys()


def test_json_content_is_read_with_the_same_schema() -> None:
    text = '{"services": [{"name": "j", "ports": [{"name": "http", "number": 80}]}]}'
    assert [s.name for s in parse_static(text, OPTIONS).services] == ["j"]
    # YAML flow style that is not JSON still parses as YAML
    assert [s.name for s in parse_static("{services: []}", OPTIONS).services] == []
    with pytest.raises(StaticFileError, match="unknown top-level key 'extra'"):
        parse_static('{"services": [], "extra": 1}', OPTIONS)


def test_an_entry_that_differs_only_in_a_values_type_is_validated_again() -> None:
    """The reuse key tells 1 from '1': a label value written as a number is malformed even
    after the same entry with a string value was accepted."""
    entry = "services:\n  - {{name: s, ports: [{{name: http, number: 80}}], labels: {{v: {}}}}}\n"
    first = parse_static(entry.format("'1'"), OPTIONS)
    assert [s.name for s in first.services] == ["s"]
    second = parse_static(entry.format("1"), OPTIONS, first.known)
    assert second.services == ()
    assert [p.reason for p in second.problems] == ["malformed"]


PLAIN = """\
# the estate
services:
  - name: a   # first
    ports: [{name: http, number: 80}]
    instances:
      - {address: 10.0.0.1}
      - address: 10.0.0.2
        labels:
          note: |
            - not an item
            services: not a key
# a comment between items, at the left margin
  - {name: b, ports: [{name: http, number: 80}]}

  - name: c
    ports:
    - {name: http, number: 80}
"""


def test_a_plain_file_is_cut_into_one_text_per_entry() -> None:
    pieces = entry_texts(PLAIN)
    assert pieces is not None and len(pieces) == 3
    assert pieces[0].startswith("  - name: a") and "- not an item" in pieces[0]
    assert pieces[1].startswith("  - {name: b")
    assert [s.name for s in parse_static(PLAIN, OPTIONS).services] == ["a", "b", "c"]


@pytest.mark.parametrize(
    "text",
    [
        "services: [{name: a, ports: [{name: http, number: 80}]}]\n",  # flow style
        "services:\n  - {name: a, ports: [{name: http, number: 80}]}\nextra: 1\n",  # other key
        "---\nservices:\n- {name: a, ports: [{name: http, number: 80}]}\n",  # documents
        "services:\n  - {name: a, ports: [{name: http, number: 80}]}\n - {name: b}\n",  # indents
        "services:\n    stray: 1\n  - {name: a, ports: [{name: http, number: 80}]}\n",
        "kind: x\nservices:\n- {name: a}\n",
        "services:\n",
        "services: []\n",
    ],
)
def test_anything_but_the_plain_shape_is_parsed_whole(text: str) -> None:
    assert entry_texts(text) is None


def test_an_anchor_used_across_entries_falls_back_to_the_whole_file() -> None:
    text = (
        "services:\n"
        "  - &base {name: a, ports: [{name: http, number: 80}]}\n"
        "  - {<<: *base, name: b}\n"
    )
    assert entry_texts(text) is not None  # the cut is made, but the second entry needs the first
    assert [(s.name, s.ports[0].number) for s in parse_static(text, OPTIONS).services] == [
        ("a", 80),
        ("b", 80),
    ]


def test_an_edit_parses_only_the_entry_that_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-service edit of a large file reads one entry: the rest are neither parsed nor
    validated (a 10k-service YAML file took 12 s to parse whole)."""
    text = "services:\n" + "".join(
        f"  - name: s{i}\n    ports: [{{name: http, number: 80}}]\n"
        f"    instances: [{{address: 10.0.0.{i}}}]\n"
        for i in range(1, 21)
    )
    first = parse_static(text, OPTIONS)
    parsed: list[str] = []
    real = parser_module._load_entry

    def counting(piece: str) -> object:
        parsed.append(piece)
        return real(piece)

    monkeypatch.setattr(parser_module, "_load_entry", counting)
    edited = text.replace("10.0.0.7}", "10.0.7.7}")
    second = parse_static(edited, OPTIONS, first.known, first.texts)
    assert len(parsed) == 1 and "s7" in parsed[0]
    assert [a is b for a, b in zip(first.services, second.services, strict=True)] == [
        i != 6 for i in range(20)
    ]
    assert second.services[6].instances[0].address == "10.0.7.7"
