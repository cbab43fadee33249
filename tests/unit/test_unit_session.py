"""A unit-test session loads none of the test bed's launchers (testbed/: kube-apiserver,
istiod, ZooKeeper, ... and their builds), although unit tests import the benchmarks' pure
figures code: what starts real components is imported where it is first used.

Checked in a fresh interpreter that imports every unit-test module, as a session does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# testbed.ports finds free loopback ports with the standard library only (bench/process.py
# picks the mcpserver processes' ports with it); the package itself is a docstring
ALLOWED = {"testbed", "testbed.ports"}

CODE = """
import importlib, json, pkgutil, sys
for found in pkgutil.iter_modules(["tests/unit"]):
    importlib.import_module("tests.unit." + found.name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "testbed"
                        or m.startswith("tests.integration"))))
"""


def test_unit_tests_load_no_launcher() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CODE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert loaded - ALLOWED == set()
