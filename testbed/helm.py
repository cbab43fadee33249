"""Running Helm's CLI (built by real.helm_binary()) on a chart: lint, and template into the
objects a test can hand to the real kube-apiserver."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testbed.builds import KUBE_VERSION


@dataclass
class Helm:
    binary: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        # --kube-version: render for the apiserver the tests validate against (an unstamped
        # helm assumes an old Kubernetes and the chart's kubeVersion refuses it)
        return subprocess.run(
            [str(self.binary), *args, f"--kube-version={KUBE_VERSION}"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def lint(self, chart: Path, *values: Path) -> subprocess.CompletedProcess[str]:
        return self.run("lint", "--strict", str(chart), *(f"--values={v}" for v in values))

    def template(
        self, chart: Path, release: str, namespace: str, *values: Path, sets: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "template",
            release,
            str(chart),
            f"--namespace={namespace}",
            *(f"--values={v}" for v in values),
            *(f"--set={s}" for s in sets),
        )

    def objects(
        self, chart: Path, release: str, namespace: str, *values: Path, sets: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        """Every object `helm template` renders; fails the test with Helm's message if it
        cannot."""
        done = self.template(chart, release, namespace, *values, sets=sets)
        if done.returncode != 0:
            raise AssertionError(f"helm template failed:\n{done.stderr}")
        return [d for d in yaml.safe_load_all(done.stdout) if d]
