"""The real istiod and the Kubernetes control plane it runs beside (`k8s://`), for the parts
that run istiod (f and g): built, or taken from the cache, as the integration tier builds
them (tests/integration/real.py), and started once per suite run.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from testbed.builds import istio_module_dir, kube_binaries, pilot_discovery_binary
from testbed.kube import ControlPlane


@dataclass(frozen=True)
class IstiodKit:
    binary: Path  # pilot-discovery
    plane: ControlPlane  # started: etcd, kube-apiserver, Istio's CRDs, istio-system


def built(workdir: Path) -> tuple[Path, ControlPlane] | str:
    """pilot-discovery and a control plane to start, built (or taken from the cache) as the
    integration tier builds them; or why they cannot be (pytest's skip/fail outcomes, which
    tests/integration/real.py raises when Go is missing or a build fails)."""
    try:
        binary = pilot_discovery_binary()
        plane = ControlPlane(kube_binaries(), workdir)
    except BaseException as err:
        if type(err).__name__ not in ("Skipped", "Failed"):
            raise
        return f"istiod or the control plane unavailable: {err}"
    return binary, plane


async def start(workdir: Path) -> IstiodKit | str:
    """The kit, its control plane started; or why it cannot be."""
    made = await asyncio.to_thread(built, workdir)  # minutes when cold: not on the loop
    if isinstance(made, str):
        return made
    binary, plane = made
    crds = istio_module_dir() / "manifests" / "charts" / "base" / "files" / "crd-all.gen.yaml"
    try:
        await asyncio.to_thread(plane.start, crds)
    except BaseException:
        plane.stop()
        raise
    return IstiodKit(binary, plane)
