"""Every top-level module of mcpserver has a place in pyproject's layers contract.

import-linter checks only the modules a contract names: a new module left out of the layers
may import anything, and the layering silently stops covering it. This keeps the list whole.
"""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# the entry point `python -m mcpserver` runs cli; it is imported by nothing
OUTSIDE = {"__main__"}


def layered_modules() -> set[str]:
    """The modules the layers contract names, a layer's `a | b` alternatives split."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["type"] == "layers")
    return {name.strip() for layer in layers for name in layer.split("|")}


def test_every_top_level_module_is_in_a_layer() -> None:
    found = {
        "mcpserver." + module.name
        for module in pkgutil.iter_modules([str(ROOT / "mcpserver")])
        if module.name not in OUTSIDE
    }
    assert found, "no modules found: the package moved?"
    missing = sorted(found - layered_modules())
    assert not missing, f"add these to pyproject's layers contract: {missing}"


def test_the_layers_name_no_module_that_is_gone() -> None:
    found = {"mcpserver." + m.name for m in pkgutil.iter_modules([str(ROOT / "mcpserver")])}
    assert not sorted(layered_modules() - found)
