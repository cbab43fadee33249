"""SASL DIGEST-MD5 (RFC 2831), the client's side, as ZooKeeper's SASL login asks for it.

ZooKeeper servers configured with `SASLAuthenticationProvider` and a JAAS `Server` section
using `DigestLoginModule` authenticate clients with DIGEST-MD5: the client sends an empty
token, the server answers a challenge (realm, nonce, qop, charset, algorithm), the client
answers a digest of its password bound to both nonces, and the server proves it knows the
password too (`rspauth`). Only `qop=auth` is spoken (authentication, no integrity or
confidentiality layer: use TLS for that), as the ZooKeeper server offers by default.

ZooKeeper fixes the names involved: the service is `zookeeper` and the server name (the
realm the server offers, and the host in `digest-uri`) is `zk-sasl-md5`, whatever host the
server runs on (org.apache.zookeeper.util.SecurityUtils, ZooKeeperSaslClient).

Pure: no I/O. The connection sends and receives the tokens (`connection.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SERVICE = "zookeeper"
SERVER_NAME = "zk-sasl-md5"
NONCE_COUNT = "00000001"  # one authentication per exchange: the first use of the nonce


class SaslError(Exception):
    """The exchange cannot go on: the server's challenge or proof is not what it must be.
    The message is safe to show (it never holds the password)."""


def parse_challenge(challenge: bytes) -> dict[str, list[str]]:
    """`key=value,key="quoted, \\"value\\""` -> every value of each key (lower-cased keys;
    `realm` may be given more than once)."""
    try:
        text = challenge.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError("the server's SASL challenge is not UTF-8") from None
    directives: dict[str, list[str]] = {}
    pos, end = 0, len(text)
    while pos < end:
        while pos < end and text[pos] in " \t,":
            pos += 1
        if pos >= end:
            break
        equals = text.find("=", pos)
        if equals < 0:
            raise SaslError(f"malformed SASL challenge near {text[pos : pos + 20]!r}")
        key = text[pos:equals].strip().lower()
        pos = equals + 1
        if pos < end and text[pos] == '"':
            pos += 1
            value = []
            while pos < end and text[pos] != '"':
                if text[pos] == "\\" and pos + 1 < end:
                    pos += 1
                value.append(text[pos])
                pos += 1
            if pos >= end:
                raise SaslError("unterminated quoted value in the SASL challenge")
            pos += 1  # the closing quote
            item = "".join(value)
        else:
            comma = text.find(",", pos)
            comma = end if comma < 0 else comma
            item = text[pos:comma].strip()
            pos = comma
        directives.setdefault(key, []).append(item)
    return directives


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _encode(value: str, utf8: bool) -> bytes:
    """RFC 2831 2.1.2.1: with charset=utf-8, a string every character of which fits in ISO
    8859-1 is still hashed as ISO 8859-1, and as UTF-8 otherwise (the server does the same)."""
    try:
        return value.encode("iso-8859-1")
    except UnicodeEncodeError:
        if not utf8:
            raise SaslError(
                "the user name or password is not ISO 8859-1 and the server offers no UTF-8"
            ) from None
        return value.encode("utf-8")


def _hex_md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class DigestMD5:
    """One DIGEST-MD5 authentication, as a client: `respond()` to the server's challenge,
    then `verify()` the server's final message."""

    def __init__(
        self,
        username: str,
        password: str,
        *,
        service: str = SERVICE,
        server_name: str = SERVER_NAME,
        cnonce: str | None = None,
    ) -> None:
        self._username = username
        self._password = password
        self._digest_uri = f"{service}/{server_name}"
        self._cnonce = cnonce or secrets.token_hex(16)
        self._expected_rspauth = ""

    def respond(self, challenge: bytes) -> bytes:
        """The digest-response to the server's digest-challenge."""
        directives = parse_challenge(challenge)
        nonces = directives.get("nonce", [])
        if len(nonces) != 1 or not nonces[0]:
            raise SaslError("the server's SASL challenge has no nonce")
        if [a.lower() for a in directives.get("algorithm", [])] != ["md5-sess"]:
            raise SaslError("the server's SASL challenge does not ask for algorithm=md5-sess")
        offered = {
            q.strip().lower() for item in directives.get("qop", ["auth"]) for q in item.split(",")
        }
        if "auth" not in offered:
            raise SaslError(
                f"the server offers SASL qop {','.join(sorted(offered))}; only auth is spoken"
            )
        utf8 = [c.lower() for c in directives.get("charset", [])] == ["utf-8"]
        nonce = nonces[0]
        realm = (directives.get("realm") or [""])[0]
        secret = hashlib.md5(
            b":".join(
                (_encode(self._username, utf8), _encode(realm, utf8), _encode(self._password, utf8))
            ),
            usedforsecurity=False,
        ).digest()
        a1 = secret + f":{nonce}:{self._cnonce}".encode()
        ha1 = _hex_md5(a1)

        def proof(a2: str) -> str:
            text = f"{ha1}:{nonce}:{NONCE_COUNT}:{self._cnonce}:auth:{_hex_md5(a2.encode())}"
            return _hex_md5(text.encode())

        response = proof(f"AUTHENTICATE:{self._digest_uri}")
        self._expected_rspauth = proof(f":{self._digest_uri}")
        fields = [
            f"username={_quote(self._username)}",
            f"realm={_quote(realm)}",
            f"nonce={_quote(nonce)}",
            f"cnonce={_quote(self._cnonce)}",
            f"nc={NONCE_COUNT}",
            "qop=auth",
            f"digest-uri={_quote(self._digest_uri)}",
            f"response={response}",
        ]
        if utf8:
            fields.append("charset=utf-8")
        return ",".join(fields).encode("utf-8")

    def verify(self, final: bytes) -> None:
        """The server's proof that it knows the password too (`rspauth=...`)."""
        if not self._expected_rspauth:
            raise SaslError("no SASL challenge was answered yet")
        proofs = parse_challenge(final).get("rspauth", [])
        if len(proofs) != 1 or not hmac.compare_digest(proofs[0], self._expected_rspauth):
            raise SaslError("the server's SASL proof (rspauth) does not match: not our server")
