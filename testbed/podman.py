"""Building and running this repository's Dockerfile with Debian's podman, as root, without
a Docker engine.

The sandbox refuses setrlimit, so podman gets a containers.conf of its own with
`default_ulimits = []` (through CONTAINERS_CONF) and runc as the runtime. Images are built in
the docker format: the OCI format has no HEALTHCHECK. The base image is not pulled from a
container registry (this machine reaches none): it is Debian bookworm made by `debootstrap
--variant=minbase` with its Python 3.11, plus this machine's CA bundle so that pip inside the
build can trust the TLS it reaches the package index through; it is cached as a tarball in
the cache directory, keyed by what goes into it, and imported again when podman's store
lacks it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.builds import CACHE, locked, missing

SUITE = "bookworm"  # Debian 12: its python3 is 3.11, as the Dockerfile's default base
PACKAGES = ("python3", "python3-venv")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
RECIPE = "1"  # bump when base_tarball() changes what it puts into the tarball
CONTAINERS_CONF = """\
[containers]
# the sandbox refuses setrlimit: no default ulimits for containers
default_ulimits = []

[engine]
runtime = "runc"
"""
# what pip on this machine is told that pip inside a build needs too (not find-links: a
# directory of this machine)
PIP_KEYS = ("index-url", "extra-index-url", "trusted-host", "cert", "timeout")


@dataclass
class Podman:
    binary: Path
    conf: Path

    @classmethod
    def found(cls, workdir: Path) -> Podman:
        """podman and runc, or a skip (a failure in CI) naming what is missing."""
        binary = shutil.which("podman")
        if binary is None or shutil.which("runc") is None:
            missing("podman and runc (Debian packages podman, runc)")
        assert binary is not None
        if os.geteuid() != 0:
            missing("root, for podman with runc in this sandbox")
        conf = workdir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        return cls(Path(binary), conf)

    def run(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.binary), *args],
            env={**os.environ, "CONTAINERS_CONF": str(self.conf)},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}"
            )
        return done

    def image_exists(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0

    def inspect(self, what: str, name: str) -> dict[str, object]:
        found: list[dict[str, object]] = json.loads(self.run(what, "inspect", name).stdout)
        return found[0]


def apt_mirror() -> str:
    """The Debian archive apt on this machine uses for the main suite (read from its
    sources, never written down here)."""
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if re.match(r"^\w[\w-]*:", line)
            )
            suites = fields.get("Suites", "").split()
            if SUITE in suites and "deb" in fields.get("Types", "").split():
                return fields["URIs"].split()[0]
    legacy = Path("/etc/apt/sources.list")
    for line in legacy.read_text().splitlines() if legacy.exists() else []:
        words = line.split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
            return words[1] if not words[1].startswith("[") else words[2]
    missing(f"a Debian {SUITE} archive in apt's sources (for debootstrap)")
    raise AssertionError("unreachable")


def base_key() -> str:
    """What decides the base image: suite, packages, the CA bundle, the recipe."""
    digest = hashlib.sha256(f"{SUITE} {' '.join(PACKAGES)} {RECIPE}".encode())
    digest.update(CA_BUNDLE.read_bytes() if CA_BUNDLE.exists() else b"")
    return digest.hexdigest()[:16]


def base_tarball() -> Path:
    """The base image's root filesystem as a tarball in the cache, made once per key by
    debootstrap (about two minutes), written aside and renamed."""
    key = base_key()
    tarball = CACHE / f"podman-base-{SUITE}-{key}.tar"
    if tarball.exists():
        return tarball
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        missing("debootstrap (Debian package debootstrap)")
    assert debootstrap is not None
    with locked("podman-base"):
        if tarball.exists():
            return tarball
        started = time.monotonic()
        root = CACHE / f"podman-base-{key}.partial"
        partial = tarball.with_name(tarball.name + ".partial")
        shutil.rmtree(root, ignore_errors=True)
        command = [
            "nice", debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}",
            SUITE, str(root), apt_mirror(),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            missing(f"debootstrap {SUITE} failed:\n{(done.stdout + done.stderr)[-4000:]}")
        # pip inside the build reaches the index through TLS only this bundle trusts
        if CA_BUNDLE.exists():
            (root / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], check=True
        )
        partial.replace(tarball)
        shutil.rmtree(root, ignore_errors=True)
        print(f"built base image tarball in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return tarball


def base_image(podman: Podman) -> str:
    """The base image in podman's store, imported from the cached tarball when absent."""
    name = f"localhost/mcpserver-test-base:{SUITE}-{base_key()}"
    if not podman.image_exists(name):
        podman.run("import", str(base_tarball()), name, timeout=600)
    return name


def pip_conf(path: Path) -> Path:
    """pip's settings on this machine (config files and PIP_* variables, as `pip config
    list` shows them) as a pip.conf for the build, given as a build secret. The CA bundle
    is where the base image carries it."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=False,
    )
    settings: dict[str, str] = {}
    for line in done.stdout.splitlines():
        name, _, value = line.partition("=")
        key = name.rpartition(".")[2]
        if key == "default-timeout":
            key = "timeout"
        if key in PIP_KEYS:
            settings[key] = value.strip().strip("'\"")
    if CA_BUNDLE.exists():
        settings["cert"] = "/etc/ssl/certs/ca-certificates.crt"
    body = "".join(f"{key} = {value}\n" for key, value in sorted(settings.items()))
    path.write_text(f"[global]\n{body}")
    return path
