"""Config loading: defaults, env overrides, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcpserver.config import parse_duration
from mcpserver.registry.consul.config import ConsulRegistrySettings
from mcpserver.registry.kinds import KINDS
from mcpserver.registry.static.config import StaticRegistrySettings
from mcpserver.registry.zookeeper.config import ZooKeeperRegistrySettings
from mcpserver.settings import ConfigError, load_settings

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
    assert isinstance(registry, StaticRegistrySettings) and registry.path.is_file()


def test_env_overrides(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        {
            "MCPSERVER_SERVER__LISTEN": "0.0.0.0:9000",
            "MCPSERVER_DEBOUNCE__AFTER": "5ms",
            "MCPSERVER_CONFIG": "/elsewhere.yaml",
            "MCPTEST_REQUIRE_REAL": "1",
        },
    )
    assert settings.server.listen == "0.0.0.0:9000"
    assert settings.debounce.after == pytest.approx(0.005)


def test_env_overrides_reach_list_items(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("registries: [{kind: zookeeper, name: zk, hosts: '127.0.0.1:2181'}]\n")
    settings = load_settings(
        config,
        {
            "MCPSERVER_REGISTRIES__0__HOSTS": "10.0.0.1:2181,10.0.0.2:2181",
            "MCPSERVER_REGISTRIES__1__KIND": "consul",
            "MCPSERVER_REGISTRIES__1__NAME": "c",
        },
    )
    zk, consul = settings.registries
    assert isinstance(zk, ZooKeeperRegistrySettings) and zk.hosts == "10.0.0.1:2181,10.0.0.2:2181"
    assert isinstance(consul, ConsulRegistrySettings) and consul.name == "c"


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        ("MCPSERVER_SERVR__LISTEN", "MCPSERVER_SERVR__LISTEN: names no setting"),
        ("MCPSERVER_REQUIRE_REAL", "MCPSERVER_REQUIRE_REAL: names no setting"),
        ("MCPSERVER_REGISTRIES__5__NAME", "is not an index from 0 to 1"),
        ("MCPSERVER_REGISTRIES__X__NAME", "is not an index"),
        ("MCPSERVER_SERVER__LISTN", "server.listn: Extra inputs are not permitted (from "),
    ],
)
def test_env_variables_that_name_no_setting_are_errors(
    tmp_path: Path, variable: str, message: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("registries: [{kind: zookeeper, name: zk, hosts: '127.0.0.1:2181'}]\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config, {variable: "1"})
    assert any(message in p for p in err.value.problems), err.value.problems


def test_a_config_file_must_list_its_registries(tmp_path: Path) -> None:
    """No silent demo: only `serve` with no config file at all serves the demo data."""
    problems = problems_of(tmp_path, "server: {listen: '127.0.0.1:1'}\n")
    assert problems[0].startswith("registries: required")
    (tmp_path / "c.yaml").write_text("registries: []\n")
    assert load_settings(tmp_path / "c.yaml", {}).registries == []


def test_renamed_startup_setting_says_what_replaced_it(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "startup: {wait_for_registries: 30s}\nregistries: []\n")
    assert any("replaced by serve_partial_after" in p for p in problems)


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
protection: {max_removed_share: 2}
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
    assert "protection.max_removed_share: Input should be less than or equal to 1" in text
    assert "registries[3]" in text and "etcd" in text and "'static', 'zookeeper', 'consul'" in text


def test_zookeeper_security_settings_name_their_field(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("x\n")
    text = """
registries:
  - kind: zookeeper
    name: z
    hosts: "127.0.0.1:2281"
    sasl: {mechanism: GSSAPI, username: mesh, password: {value: x}}
    tls: {cert_file: c.pem}
    auth_retry: 100ms
"""
    problems = "\n".join(problems_of(tmp_path, text))
    assert "registries[0].sasl.mechanism: Input should be 'DIGEST-MD5'" in problems
    assert "registries[0].tls: cert_file and key_file go together" in problems
    assert "registries[0].auth_retry: must be between 1s and 24h" in problems


def test_a_hold_cannot_end_above_where_it_starts(tmp_path: Path) -> None:
    text = "protection: {max_removed_share: 0.3, release_share: 0.4}\nregistries: []\n"
    assert problems_of(tmp_path, text) == [
        "protection: release_share (0.4) must be at most max_removed_share (0.3)"
    ]


def test_unknown_keys_and_bad_yaml(tmp_path: Path) -> None:
    assert any("servr" in p for p in problems_of(tmp_path, "servr: {}\nregistries: []\n"))
    assert any("not valid YAML" in p for p in problems_of(tmp_path, "a: [\n"))
    assert any("expected a mapping" in p for p in problems_of(tmp_path, "- 1\n"))


def test_relative_paths_of_every_kind_follow_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One mechanism for every file path of every kind, not a hand-kept list."""
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("s.yaml", "ca.pem", "c.pem", "k.pem", "token", "digest", "tls.pem", "tls.key"):
        (etc / name).write_text("services: []\n" if name == "s.yaml" else "x\n")
    config = etc / "c.yaml"
    config.write_text(
        """
server: {tls: {cert_file: tls.pem, key_file: tls.key}}
registries:
  - {kind: static, name: s, path: s.yaml}
  - kind: consul
    name: c
    token: {file: token}
    tls: {ca_file: ca.pem, cert_file: c.pem, key_file: k.pem}
  - kind: zookeeper
    name: z
    hosts: "127.0.0.1:2281"
    auth: {credential: {file: digest}}
    sasl: {username: mesh, password: {file: token}}
    tls: {ca_file: ca.pem, cert_file: c.pem, key_file: k.pem, server_name: zk.example}
"""
    )
    monkeypatch.chdir(tmp_path)  # not the config's folder
    settings = load_settings(Path("etc/c.yaml"), {})
    static, consul, zk = settings.registries
    assert isinstance(static, StaticRegistrySettings) and static.path == etc / "s.yaml"
    assert isinstance(consul, ConsulRegistrySettings) and consul.tls and consul.token
    assert (consul.tls.ca_file, consul.tls.cert_file, consul.tls.key_file) == (
        etc / "ca.pem",
        etc / "c.pem",
        etc / "k.pem",
    )
    assert consul.token.file == etc / "token"
    assert isinstance(zk, ZooKeeperRegistrySettings) and zk.auth
    assert zk.auth.credential.file == etc / "digest"
    assert zk.sasl and zk.sasl.password.file == etc / "token"
    assert zk.tls and (zk.tls.ca_file, zk.tls.key_file) == (etc / "ca.pem", etc / "k.pem")
    assert zk.tls.server_name == "zk.example"
    assert settings.server.tls and settings.server.tls.cert_file == etc / "tls.pem"


