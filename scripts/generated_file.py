"""A file the repository keeps generated: written by its script, checked current in CI.

Why a module: the chart's values schema and istio-config's plain manifests are both made
by a script and checked by the same rule (write it, or with --check say whether it is
stale, exit 1 if so); the rule lives here once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_or_check(
    target: Path, fresh: Callable[[], str], script: str, argv: list[str] | None, about: str
) -> int:
    """Write `fresh()` to `target`, or with --check exit 1 if they differ."""
    parser = argparse.ArgumentParser(description=about)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = fresh()
    name = target.relative_to(ROOT)
    if args.check:
        if target.read_text(encoding="utf-8") != text:
            print(f"{name} is stale: run python scripts/{script}", file=sys.stderr)
            return 1
        print(f"{name} is current")
        return 0
    target.write_text(text, encoding="utf-8")
    print(f"wrote {name}")
    return 0
