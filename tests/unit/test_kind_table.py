"""The kind table loads a kind's package on first use: a server imports the code of the
registry kinds its config uses and no other (issue 29: cold start CPU and peak RSS)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Literal

import pytest

from mcpserver.config import RegistrySettings
from mcpserver.registry.kind import Kind
from mcpserver.registry.kinds import KINDS, PACKAGES, register

ROOT = Path(__file__).resolve().parents[2]

# In a fresh interpreter: load a config the way `serve` does, look up each entry's kind as
# the app does, and list the kind packages that were imported.
PROBE = """
import json, sys
from pathlib import Path
from mcpserver.registry.kinds import PACKAGES, kind_of
from mcpserver.settings import load_settings
settings = load_settings(Path(sys.argv[1]))
print(json.dumps({
    "built": [kind_of(entry).name for entry in settings.registries],
    "imported": sorted(k for k, package in PACKAGES.items() if package in sys.modules),
}))
"""


def loaded_by(config: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(config)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_a_zookeeper_only_config_imports_no_other_kind(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("registries: [{kind: zookeeper, name: zk, hosts: '127.0.0.1:2181'}]\n")
    assert loaded_by(config) == {"built": ["zookeeper"], "imported": ["zookeeper"]}


def test_a_config_imports_each_kind_it_names(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("services: []\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        "registries:\n"
        "  - {kind: consul, name: c}\n"
        "  - {kind: static, name: s, path: s.yaml}\n"
        "  - {kind: consul, name: d}\n"
    )
    assert loaded_by(config) == {
        "built": ["consul", "static", "consul"],
        "imported": ["consul", "static"],
    }


def test_each_table_line_names_the_package_of_its_kind() -> None:
    for name in list(PACKAGES):
        kind = KINDS[name]
        assert kind.name == name
        assert kind.settings.model_fields["kind"].annotation == Literal[name]


def test_the_table_lists_the_kinds_the_independence_contract_keeps_apart() -> None:
    """import-linter no longer sees the table import the kinds: the two lists must agree."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    kept_apart = next(c["modules"] for c in contracts if c["type"] == "independence")
    assert sorted(kept_apart) == sorted(PACKAGES.values())


class _OtherSettings(RegistrySettings):
    kind: Literal["other"]


def _build(settings: _OtherSettings, context: Any) -> Any:
    raise NotImplementedError


def test_a_registered_kind_is_listed_looked_up_and_removed() -> None:
    other = Kind("other", _OtherSettings, _build)
    register(other)
    try:
        assert KINDS["other"] is other
        assert list(KINDS)[-1] == "other"
        register(other)  # the same kind again is no conflict
        with pytest.raises(ValueError, match="registered twice"):
            register(Kind("other", _OtherSettings, _build))
        with pytest.raises(ValueError, match="registered twice"):
            register(Kind("zookeeper", _OtherSettings, _build))
    finally:
        KINDS.pop("other", None)
    assert "other" not in KINDS and "zookeeper" in KINDS
