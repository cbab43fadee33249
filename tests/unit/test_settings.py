"""Config loading: defaults, env overrides, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcpserver.settings import ConfigError, load_settings, parse_duration

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "seconds"), [("100ms", 0.1), ("1s", 1.0), ("2m", 120.0), ("1h", 3600.0), (5, 5.0)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_defaults_are_the_embedded_demo() -> None:
    settings = load_settings(None, {})
    assert settings.server.listen == "127.0.0.1:15051"
    assert settings.server.admin == "127.0.0.1:15052"
    (registry,) = settings.registries
    assert registry.kind == "static" and registry.path.is_file()


def test_env_overrides(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        {
            "MCPSERVER_SERVER__LISTEN": "0.0.0.0:9000",
            "MCPSERVER_DEBOUNCE__AFTER": "5ms",
            "MCPSERVER_REQUIRE_REAL": "1",
            "MCPSERVER_CONFIG": "/elsewhere.yaml",
        },
    )
    assert settings.server.listen == "0.0.0.0:9000"
    assert settings.debounce.after == pytest.approx(0.005)


def problems_of(tmp_path: Path, text: str) -> list[str]:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(config, {})
    return err.value.problems


def test_errors_name_each_field(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("services: []\n")
    problems = problems_of(
        tmp_path,
        """
server: {listen: nowhere}
debounce: {after: soon}
registries:
  - {kind: static, name: ok, path: s.yaml}
  - {kind: static, name: Bad_Name, path: missing.yaml}
  - {kind: static, path: s.yaml}
  - {kind: etcd, name: x}
""",
    )
    text = "\n".join(problems)
    assert "server.listen: expected HOST:PORT" in text
    assert "debounce.after: expected a duration" in text
    assert "registries[1].name: must be a DNS-1123 label" in text
    assert "registries[1].path: file not found" in text
    assert "registries[2].name: Field required" in text
    assert "registries[3]" in text and "etcd" in text


def test_unknown_keys_and_bad_yaml(tmp_path: Path) -> None:
    assert any("servr" in p for p in problems_of(tmp_path, "servr: {}\n"))
    assert any("not valid YAML" in p for p in problems_of(tmp_path, "a: [\n"))
    assert any("expected a mapping" in p for p in problems_of(tmp_path, "- 1\n"))


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("services: []\n")
    config = tmp_path / "c.yaml"
    config.write_text("registries: [{kind: static, name: s, path: s.yaml}]\n")
    assert load_settings(config, {}).registries[0].path == tmp_path / "s.yaml"
