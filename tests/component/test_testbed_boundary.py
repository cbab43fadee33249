"""A unit-test session does not load the test bed: `testbed/` (builders and launchers of real
components) is imported by the fixtures and tests that start them, never by what every session
imports (tests/conftest.py). The unit tests of bench/'s pure helpers are left out of the
probe: bench/ imports the test bed beside those helpers (its launchers live with them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.component

REPO = Path(__file__).resolve().parents[2]


# pytest in a fresh interpreter, then what that interpreter holds: the last line of output
PROBE = """
import json, sys, pytest
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *sys.argv[1:]])
print(json.dumps({"code": int(code), "modules": sorted(sys.modules)}))
"""


def test_collecting_the_unit_tests_imports_nothing_of_the_test_bed() -> None:
    of_bench = [
        f"--ignore={path.relative_to(REPO)}"
        for path in sorted((REPO / "tests" / "unit").glob("test_*.py"))
        if "from bench" in path.read_text() or "import bench" in path.read_text()
    ]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *of_bench, "tests/unit"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    assert "tests.conftest" in result["modules"]  # the probe saw a real session
    loaded = [name for name in result["modules"] if name.split(".")[0] == "testbed"]
    assert loaded == []
