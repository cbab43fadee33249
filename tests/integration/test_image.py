"""The container image, built from this repository's Dockerfile and run for real (podman, no
Docker engine): it serves an istiod-like client through a published port, runs as a fixed
non-root user on a read-only root filesystem, its HEALTHCHECK passes, and SIGTERM stops it
cleanly within the grace period.

The base image is Debian bookworm's own Python 3.11 (testbed/podman.py), the
build reaches the package index the way pip on this machine does (its settings as a build
secret), and the Dockerfile stays as users get it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from mcpserver.xds.client import IstiodLikeClient
from mcpserver.xds.typeurls import ISTIO_1_29
from testbed.podman import Podman, base_image, pip_conf
from testbed.ports import free_port
from testbed.process import wait_ready
from tests.conftest import service

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/mcpserver:test"
UID = 10001
DRAIN, GRACE = 1, 5  # shutdown.drain and shutdown.grace in the test's config
STOP_TIMEOUT = 20  # podman stop: SIGTERM, then SIGKILL after this

MOVED_ADMIN = 16052


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    return Podman.found(tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="module")
def image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image, built as a user would (`--build-arg BASE=...` aside); the previous build's
    image is removed so that repeated runs do not pile up."""
    base = base_image(podman)
    secret = pip_conf(tmp_path_factory.mktemp("pip") / "pip.conf")
    previous = podman.run("image", "inspect", "--format={{.Id}}", IMAGE, check=False).stdout
    started = time.monotonic()
    podman.run(
        "build", "--format=docker", "--network=host", f"--build-arg=BASE={base}",
        f"--secret=id=pip.conf,src={secret}", f"--tag={IMAGE}", str(ROOT),
        timeout=1800,
    )  # fmt: skip
    built = time.monotonic() - started
    size = int(podman.run("image", "inspect", "--format={{.Size}}", IMAGE).stdout.strip())
    print(f"\nimage {IMAGE}: built in {built:.1f}s, {size / 1e6:.0f} MB", file=sys.stderr)
    current = podman.run("image", "inspect", "--format={{.Id}}", IMAGE).stdout
    if previous.strip() and previous != current:
        podman.run("rmi", previous.strip(), check=False)
    return IMAGE


def test_the_image_declares_user_ports_healthcheck_and_entrypoint(
    podman: Podman, image: str, record_property: Callable[[str, object], None]
) -> None:
    inspected = podman.inspect("image", image)
    config, healthcheck = inspected["Config"], inspected.get("Healthcheck")
    assert isinstance(config, dict)
    assert isinstance(healthcheck, dict), "no HEALTHCHECK in the image"
    assert config["User"] == f"{UID}:{UID}"
    assert set(config["ExposedPorts"]) == {"15051/tcp", "15052/tcp"}
    # the docker format keeps HEALTHCHECK (OCI would drop it)
    assert "/healthz" in " ".join(healthcheck["Test"])
    assert config["Entrypoint"] == ["/opt/mcpserver/bin/mcpserver"]
    assert config["StopSignal"] in ("SIGTERM", "15")
    size = int(podman.run("image", "inspect", "--format={{.Size}}", image).stdout.strip())
    record_property("image_bytes", size)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """/etc/mcpserver for the container: a config and a static registry file, readable by
    the container's user."""
    directory = tmp_path / "etc-mcpserver"
    directory.mkdir()
    (directory / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "shutdown": {"drain": f"{DRAIN}s", "grace": f"{GRACE}s"},
                "registries": [{"kind": "static", "name": "files", "path": "services.yaml"}],
            }
        )
    )
    (directory / "services.yaml").write_text(
        yaml.safe_dump({"services": [service("cart", "10.1.0.1", "10.1.0.2")]})
    )
    directory.chmod(0o755)
    for file in directory.iterdir():
        file.chmod(0o644)
    return directory


@pytest.fixture
def container(podman: Podman, image: str, config_dir: Path) -> Iterator[tuple[str, int, int]]:
    """The image running on podman's default bridge network, its ports published on
    loopback only, its root filesystem read-only (no tmpfs either)."""
    grpc_port, admin_port = free_port(), free_port()
    name = f"mcptest-{os.getpid()}-{grpc_port}"
    podman.run(
        "run", "--detach", f"--name={name}", "--read-only", "--read-only-tmpfs=false",
        # no systemd here to run the HEALTHCHECK on a timer: the test runs it itself
        "--health-interval=disable",
        # the admin port moved: the image's HEALTHCHECK must follow it
        f"--env=MCPSERVER_SERVER__ADMIN=0.0.0.0:{MOVED_ADMIN}",
        f"--publish=127.0.0.1:{grpc_port}:15051", f"--publish=127.0.0.1:{admin_port}:{MOVED_ADMIN}",
        f"--volume={config_dir}:/etc/mcpserver:ro", image,
    )  # fmt: skip
    try:
        yield name, grpc_port, admin_port
    finally:
        podman.run("rm", "--force", "--time=0", name, check=False)


def ready(admin_port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=2) as response:
        return bool(response.status == 200)


async def test_the_container_serves_istiod_as_non_root_and_stops_on_sigterm(
    podman: Podman, container: tuple[str, int, int], tmp_path: Path
) -> None:
    name, grpc_port, admin_port = container
    log = tmp_path / "container.log"

    def alive_and_ready() -> bool:
        done = podman.run("logs", name, check=False)
        log.write_text(done.stdout + done.stderr)
        state = podman.inspect("container", name)["State"]
        assert isinstance(state, dict)
        if not state["Running"]:
            raise AssertionError(f"container exited:\n{log.read_text()[-3000:]}")
        return ready(admin_port)

    wait_ready("the container's /readyz", alive_and_ready, None, log)

    # what istiod would receive, through the published port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        client = IstiodLikeClient(channel, ISTIO_1_29)
        task = asyncio.create_task(client.run())
        await client.wait_for(lambda c: c.synced(), 30)
        names = {r.name for r in client.latest("ServiceEntry")}
        client.close()
        task.cancel()
    assert names == {"cart"}

    # PID 1 is mcpserver itself, as the fixed non-root user
    status = podman.run("exec", name, "cat", "/proc/1/status").stdout
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == [str(UID)] * 4
    cmdline = podman.run("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert cmdline[0].startswith("/opt/mcpserver/bin/python"), cmdline
    assert cmdline[1:3] == ["/opt/mcpserver/bin/mcpserver", "serve"], cmdline

    # the image's HEALTHCHECK command, run as the engine runs it
    health = podman.run("healthcheck", "run", name, check=False)
    assert health.returncode == 0, health.stdout + health.stderr

    # SIGTERM (the image's STOPSIGNAL) to PID 1: drained and exited 0 well before SIGKILL
    started = time.monotonic()
    podman.run("stop", f"--time={STOP_TIMEOUT}", name, timeout=STOP_TIMEOUT + 30)
    took = time.monotonic() - started
    state = podman.inspect("container", name)["State"]
    assert isinstance(state, dict)
    done = podman.run("logs", name)
    logs = done.stdout + done.stderr
    assert state["ExitCode"] == 0, logs[-3000:]
    assert DRAIN <= took < DRAIN + GRACE, f"stopped in {took:.1f}s"
    assert "shutting down: draining" in logs
    print(f"\ncontainer stopped by SIGTERM in {took:.1f}s", file=sys.stderr)