def test_a_config_file_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"registries: []\n# caf\xe9 au lait\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("server:\n  listen: [1\n")
    cases = {
        latin1: f"{latin1}: not UTF-8: byte 0xe9 at line 2, column 6 (save the file as UTF-8)",
        broken: f"{broken}: not valid YAML at line 3, column 1: expected ',' or ']', but got "
        "'<stream end>'; while parsing a flow sequence",
        tmp_path: f"{tmp_path}: cannot read: is a directory",
    }
    for path, said in cases.items():
        with pytest.raises(ConfigError) as err:
            load_settings(path, {})
        assert err.value.problems == [said]


@pytest.mark.parametrize(
    ("listen", "said"),
    [
        ("256.1.1.1:15051", "server.listen: 256.1.1.1 is not an IPv4 address"),
        ("::1:15051", "server.listen: ::1: an IPv6 address goes in brackets, e.g. [::1]:15051"),
        ("[::g]:15051", "server.listen: ::g is not an IPv6 address"),
        ("mcp_server:15051", "server.listen: mcp_server is not a host name"),
    ],
)
def test_an_address_with_a_bad_host_names_the_field(tmp_path: Path, listen: str, said: str) -> None:
    problems = problems_of(tmp_path, f"server: {{listen: '{listen}'}}\nregistries: []\n")
    assert len(problems) == 1 and problems[0].startswith(said), problems


def test_good_hosts_pass(tmp_path: Path) -> None:
    for listen in ("0.0.0.0:1", "[::]:1", "[::1]:15051", "mcp.istio-system.svc:15051", "a:1"):
        config = tmp_path / "c.yaml"
        config.write_text(f"server: {{listen: '{listen}'}}\nregistries: []\n")
        assert load_settings(config, {}).server.listen == listen


def test_a_directory_where_a_file_belongs(tmp_path: Path) -> None:
    (tmp_path / "services").mkdir()
    problems = problems_of(tmp_path, "registries:\n  - {kind: static, name: s, path: services}\n")
    assert problems == [f"registries[0].path: {tmp_path / 'services'} is a directory, not a file"]


def test_offline_checks_all_but_that_secret_and_tls_files_exist(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("services: []\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        """
server: {tls: {cert_file: secrets/tls/crt, key_file: secrets/tls/key}, listen: '0.0.0.0:1'}
registries:
  - {kind: static, name: s, path: s.yaml}
  - {kind: consul, name: c, token: {file: secrets/consul/token}}
"""
    )
    with pytest.raises(ConfigError) as err:
        load_settings(config, {})
    assert len(err.value.problems) == 3  # both TLS files and the token
    settings = load_settings(config, {}, offline=True)
    assert settings.server.tls is not None
    # what is not a secret must still exist offline (a static file is in the ConfigMap)
    (tmp_path / "s.yaml").unlink()
    with pytest.raises(ConfigError) as err:
        load_settings(config, {}, offline=True)
    assert err.value.problems == [f"registries[0].path: file not found: {tmp_path / 's.yaml'}"]


def test_window_and_recovery_grace(tmp_path: Path) -> None:
    """protection.window (1m) and recovery_grace: each kind's own default, one duration for
    every kind, or some kinds named; an unknown kind or a bad duration names the field."""
    config = tmp_path / "c.yaml"
    config.write_text("registries: []\n")
    protection = load_settings(config, {}).protection
    assert protection.window == 60.0
    defaults = {k: protection.grace_for(k) for k in KINDS}
    assert defaults == {
        "static": 0.0,
        "zookeeper": 60.0,
        "consul": 90.0,
        "nacos": 30.0,
        "eureka": 90.0,
        "cloudmap": 0.0,
    }
    config.write_text("protection: {recovery_grace: 45s, window: 0s}\nregistries: []\n")
    protection = load_settings(config, {}).protection
    assert protection.window == 0.0
    assert {protection.grace_for(k) for k in KINDS} == {45.0}
    config.write_text("protection: {recovery_grace: {eureka: 2m}}\nregistries: []\n")
    protection = load_settings(config, {}).protection
    assert (protection.grace_for("eureka"), protection.grace_for("nacos")) == (120.0, 30.0)
    bad = "protection: {recovery_grace: {etcd: 1m}, window: soon}\nregistries: []\n"
    text = "\n".join(problems_of(tmp_path, bad))
    assert "protection.recovery_grace: unknown registry kind etcd" in text
    assert "protection.window: expected a duration" in text
