"""ZooKeeper as secured estates run it, against a real ZooKeeper 3.8: TLS on the secure
client port (the Netty server, PEM key and trust stores, client certificates required) and
SASL DIGEST-MD5 (a JAAS `Server` section with DigestLoginModule), one server for the module.

What must hold: the registry reads over TLS + SASL what only the SASL user may read; a
refused password is shown (status, page, metric) and not retried until the password file
changes; TLS files are read again for each connection, so fixing or rotating them needs no
restart; `server_name` is the name checked against the servers' certificates."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from kazoo.client import KazooClient
from kazoo.security import ACL, Id, Permissions

from mcpserver.app import App
from mcpserver.registry.view import Status
from mcpserver.registry.zookeeper.connection import Connection, ConnectTimeoutError, Credentials
from mcpserver.xds.client import IstiodLikeClient
from testbed.zookeeper import (
    SUPER_PASSWORD,
    ServerTLS,
    ZooKeeper,
    make_keystore,
    tls_handshake_ok,
)
from tests.certs import make_certs
from tests.conftest import (
    AppFactory,
    ClientFactory,
    admin_get,
    eventually,
    registry_errors,
    settings_for,
)
from tests.integration.conftest import ServeFactory

IFACE = "org.example.SecureService"
HOST = "org.example.secureservice"
SASL_ONLY = [ACL(Permissions.ALL, Id("sasl", "mesh"))]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certs(tmp_path_factory.mktemp("zk-certs"))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA of nobody's, and a client certificate it signed."""
    return make_certs(tmp_path_factory.mktemp("other-certs"))


@pytest.fixture(scope="module")
def secure_zookeeper(
    tmp_path_factory: pytest.TempPathFactory, certs: dict[str, Path]
) -> Iterator[ZooKeeper]:
    server = ZooKeeper(
        tmp_path_factory.mktemp("zk-secure"),
        tls=ServerTLS(make_keystore(certs), certs["ca"]),
        sasl_users={"mesh": "s3cret"},
    )
    try:
        server.start()
        # the secure port accepts TCP before its TLS server answers
        assert server.process is not None
        server.process.wait_ready(
            "ZooKeeper's TLS port", lambda: tls_handshake_ok(server.secure_port or 0, certs), 30
        )
        writer = KazooClient(
            hosts=server.address, auth_data=[("digest", f"super:{SUPER_PASSWORD}")]
        )
        writer.start(15)
        try:
            url = quote(f"dubbo://10.9.0.1:20880/{IFACE}?interface={IFACE}&side=provider", safe="")
            for path in ("/sasl", f"/sasl/{IFACE}", f"/sasl/{IFACE}/providers"):
                writer.create(path, b"", acl=SASL_ONLY)
            writer.create(f"/sasl/{IFACE}/providers/{url}", b"", acl=SASL_ONLY)
        finally:
            writer.stop()
            writer.close()
        yield server
    finally:
        server.stop()


