"""The command line as a user runs it: exit codes, messages, and the README's commands."""

from __future__ import annotations

import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from testbed.process import wait_ready
from tests.component.test_logs import ready
from tests.conftest import AppFactory, eventually, free_port, make_settings

pytestmark = pytest.mark.component

ROOT = Path(__file__).resolve().parents[2]


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcpserver", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_check_config_names_bad_fields(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("server: {listen: 15051}\nregistries: [{kind: static, name: x}]\n")
    done = run("check-config", str(config))
    assert done.returncode == 2
    assert "server.listen: expected HOST:PORT" in done.stderr
    assert "registries[0].path: Field required" in done.stderr


def test_check_config_reports_bad_static_entries(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("services: [{name: a}]\n")
    config = tmp_path / "c.yaml"
    config.write_text("registries: [{kind: static, name: s, path: s.yaml}]\n")
    done = run("check-config", str(config))
    assert done.returncode == 2
    assert "services[0] (a): ports: Field required" in done.stderr


def test_serve_with_bad_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("debounce: {after: 2s, max: 1s}\n")
    done = run("serve", "--config", str(config), timeout=30)
    assert done.returncode == 2
    assert "debounce: debounce.max must be at least debounce.after" in done.stderr


def readme_blocks(language: str) -> list[str]:
    """The code blocks of README and the documents in docs/ (the config reference)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_readme_config_examples_are_valid(tmp_path: Path) -> None:
    """Every YAML config example in the README passes check-config."""
    configs = [
        b for b in readme_blocks("yaml") if b.lstrip().startswith(("server:", "registries:"))
    ]
    assert configs, "README has no config example"
    for i, block in enumerate(configs):
        data = yaml.safe_load(block)
        for registry in data.get("registries", []):
            if registry.get("kind") == "static":
                target = tmp_path / registry["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text((ROOT / "mcpserver/data/demo.yaml").read_text())
        config = tmp_path / f"readme-{i}.yaml"
        config.write_text(block)
        done = run("check-config", str(config))
        assert done.returncode == 0, done.stderr


def test_readme_static_example_is_a_valid_registry(tmp_path: Path) -> None:
    blocks = [b for b in readme_blocks("yaml") if b.lstrip().startswith("services:")]
    assert blocks
    for block in blocks:
        (tmp_path / "s.yaml").write_text(block)
        config = tmp_path / "c.yaml"
        config.write_text("registries: [{kind: static, name: s, path: s.yaml}]\n")
        done = run("check-config", str(config))
        assert done.returncode == 0, done.stderr


def test_embedded_default_serves_and_dump_prints_it() -> None:
    """README quick start: `mcpserver serve` on the embedded demo, then `mcpserver dump`."""
    port, admin = free_port(), free_port()
    env = {
        "MCPSERVER_SERVER__LISTEN": f"127.0.0.1:{port}",
        "MCPSERVER_SERVER__ADMIN": f"127.0.0.1:{admin}",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "mcpserver", "serve"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_ready("the server", lambda: ready(admin), server, None, within=30)
        done = run("dump", "--server", f"127.0.0.1:{port}", "--kind", "ServiceEntry")
        assert done.returncode == 0, done.stderr
        items = list(yaml.safe_load_all(done.stdout))
        assert {i["metadata"]["name"] for i in items} == {"reviews", "ratings", "demo-provider"}
        reviews = next(i for i in items if i["metadata"]["name"] == "reviews")
        assert reviews["spec"]["hosts"] == ["reviews.bookinfo.mesh"]
        assert reviews["metadata"]["resourceVersion"]
        as_json = run(
            "dump", "--server", f"127.0.0.1:{port}", "-o", "json", "--istio-version", "1.23"
        )
        assert as_json.returncode == 0 and '"kind": "ServiceEntry"' in as_json.stdout
    finally:
        server.terminate()
        server.send_signal(signal.SIGINT)  # a second signal skips the shutdown drain
        assert server.wait(10) == 0


def test_dump_against_nothing_fails_cleanly() -> None:
    done = run("dump", "--server", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert done.returncode == 1
    assert "dump:" in done.stderr


def test_check_config_reports_every_record_serve_would_withhold(tmp_path: Path) -> None:
    """check-config parses, converts and validates exactly as serve does, every problem with
    its field path: malformed fields (all of them) and Istio's rules."""
    (tmp_path / "s.yaml").write_text(
        """
services:
  - name: good
    ports: [{name: http, number: 80}]
    instances: [{address: 10.0.0.1}]
  - name: huge
    ports: [{name: tcp, number: 4294967296}]
    instances: [{address: 10.0.0.2, weight: 99999999999}]
  - name: badhost
    host: bad_host.shop
    ports: [{name: http, number: 80}]
    instances: [{address: 10.0.0.3}]
  - name: notip
    ports: [{name: http_web, number: 80}]
    instances: [{address: backend.example.com}]
"""
    )
    config = tmp_path / "c.yaml"
    config.write_text("registries: [{kind: static, name: s, path: s.yaml}]\n")
    done = run("check-config", str(config))
    assert done.returncode == 2, done.stdout
    lines = done.stderr.splitlines()
    where = f"{tmp_path / 's.yaml'}: services"
    expected = [
        f"{where}[1] (huge): ports[0].number: Input should be less than or equal to 65535",
        f"{where}[1] (huge): instances[0].weight: Input should be less than or equal to 4294967295",
        f"{where}[2] (badhost): ServiceEntry default/badhost: domain name 'bad_host.shop' invalid",
        f"{where}[3] (notip): ServiceEntry default/notip: invalid port name: http_web",
        f"{where}[3] (notip): ServiceEntry default/notip: endpoint address 'backend.example.com' is not a valid IP address",
    ]
    for line in expected:
        assert any(line in got for got in lines), (line, lines)
    assert not any("(good)" in got for got in lines)


def test_check_config_from_another_directory(tmp_path: Path) -> None:
    """Relative paths of every kind resolve against the config file, not the cwd."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "s.yaml").write_text("services: []\n")
    (etc / "token").write_text("secret\n")
    (etc / "ca.pem").write_text("x\n")
    (etc / "c.yaml").write_text(
        "registries:\n"
        "  - {kind: static, name: s, path: s.yaml}\n"
        "  - {kind: consul, name: c, token: {file: token}, tls: {ca_file: ca.pem}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mcpserver", "check-config", "etc/c.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert "ok (2 registries)" in done.stdout


def test_a_config_without_registries_is_refused_not_the_demo(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("server: {listen: '127.0.0.1:1'}\n")
    done = run("check-config", str(config))
    assert done.returncode == 2 and "registries: required" in done.stderr
    config.write_text("registries: []\n")
    done = run("check-config", str(config))
    assert done.returncode == 0 and "warning: no registries" in done.stderr


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_dump_fails_at_once_against_a_closed_or_non_grpc_port() -> None:
    started = time.monotonic()
    done = run("dump", "--server", f"127.0.0.1:{free_port()}", "--timeout", "30")
    assert done.returncode == 1 and "dump: stream to" in done.stderr
    no_traceback(done)
    assert time.monotonic() - started < 15  # gRPC knows: no waiting for --timeout
    # an HTTP/1.1 server (a wrong port, e.g. the admin one): no HTTP/2, gRPC fails at once
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        done = run("dump", "--server", f"127.0.0.1:{web.server_port}", "--timeout", "30")
    finally:
        web.shutdown()
        web.server_close()
    assert done.returncode == 1 and "dump: stream to" in done.stderr
    no_traceback(done)
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dump", "--ca", "/nonexistent/ca.pem"], "dump: --ca /nonexistent/ca.pem: no such file"),
        (["dump", "--istio-version", "banana"], "expected an Istio version"),
        # not port 443 by gRPC's default: a missing port is a usage error
        (["dump", "--server", "127.0.0.1"], "dump: --server 127.0.0.1: expected HOST:PORT"),
        (["check-config", "/"], "config error: /: cannot read: is a directory"),
    ],
)
def test_dump_usage_errors_are_one_line(args: list[str], message: str) -> None:
    done = run(*args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_serve_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for field, other in (("listen", "admin"), ("admin", "listen")):
            config = tmp_path / f"{field}.yaml"
            config.write_text(
                f"server: {{{field}: '127.0.0.1:{port}', {other}: '127.0.0.1:{free_port()}'}}\n"
                "registries: []\n"
            )
            done = run("serve", "--config", str(config), timeout=30)
            assert done.returncode == 1, done.stderr
            said = f"cannot listen on server.{field} 127.0.0.1:{port}: address already in use"
            assert said in done.stderr  # the reason, not gRPC's "set GRPC_VERBOSITY=debug"
            assert "Traceback" not in done.stderr


def test_a_closed_stdout_pipe_is_one_line(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    env = {
        **os.environ,
        "MCPSERVER_SERVER__LISTEN": f"127.0.0.1:{port}",
        "MCPSERVER_SERVER__ADMIN": f"127.0.0.1:{admin}",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "mcpserver", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready("the server", lambda: ready(admin), server, None, within=30)
        reader_gone = subprocess.run(
            # `true` exits at once: the reader is gone long before dump has anything to print
            f"{sys.executable} -m mcpserver dump --server 127.0.0.1:{port} | true",
            shell=True,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "Traceback" not in reader_gone.stderr, reader_gone.stderr
        assert "mcpserver: output closed by the reader" in reader_gone.stderr
    finally:
        server.terminate()
        server.send_signal(signal.SIGINT)  # a second signal skips the shutdown drain
        server.wait(10)


def test_version_names_ours_and_the_versions_that_shape_the_wire() -> None:
    done = run("--version")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        r"mcpserver 0\.1\.0 \(python 3\.\d+\.\d+, grpcio \S+, protobuf \S+\)\n", done.stdout
    ), done.stdout


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([], ["MCPSERVER_CONFIG", "MCPSERVER_SERVER__LISTEN", "GRPC_VERBOSITY", "exit codes"]),
        (
            ["serve"],
            ["(default: $MCPSERVER_CONFIG, else the embedded demo)", "--log-format {text,json}"],
        ),
        (
            ["dump"],
            [
                "(default: $MCPSERVER_SERVER__LISTEN, else 127.0.0.1:15051)",
                "(default: 1.29)",
                "(default: 15.0)",
                "(default: yaml)",
                "MCPSERVER_<SECTION>__<FIELD>",
            ],
        ),
    ],
    ids=["top", "serve", "dump"],
)
def test_help_shows_defaults_and_the_environment(command: list[str], expected: list[str]) -> None:
    done = run(*command, "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps to the terminal width
    for phrase in expected:
        assert " ".join(phrase.split()) in text, (phrase, done.stdout)
    assert "(default: None)" not in text


async def test_dump_without_server_dials_the_listen_address_from_the_environment(
    static_file: Path, start_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from mcpserver.cli import main

    app = await start_app(make_settings(static_file))
    await eventually(lambda: app.store.snapshot is not None)
    dump = ["dump", "--kind", "ServiceEntry", "-o", "json", "--timeout", "5"]
    for listen in (f"127.0.0.1:{app.port}", f"0.0.0.0:{app.port}"):  # a wildcard: loopback
        monkeypatch.setenv("MCPSERVER_SERVER__LISTEN", listen)
        assert await asyncio.to_thread(main, dump) == 0, listen
    # without the variable, the documented default (nothing listens there in tests)
    monkeypatch.delenv("MCPSERVER_SERVER__LISTEN")
    from mcpserver.cli import DEFAULT_SERVER, default_server

    assert default_server({}) == DEFAULT_SERVER
    assert default_server({"MCPSERVER_SERVER__LISTEN": "[::]:15051"}) == "[::1]:15051"


def test_an_unknown_log_format_is_a_usage_error() -> None:
    done = run("serve", "--log-format", "xml")
    assert done.returncode == 2
    assert "invalid choice: 'xml'" in done.stderr
