"""The machine and software a result was measured on, recorded beside the figures: a ratio
means little without the cores it ran on, and the same suite on a busier or smaller machine
must be recognisable as such (the load average is taken at start and end)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _mem_total_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    except OSError:
        return "absent"
    return (done.stdout + done.stderr).strip()


def zookeeper_version(address: str) -> str:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2) as conn:
            conn.sendall(b"srvr")
            first = conn.recv(4096).decode(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return "unknown"
    return first.removeprefix("Zookeeper version: ")


def pin_code(directory: Path) -> str:
    """Copy the mcpserver package as it is now into `directory` and put it first on the
    PYTHONPATH of every process the suite starts (which run outside the checkout, see
    suite.main); return a digest of its sources.

    Other work edits mcpserver/ while the suite runs; without this, a server spawned at
    minute 10 could run other code than one spawned at minute 1. The digest tells runs of
    different code apart in results.json."""
    import hashlib
    import shutil

    source = REPO / "mcpserver"
    target = directory / "mcpserver"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    compile_bytecode(target, REPO / "generated", REPO / "bench")
    digest = hashlib.sha256()
    for path in sorted(target.rglob("*.py")):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(path.read_bytes())
    inherited = filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))
    paths = [str(directory), str(REPO), *inherited]  # the copy first; bench/ and tests/ next
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    return digest.hexdigest()[:16]


def compile_bytecode(*directories: Path) -> None:
    """Write the bytecode of the code the measured processes import, once, as the image does
    (Dockerfile: compileall). With PYTHONDONTWRITEBYTECODE set (CI and this machine set it)
    and no bytecode beside the sources, every process the suite spawned compiled each module
    it imported from source: about 0.1 s of a server's cold start (mcpserver, its protos)
    that a deployed server never pays, and some of the baseline's. Python checks each file's
    bytecode against its source's mtime and size, so an edited source is compiled again."""
    import compileall

    for directory in directories:
        compileall.compile_dir(directory, quiet=2)


def describe() -> dict[str, Any]:
    import google.protobuf
    import yaml
    from google.protobuf.internal import api_implementation

    head = _run(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    dirty = _run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "ram_mib": round(_mem_total_mib()),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "grpcio": _version("grpcio"),
        "protobuf": f"{google.protobuf.__version__} ({api_implementation.Type()})",
        "kazoo": _version("kazoo"),
        "pyyaml": f"{yaml.__version__} (libyaml {'yes' if yaml.__with_libyaml__ else 'no'})",
        "java": _run(["java", "-version"]).splitlines()[0] if _run(["java", "-version"]) else "",
        "git_head": head,
        "git_dirty": bool(dirty),
        "load_average_start": list(os.getloadavg()),
    }
