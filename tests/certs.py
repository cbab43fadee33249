"""Test certificates made with openssl: a CA, a server certificate for 127.0.0.1 and
localhost, and a client certificate."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def make_certs(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed for the TLS test")
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        name: directory / f"{name}.pem"
        for name in ("ca", "ca-key", "server", "server-key", "client", "client-key")
    }

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(files["ca-key"]),
        "-out",
        str(files["ca"]),
    )
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:server.dc1.consul,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        request = directory / f"{name}.csr"
        extfile = directory / f"{name}.ext"
        extfile.write_text(ext + "\n")
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(files[f"{name}-key"]),
            "-out",
            str(request),
        )
        run(
            "x509",
            "-req",
            "-in",
            str(request),
            "-CA",
            str(files["ca"]),
            "-CAkey",
            str(files["ca-key"]),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            str(extfile),
            "-out",
            str(files[name]),
        )
    return files