def copy_files(certs: dict[str, Path], directory: Path, **names: str) -> dict[str, Path]:
    """Our TLS files (ca, client, client-key) in `directory`, each copied from `certs[name]`."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for role, source in names.items():
        files[role] = directory / f"{role}.pem"
        replace_file(files[role], certs[source])
    return files


def replace_file(target: Path, source: Path) -> None:
    """Atomically, as a Secret volume swaps its files."""
    staged = target.with_suffix(".new")
    shutil.copyfile(source, staged)
    staged.replace(target)


def entry(server: ZooKeeper, files: dict[str, Path], **extra: Any) -> dict[str, Any]:
    return {
        "kind": "zookeeper",
        "name": "zk",
        "hosts": server.secure_address,
        "namespace": "dubbo",
        "roots": ["/sasl"],
        "services_roots": [],
        "mapping": False,
        "session_timeout": "4s",
        "connect_timeout": "3s",
        "tls": {
            "ca_file": str(files["ca"]),
            "cert_file": str(files["client"]),
            "key_file": str(files["client-key"]),
        },
        **extra,
    }


def endpoints(client: IstiodLikeClient) -> list[str]:
    found = {r.name: r for r in client.latest("ServiceEntry")}
    if HOST not in found:
        return []
    return sorted(e.address for e in found[HOST].service_entry.endpoints)


async def registry_json(app: App) -> dict[str, Any]:
    _, text = await admin_get(app.admin.port, "/debug/registries")
    found: dict[str, Any] = next(r for r in json.loads(text) if r["name"] == "zk")
    return found


async def test_tls_and_sasl_read_what_only_the_sasl_user_may(
    tmp_path: Path, secure_zookeeper: ZooKeeper, certs: dict[str, Path], serve: ServeFactory
) -> None:
    files = copy_files(
        certs, tmp_path / "tls", ca="ca", client="client", **{"client-key": "client-key"}
    )
    (tmp_path / "password").write_text("s3cret\n")
    sasl = {"username": "mesh", "password": {"file": str(tmp_path / "password")}}
    settings = settings_for(tmp_path, entry(secure_zookeeper, files, sasl=sasl))
    app, client = await serve(settings)
    assert endpoints(client) == ["10.9.0.1"]
    assert app.registries[0].view().status is Status.READY
    assert "s3cret" not in repr(settings)


async def test_a_refused_password_waits_for_the_file_to_change(
    tmp_path: Path,
    secure_zookeeper: ZooKeeper,
    certs: dict[str, Path],
    start_app: AppFactory,
    connect: ClientFactory,
) -> None:
    """AUTH_FAILED is shown on /debug/registries, the status page and the metric, once; the
    client does not knock again (the connection backoff would, within a second) until the
    password file changes, and then reads at once."""
    files = copy_files(
        certs, tmp_path / "tls", ca="ca", client="client", **{"client-key": "client-key"}
    )
    password = tmp_path / "password"
    password.write_text("wrong\n")
    sasl = {"username": "mesh", "password": {"file": str(password)}}
    app = await start_app(settings_for(tmp_path, entry(secure_zookeeper, files, sasl=sasl)))
    registry = app.registries[0]
    await eventually(lambda: registry.view().status is Status.DEGRADED, within=20)
    shown = await registry_json(app)
    assert shown["status"] == "degraded"
    assert shown["detail"] == (
        f"authentication refused: {secure_zookeeper.secure_address}: SASL DIGEST-MD5 as mesh "
        "refused; tried again when a credential or TLS file changes, or in 5m0s; nothing "
        "served from it yet"
    )
    _, page = await admin_get(app.admin.port, "/")
    assert "authentication refused" in page
    assert registry_errors(app, "auth-failed") == 1
    # the refusal is final for this password: 3 s (the connection backoff would have tried
    # ten times) without another attempt
    await asyncio.sleep(3)
    assert registry_errors(app, "auth-failed") == 1
    assert "wrong" not in json.dumps(shown)

    password.write_text("s3cret\n")
    await eventually(lambda: registry.view().status is Status.READY, within=15)
    client = await connect(app.port)
    await client.wait_for(lambda c: endpoints(c) == ["10.9.0.1"], 15)
    assert registry_errors(app, "auth-failed") == 1


async def test_tls_files_are_read_again_for_each_connection(
    tmp_path: Path,
    secure_zookeeper: ZooKeeper,
    certs: dict[str, Path],
    other_certs: dict[str, Path],
    start_app: AppFactory,
    connect: ClientFactory,
) -> None:
    """A CA that does not sign the server's certificate, then a client certificate the server
    does not trust: each named in the registry's detail; each fixed by replacing the file,
    taken at the next connection without a restart."""
    files = copy_files(
        other_certs, tmp_path / "tls", ca="ca", client="client", **{"client-key": "client-key"}
    )
    (tmp_path / "password").write_text("s3cret\n")
    sasl = {"username": "mesh", "password": {"file": str(tmp_path / "password")}}
    app = await start_app(settings_for(tmp_path, entry(secure_zookeeper, files, sasl=sasl)))
    registry = app.registries[0]

    def detail() -> str:
        return registry.view().detail

    await eventually(lambda: "TLS: certificate verify failed" in detail(), within=20)
    assert registry.view().status is Status.DEGRADED
    replace_file(files["ca"], certs["ca"])  # our side trusts the server now...
    # ... and the server refuses our client certificate
    await eventually(lambda: "TLS: the server refused our client certificate" in detail(), 20)
    replace_file(files["client"], certs["client"])
    replace_file(files["client-key"], certs["client-key"])
    await eventually(lambda: registry.view().status is Status.READY, within=20)
    client = await connect(app.port)
    await client.wait_for(lambda c: endpoints(c) == ["10.9.0.1"], 15)


def test_server_name_is_the_name_checked(
    secure_zookeeper: ZooKeeper, certs: dict[str, Path]
) -> None:
    """The server's certificate names 127.0.0.1, localhost and server.dc1.consul."""
    import ssl

    context = ssl.create_default_context(cafile=str(certs["ca"]))
    context.load_cert_chain(str(certs["client"]), str(certs["client-key"]))
    wrong = Connection(
        secure_zookeeper.secure_address,
        4.0,
        Credentials(tls=context, server_name="nobody.example"),
    )
    try:
        with pytest.raises(ConnectTimeoutError, match="Hostname mismatch"):
            wrong.start(2)
    finally:
        wrong.close()
    right = Connection(
        secure_zookeeper.secure_address,
        4.0,
        Credentials(tls=context, server_name="server.dc1.consul"),
    )
    try:
        right.start(10)
        assert right.server == secure_zookeeper.secure_address
    finally:
        right.close()
