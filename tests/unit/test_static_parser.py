"""The static registry file: per-entry problems, whole-file errors, defaults."""

from __future__ import annotations

import copy
import json
import tracemalloc
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import mcpserver.registry.static.parser as parser_module
from mcpserver.model import EPOCH_2000, Instance, Port, Service
from mcpserver.registry.static.parser import (
    StaticFileError,
    StaticOptions,
    StaticService,
    direct_service,
    entry_texts,
    parse_static,
    to_service,
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


# Well-formed entries (every field, optional ones sometimes, values on their bounds), then
# one or two faults put anywhere in them: a value of another type (bool for int, int or
# None for str, a float, a container), out of bounds, a key removed or one added. So each
# check of the direct path meets entries whose every other field is fine.
_WORD = st.sampled_from(["", "reviews", "ns", "a.b.mesh", "HTTP", "v1", "\ud800", "é"])
_PORT_NUMBER = st.sampled_from([1, 80, 9080, 65535])
_GOOD_PORT = st.fixed_dictionaries(
    {"name": _WORD, "number": _PORT_NUMBER},
    optional={"protocol": _WORD, "target_port": st.sampled_from([0, 1, 8080, 65535])},
)
_GOOD_INSTANCE = st.fixed_dictionaries(
    {"address": st.sampled_from(["10.0.0.1", "::1", "", "not-an-ip"])},
    optional={
        "ports": st.dictionaries(_WORD, _PORT_NUMBER, max_size=2),
        "labels": st.dictionaries(_WORD, _WORD, max_size=3),
        "weight": st.sampled_from([0, 1, 2**32 - 1]),
        "locality": _WORD,
        "network": _WORD,
        "service_account": _WORD,
    },
)
_GOOD_ENTRY = st.fixed_dictionaries(
    {"name": _WORD, "ports": st.lists(_GOOD_PORT, max_size=2)},
    optional={
        "namespace": st.one_of(st.none(), _WORD),
        "host": st.one_of(st.none(), _WORD),
        "hosts": st.lists(_WORD, max_size=2),
        "addresses": st.lists(_WORD, max_size=2),
        "instances": st.lists(_GOOD_INSTANCE, max_size=3),
        "labels": st.dictionaries(_WORD, _WORD, max_size=2),
        "export_to": st.lists(_WORD, max_size=2),
        "location": st.sampled_from(["MESH_INTERNAL", "MESH_EXTERNAL"]),
        "resolution": st.sampled_from(["STATIC", "DNS", "DNS_ROUND_ROBIN", "NONE"]),
        "created": st.datetimes(),
    },
)
ODD = [None, True, False, 0, -1, 65536, 2**32, 1.5, 80.0, "80", "", "MESH", [], {}, ["a"], {"a": 1}]
_ODD = st.sampled_from(ODD)
FULL_ENTRY: dict[str, Any] = {
    "name": "reviews",
    "namespace": "bookinfo",
    "host": "reviews.mesh",
    "hosts": ["a.mesh"],
    "addresses": ["240.0.0.1"],
    "ports": [{"name": "http", "number": 9080, "protocol": "HTTP", "target_port": 8080}],
    "instances": [
        {
            "address": "10.0.0.12",
            "ports": {"http": 9081},
            "labels": {"version": "v2"},
            "weight": 3,
            "locality": "us-east/zone-a",
            "network": "n1",
            "service_account": "sa",
        }
    ],
    "labels": {"team": "x"},
    "export_to": ["."],
    "location": "MESH_EXTERNAL",
    "resolution": "DNS",
}


def _places(value: object) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in an entry, nested ones included."""
    found: list[tuple[Any, Any]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value)  # type: ignore[arg-type]
    for key, item in list(items):
        found.append((value, key))
        if isinstance(item, dict | list):
            found += _places(item)
    return found


def _fault(raw: dict[str, Any], data: st.DataObject) -> None:
    """One fault somewhere in `raw`: a value replaced, a key removed, or a key added."""
    container, key = data.draw(st.sampled_from(_places(raw) or [(raw, "name")]))
    action = data.draw(st.sampled_from(["replace", "replace", "remove", "add"]))
    if action == "replace" or not isinstance(container, dict):
        container[key] = data.draw(_ODD)
    elif action == "remove":
        del container[key]
    else:
        container[data.draw(st.sampled_from(["colour", 1, None]))] = "x"


def check_both_paths(raw: object) -> Service | None:
    """An entry the direct path reads is one pydantic accepts, and becomes the same Service
    with values of the same types (repr tells 1 from True); one pydantic refuses, the
    direct path leaves to it (so its problems keep pydantic's words). The direct one."""
    direct = direct_service(raw, OPTIONS)
    try:
        entry = StaticService.model_validate(raw)
    except ValidationError:
        assert direct is None, raw
        return None
    if direct is not None:
        want = to_service(entry, OPTIONS)
        assert direct == want, raw
        assert repr(direct) == repr(want), raw
    return direct


@settings(derandomize=True, database=None, deadline=None, max_examples=500)
@given(st.data())
def test_the_direct_path_accepts_only_what_pydantic_reads_the_same(data: st.DataObject) -> None:
    raw = data.draw(_GOOD_ENTRY)
    faults = data.draw(st.integers(0, 2))
    for _ in range(faults):
        _fault(raw, data)
    direct = check_both_paths(raw)
    if not faults and "created" not in raw:
        assert direct is not None  # a well-formed entry is read directly


def test_every_single_fault_is_read_as_pydantic_reads_it() -> None:
    """Each place of an entry with every field, given each odd value, removed, or beside
    an unknown key: exhaustively, so that every check of the direct path meets its case."""
    places = len(_places(copy.deepcopy(FULL_ENTRY)))
    for n in range(places):
        for fault in [*ODD, "remove", "add"]:
            raw = copy.deepcopy(FULL_ENTRY)
            container, key = _places(raw)[n]
            if fault == "remove" and isinstance(container, dict):
                del container[key]
            elif fault == "add" and isinstance(container, dict):
                container["colour"] = "blue"
            else:
                container[key] = fault
            check_both_paths(raw)


def test_the_plain_shape_takes_the_direct_path() -> None:
    """What generators write (the bench's estate, the README's examples) is read directly."""
    raw = FULL_ENTRY
    direct = direct_service(raw, OPTIONS)
    assert direct is not None
    assert repr(direct) == repr(to_service(StaticService.model_validate(raw), OPTIONS))
    assert direct_service({"name": "a", "ports": []}, OPTIONS) is not None


def test_parsing_validates_with_pydantic_only_what_is_not_plain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The direct path is what a file of plain entries goes through; pydantic sees only the
    entries that are not plain, and says what is wrong with them as before."""
    seen: list[object] = []
    real = StaticService.model_validate

    def counting(raw: object) -> StaticService:
        seen.append(raw)
        return real(raw)

    monkeypatch.setattr(parser_module.StaticService, "model_validate", counting)
    bad = {"name": "bad", "ports": [{"name": "http", "number": "eighty"}]}
    text = json.dumps({"services": [FULL_ENTRY, bad, {"name": "a", "ports": []}]})
    parsed = parse_static(text, OPTIONS)
    assert [s.name for s in parsed.services] == ["reviews", "a"]
    assert seen == [bad]
    assert [p.message for p in parsed.problems] == [
        "ports[0].number: Input should be a valid integer, unable to parse string as an integer"
    ]


@pytest.mark.parametrize(
    "dump",
    [
        json.dumps,
        lambda d: json.dumps(d, indent=2),
        lambda d: "\n \t" + json.dumps(d, separators=(",", ":")) + "\r\n",
    ],
)
def test_a_json_file_is_read_entry_by_entry(dump: Any) -> None:
    """Each entry of a plain JSON file read on its own is what json.loads reads of it, and
    its key is its text."""
    services = [FULL_ENTRY, {"name": "a", "ports": [], "note": [1.5, None, True]}, "text", 7]
    text = dump({"services": services})
    cut = parser_module.json_entries(text)
    assert cut is not None
    assert [raw for raw, _, _ in cut] == json.loads(text)["services"]
    for raw, _, key in cut:
        assert key is not None and key.startswith(parser_module.JSON_KEY)
        piece = key.removeprefix(parser_module.JSON_KEY)
        assert piece in text and json.loads(piece) == raw
    assert parser_module.json_entries(dump({"services": []})) == []


@pytest.mark.parametrize(
    "text",
    [
        '{"services": [], "other": 1}',  # another key: the whole file says what is wrong
        '{"other": 1, "services": []}',
        '{"services": [{"name": "a"}], "services": []}',  # json.loads keeps the last
        '{"services": [{"name": "a"},]}',  # not JSON
        '{"services": [{"name": "a"}]} x',
        '{"services": {"name": "a"}}',
        '{"services": [{"name": "a"}]\u00a0}',  # not JSON's whitespace
        '{"services": [{"name": "a"}',
    ],
)
def test_any_other_json_is_parsed_whole(text: str) -> None:
    assert parser_module.json_entries(text) is None


def test_an_edit_of_a_json_file_reads_again_only_the_entry_that_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = [
        {"name": f"s{i}", "ports": [], "instances": [{"address": f"10.0.0.{i}"}]} for i in range(20)
    ]
    first = parse_static(json.dumps({"services": services}), OPTIONS)
    read: list[object] = []
    real = parser_module.direct_service

    def counting(raw: object, options: StaticOptions, *shared: Any) -> Service | None:
        read.append(raw)
        return real(raw, options, *shared)

    monkeypatch.setattr(parser_module, "direct_service", counting)
    services[6]["instances"] = [{"address": "10.0.7.7"}]
    second = parse_static(json.dumps({"services": services}), OPTIONS, first.known, first.texts)
    assert read == [services[6]]
    assert [a is b for a, b in zip(first.services, second.services, strict=True)] == [
        i != 6 for i in range(20)
    ]
    assert second.services[6].instances[0].address == "10.0.7.7"


def test_instances_with_the_same_labels_share_one_tuple() -> None:
    """One label tuple per label set in the file, not one per instance (100k at 10k x 10)."""
    entry = {
        "name": "a",
        "ports": [],
        "instances": [{"address": "10.0.0.1", "labels": {"v": "1", "z": "a"}}],
    }
    text = json.dumps({"services": [entry, {**entry, "name": "b"}]})
    a, b = parse_static(text, OPTIONS).services
    assert a.instances[0].labels == (("v", "1"), ("z", "a"))
    assert a.instances[0].labels is b.instances[0].labels


def test_a_plain_instance_is_the_one_its_init_makes() -> None:
    """The usual instance, made without Instance.__init__ (parser._plain_maker): equal,
    with the same repr and hash, and as frozen."""
    labels = (("v", "1"), ("z", "a"))
    made = parser_module._plain_instance("10.0.0.1", labels)
    want = Instance("10.0.0.1", (), labels)
    assert (made, repr(made), hash(made)) == (want, repr(want), hash(want))
    with pytest.raises(FrozenInstanceError):
        made.address = "10.0.0.2"  # type: ignore[misc]


def traced_peak(work: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_json_file_is_never_held_whole_as_parsed_json() -> None:
    """Each entry's parsed JSON is freed once its Service is made: parsing the file peaks
    below what its parsed entries alone take (at 10k services x 10, 73 MiB)."""
    entries = [
        {
            "name": f"s{i}",
            "ports": [{"name": "http", "number": 80}],
            "instances": [
                {"address": f"10.0.{i % 250}.{n}", "labels": {"version": "v1", "zone": f"z{n}"}}
                for n in range(10)
            ],
        }
        for i in range(500)
    ]
    text = json.dumps({"services": entries})
    held = traced_peak(lambda: parser_module.json_entries(text))
    assert traced_peak(lambda: parse_static(text, OPTIONS)) < held / 2
    assert traced_peak(lambda: sum(1 for _ in parser_module.json_stream(text))) < held / 20


@pytest.mark.parametrize(
    ("tail", "why"),
    [
        ('], "extra": 1}', "unknown top-level key 'extra'"),
        ("] x", "not valid YAML"),  # not JSON: read as YAML, which refuses it
    ],
)
def test_a_json_file_that_turns_out_not_plain_is_parsed_whole(tail: str, why: str) -> None:
    """Its entries were read one by one before the end showed otherwise: the file is then
    parsed whole, and refused with the reason a whole parse gives."""
    text = json.dumps({"services": [{"name": "a", "ports": []}]})[: -len("]}")] + tail
    with pytest.raises(StaticFileError, match=why):
        parse_static(text, OPTIONS)


def test_every_field_of_an_entry_lands_in_its_place() -> None:
    """Each value of an entry with every field becomes the Service field it names (both
    paths make Services through one function, so holding them equal cannot say this)."""
    want = Service(
        registry=OPTIONS.registry,
        namespace="bookinfo",
        name="reviews",
        hosts=("reviews.mesh",),
        ports=(Port(name="http", number=9080, protocol="HTTP", target_port=8080),),
        instances=(
            Instance(
                address="10.0.0.12",
                ports=(("http", 9081),),
                labels=(("version", "v2"),),
                weight=3,
                locality="us-east/zone-a",
                network="n1",
                service_account="sa",
            ),
        ),
        addresses=("240.0.0.1",),
        labels=(("team", "x"),),
        export_to=(".",),
        location="MESH_EXTERNAL",
        resolution="DNS",
        endpoints_mode=OPTIONS.endpoints_mode,
        create_time=EPOCH_2000,
    )
    assert direct_service(copy.deepcopy(FULL_ENTRY), OPTIONS) == want
