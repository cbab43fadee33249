"""Logs as an operator reads them: one format per line (text or JSON) with ISO 8601
timestamps and their offset, one INFO line per published change that names it, a quiet
stream lifecycle, and no stray gRPC core lines."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from mcpserver.logs import JsonFormatter, TextFormatter
from testbed.process import wait_ready
from tests.conftest import (
    AppFactory,
    ClientFactory,
    eventually,
    free_port,
    make_settings,
    service,
    write_services,
)

pytestmark = pytest.mark.component

ISO_8601 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"
SE = "networking.istio.io/v1/ServiceEntry"


def ready(admin: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def stop_now(process: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGINT: the second signal skips the drain. Two different signals, since
    the kernel merges a signal sent again while the first is still pending."""
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGINT)


@contextmanager
def server(
    static_file: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    """`mcpserver serve` on the static file, ready; yields the process and its ports."""
    port, admin = free_port(), free_port()
    config = static_file.parent / "serve.yaml"
    config.write_text(
        f"server: {{listen: '127.0.0.1:{port}', admin: '127.0.0.1:{admin}'}}\n"
        "debounce: {after: 20ms, max: 200ms}\n"
        f"registries: [{{kind: static, name: files, path: {static_file}, poll_interval: 50ms}}]\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "mcpserver", "serve", "--config", str(config), *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_ready("the server", lambda: ready(admin), process, None, within=30, every=0.05)
        yield process, port, admin
    finally:
        if process.poll() is None:
            stop_now(process)
            process.wait(30)


def dump(port: int) -> None:
    """One istiod-like stream: open, every type answered and ACKed, closed."""
    done = subprocess.run(
        [sys.executable, "-m", "mcpserver", "dump", "--server", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def wait_for_publish(admin: int, before: str) -> None:
    """Until /readyz reports a snapshot version other than `before`."""
    wait_ready("a new snapshot", lambda: version(admin) != before, None, None, 15, 0.05)


def version(admin: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as r:
        return str(json.loads(r.read())["version"])


def test_json_logs_are_one_object_per_line_and_name_each_change(static_file: Path) -> None:
    with server(static_file, "--log-format", "json") as (process, port, admin):
        first = version(admin)
        write_services(
            static_file,
            [service("cart", "10.1.0.1", "10.1.0.3"), service("new", "10.1.0.7")],
        )
        wait_for_publish(admin, first)
        dump(port)
        stop_now(process)
        _, stderr = process.communicate(timeout=30)
    lines = stderr.splitlines()
    records = [json.loads(line) for line in lines]  # every line parses, none is raw text
    for record in records:
        assert re.fullmatch(ISO_8601, record["time"]), record
        assert {"level", "logger", "message"} <= record.keys()
    changes = [r for r in records if r["logger"] == "mcpserver.snapshot"]
    assert len(changes) == 2, changes  # the first snapshot, then the one change
    assert changes[0]["first"] is True
    change = changes[1]
    assert change["level"] == "INFO"
    assert (
        "registry files added 1 (shop/new), removed 1 (shop/pay), changed 1 (shop/cart)"
        in (change["message"])
    )
    assert change["services"] == {
        "files": {
            **{"added": ["shop/new"], "removed": ["shop/pay"], "changed": ["shop/cart"]},
            **{"added_count": 1, "removed_count": 1, "changed_count": 1},
        }
    }
    # one istiod stream at INFO: its open and its close, not a line per type
    streams = [r["message"] for r in records if r["logger"] == "mcpserver.xds"]
    streams = [m for m in streams if not m.startswith("xds listening")]
    assert len(streams) == 2, streams
    assert streams[0].startswith("stream opened")
    # dump says what it is: not one more istiod in /debug/clients
    assert streams[1].startswith("stream closed") and "node=mcpserver-dump" in streams[1]


def test_text_logs_start_with_an_iso_8601_time_with_offset(static_file: Path) -> None:
    with server(static_file) as (process, port, _):
        dump(port)
        stop_now(process)
        _, stderr = process.communicate(timeout=30)
    lines = stderr.splitlines()
    assert lines
    for line in lines:
        assert re.match(rf"{ISO_8601} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+ ", line), line
    assert any("first snapshot" in line and "registry files added 2" in line for line in lines)


@pytest.mark.parametrize(
    ("env", "core_lines"),
    [({}, 0), ({"GRPC_VERBOSITY": "ERROR"}, 1)],
    ids=["silenced-by-default", "operator-asks-for-them"],
)
def test_grpc_core_lines_are_silenced_unless_asked_for(
    tmp_path: Path, env: dict[str, str], core_lines: int
) -> None:
    """A port in use makes gRPC core write its own line (`E1122 ... add_port.cc]`) to stderr
    in its own format; by default the one line on stderr is ours."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "c.yaml"
        config.write_text(
            f"server: {{listen: '127.0.0.1:{port}', admin: '127.0.0.1:{free_port()}'}}\n"
            "registries: []\n"
        )
        base = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
        done = subprocess.run(
            [sys.executable, "-m", "mcpserver", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**base, **env},
            check=False,
        )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    ours = [line for line in lines if re.match(ISO_8601, line)]
    core = [line for line in lines if re.match(r"[EWI]\d{4} ", line)]
    assert any("cannot listen on server.listen" in line for line in ours), lines
    assert len(core) == core_lines, lines
    assert len(lines) == len(ours) + len(core), lines


async def test_a_stream_logs_open_close_and_nack_above_debug(
    static_file: Path,
    start_app: AppFactory,
    connect: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="mcpserver.xds")
    app = await start_app(make_settings(static_file))
    client = await connect(app.port)
    await client.wait_for(lambda c: c.synced(), 10)
    await eventually(lambda: app.clients.open and next(iter(app.clients.open.values())).acked_at)
    nack = discovery_pb2.DiscoveryRequest(
        type_url=SE, response_nonce=client.responses[SE][-1].nonce
    )
    nack.error_detail.code = 3
    nack.error_detail.message = "bad port"
    client.send(nack)

    def records(level: int) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "mcpserver.xds" and r.levelno == level]

    await eventually(lambda: records(logging.WARNING))
    client.close()
    await eventually(lambda: not app.clients.open)
    infos = [r.getMessage() for r in records(logging.INFO)]
    infos = [m for m in infos if not m.startswith("xds listening")]
    assert len(infos) == 2, infos
    assert infos[0].startswith("stream opened stream=1 peer=")
    assert infos[1].startswith("stream closed stream=1 ") and "node=sidecar~" in infos[1]
    (warning,) = records(logging.WARNING)
    assert "nack" in warning.getMessage() and "error=bad port" in warning.getMessage()
    debugs = [r.getMessage() for r in records(logging.DEBUG)]
    assert sum(m.startswith("sent ") for m in debugs) == 15  # one per type, at DEBUG


def record(**extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("mcpserver.x", logging.ERROR, __file__, 1, "a %s", ("b",), None)
    entry.__dict__.update(extra)
    return entry


def test_the_formatters_keep_one_record_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        entry = record(services={"files": ["shop/a"]})
        entry.exc_info = sys.exc_info()
    line = JsonFormatter().format(entry)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "a b"
    assert parsed["services"] == {"files": ["shop/a"]}  # extra= fields become keys
    assert "ValueError: boom" in parsed["exception"]
    assert re.fullmatch(ISO_8601, parsed["time"])
    assert re.match(rf"{ISO_8601} ERROR mcpserver.x a b", TextFormatter().format(record()))
    # text too: the traceback and a multi-line message stay on the record's one line
    multi = record(msg="first\nsecond %s")
    multi.exc_info = entry.exc_info
    text = TextFormatter().format(multi)
    assert "\n" not in text
    assert re.match(rf"{ISO_8601} ERROR mcpserver.x first\\nsecond b\\nTraceback", text), text
    assert "ValueError: boom" in text


def test_a_change_names_services_by_registry_and_keeps_big_ones_short() -> None:
    from datetime import UTC, datetime

    from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2, workload_entry_pb2

    from mcpserver.changes import describe_change
    from mcpserver.xds.resources import PackedResource, pack
    from mcpserver.xds.snapshot import build_snapshot

    def se(registry: str, name: str, host: str = "") -> PackedResource:
        spec = service_entry_pb2.ServiceEntry(hosts=[host or f"{name}.mesh"])
        created = datetime(2024, 1, 1, tzinfo=UTC)
        return pack("ServiceEntry", "ns", name, spec, created, (("registry", registry),))

    def we(name: str) -> PackedResource:
        spec = workload_entry_pb2.WorkloadEntry(address="10.0.0.1")
        return pack("WorkloadEntry", "ns", name, spec, datetime(2024, 1, 1, tzinfo=UTC))

    many = [se("zk", f"s{i:03}") for i in range(150)]
    old = build_snapshot([*many, se("files", "cart"), se("files", "pay"), we("w1")])
    new = build_snapshot([se("files", "cart", "cart.other"), se("files", "new"), we("w2")])
    # the owner of a resource no registry lists any more: its own `registry` label
    change = describe_change(old, new, lambda r: r.decode().metadata.labels["registry"])
    summary = change.summary()
    assert summary.startswith(f"snapshot {new.version} published: ")
    assert "registry files added 1 (ns/new), removed 1 (ns/pay), changed 1 (ns/cart)" in summary
    assert "registry zk removed 150 (ns/s000, ns/s001, ns/s002 and 147 more)" in summary
    assert "WorkloadEntry added 1 (ns/w2), removed 1 (ns/w1)" in summary
    assert summary.endswith("(now ServiceEntry=2 WorkloadEntry=1)")
    fields = change.fields()
    zk = fields["services"]["zk"]  # type: ignore[index]  # a dict of dicts, built above
    assert len(zk["removed"]) == 100 and zk["removed_count"] == 150
    assert (
        describe_change(new, new, lambda r: "")
        .summary()
        .endswith("no resource changed (now ServiceEntry=2 WorkloadEntry=1)")
    )


def test_serve_takes_its_startup_heap_out_of_the_collectors_scans(static_file: Path) -> None:
    """`mcpserver serve` freezes what startup built once the first snapshot is out
    (mcpserver/runtime.py), and says so in /metrics and in its log."""

    def frozen(admin: int) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2) as r:
            text = r.read().decode()
        found = re.search(r"^mcpserver_heap_frozen_objects (\S+)$", text, re.MULTILINE)
        assert found, "no mcpserver_heap_frozen_objects in /metrics"
        return float(found.group(1))

    with server(static_file) as (process, _, admin):
        count = wait_ready("a settled heap", lambda: frozen(admin), process, None, 30, 0.05)
        assert count > 10_000  # the interpreter, the modules and the first snapshot at least
        stop_now(process)
        _, stderr = process.communicate(timeout=30)
    assert "heap settled after the first snapshot" in stderr
