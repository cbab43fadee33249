"""The ZooKeeper registry's credentials, read from the files its settings name, afresh when
they change.

The client (`connection.py`) asks for credentials at each new connection. Certificates and
passwords are rotated in place (a Kubernetes Secret volume swaps a symlink), so each ask
checks the files' identity (inode, size, mtime) and re-reads them when it moved: a rotated
client certificate is used from the next connection, and a client refused by the servers
tries again as soon as the password file or a TLS file changes. A set of files that cannot
be used (a half-written key, a certificate that does not match it) is refused with one
WARNING and the previous set stays in use, as the server's own TLS files are reloaded
(docs/operations.md "TLS certificate rotation"); at the first load there is no previous set, and the
connection fails with the reason until the files are fixed.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Hashable, Mapping
from pathlib import Path

from mcpserver.config import SecretSettings
from mcpserver.registry.zookeeper.config import ZooKeeperRegistrySettings
from mcpserver.registry.zookeeper.connection import Credentials

log = logging.getLogger("mcpserver.registry.zookeeper")


def _identity(path: Path) -> Hashable:
    try:
        st = path.stat()  # follows the symlink a Secret volume swaps
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _secret_file(secret: SecretSettings | None) -> list[Path]:
    return [secret.file] if secret is not None and secret.file is not None else []


class SettingsCredentials:
    """A `connection.CredentialSource` over a ZooKeeper registry's settings."""

    def __init__(self, settings: ZooKeeperRegistrySettings, env: Mapping[str, str]) -> None:
        self._settings = settings
        self._env = env
        tls = settings.tls
        self._files: list[Path] = [
            *_secret_file(settings.auth.credential if settings.auth else None),
            *_secret_file(settings.sasl.password if settings.sasl else None),
            *(p for p in ((tls.ca_file, tls.cert_file, tls.key_file) if tls else ()) if p),
        ]
        self._loaded: Credentials | None = None
        self._loaded_version: Hashable = None
        self._refused_version: Hashable = None

    def version(self) -> Hashable:
        return tuple(_identity(path) for path in self._files)

    def load(self) -> Credentials:
        version = self.version()
        if self._loaded is not None and version in (self._loaded_version, self._refused_version):
            return self._loaded
        try:
            credentials = self._read()
        except (OSError, ValueError, ssl.SSLError) as err:
            if self._loaded is None:
                raise
            if version != self._refused_version:
                log.warning(
                    "ZooKeeper credential files changed but cannot be used registry=%s: %s; "
                    "keeping the previous ones",
                    self._settings.name,
                    err,
                )
                self._refused_version = version
            return self._loaded
        if self._loaded is not None:
            log.info("ZooKeeper credential files reloaded registry=%s", self._settings.name)
        self._loaded, self._loaded_version = credentials, version
        return credentials

    def _read(self) -> Credentials:
        s = self._settings
        digest = None
        if s.auth is not None:
            digest = (s.auth.scheme, s.auth.credential.resolve(self._env))
            if not digest[1]:
                raise ValueError("auth.credential is empty")
        sasl = None
        if s.sasl is not None:
            password = s.sasl.password.resolve(self._env)
            if not password:
                raise ValueError("sasl.password is empty")
            sasl = (s.sasl.username, password)
        context = None
        if s.tls is not None:
            context = ssl.create_default_context(
                cafile=os.fspath(s.tls.ca_file) if s.tls.ca_file else None
            )
            if s.tls.cert_file is not None and s.tls.key_file is not None:
                context.load_cert_chain(os.fspath(s.tls.cert_file), os.fspath(s.tls.key_file))
        server_name = s.tls.server_name if s.tls is not None else None
        return Credentials(digest, sasl, context, server_name)
