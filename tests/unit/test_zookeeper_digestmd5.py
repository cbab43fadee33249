"""SASL DIGEST-MD5 as ZooKeeper's SASL login speaks it: RFC 2831's own example, the proof
the server must give back, and challenges we must refuse rather than guess at."""

from __future__ import annotations

import pytest

from mcpserver.registry.zookeeper.digestmd5 import DigestMD5, SaslError, parse_challenge

pytestmark = pytest.mark.unit

RFC_CHALLENGE = (
    b'realm="elwood.innosoft.com",nonce="OA6MG9tEQGm2hh",qop="auth",'
    b"algorithm=md5-sess,charset=utf-8"
)


def rfc_client() -> DigestMD5:
    """RFC 2831 section 4's IMAP example."""
    return DigestMD5(
        "chris",
        "secret",
        service="imap",
        server_name="elwood.innosoft.com",
        cnonce="OA6MHXh6VqTrRk",
    )


def test_the_rfc_example_response_and_proof() -> None:
    client = rfc_client()
    response = parse_challenge(client.respond(RFC_CHALLENGE))
    assert response == {
        "username": ["chris"],
        "realm": ["elwood.innosoft.com"],
        "nonce": ["OA6MG9tEQGm2hh"],
        "cnonce": ["OA6MHXh6VqTrRk"],
        "nc": ["00000001"],
        "qop": ["auth"],
        "digest-uri": ["imap/elwood.innosoft.com"],
        "response": ["d388dad90d4bbd760a152321f2143af7"],
        "charset": ["utf-8"],
    }
    client.verify(b"rspauth=ea40f60335c427b5527b84dbabcdfffd")


def test_a_server_that_does_not_know_the_password_is_refused() -> None:
    client = rfc_client()
    client.respond(RFC_CHALLENGE)
    with pytest.raises(SaslError, match="rspauth"):
        client.verify(b"rspauth=00000000000000000000000000000000")
    with pytest.raises(SaslError, match="rspauth"):
        client.verify(b"")


def test_zookeeper_names_the_service_and_server() -> None:
    client = DigestMD5("mesh", "s3cret", cnonce="c")
    response = parse_challenge(client.respond(b'realm="zk-sasl-md5",nonce="n",algorithm=md5-sess'))
    assert response["digest-uri"] == ["zookeeper/zk-sasl-md5"]
    assert response["realm"] == ["zk-sasl-md5"]
    assert "charset" not in response  # the server offered none: ISO 8859-1


def test_quoted_values_with_commas_and_escapes() -> None:
    assert parse_challenge(b'realm="a,b",nonce="x\\"y", qop="auth,auth-int",stale=true') == {
        "realm": ["a,b"],
        "nonce": ['x"y'],
        "qop": ["auth,auth-int"],
        "stale": ["true"],
    }


def test_names_outside_latin_1_are_hashed_as_utf8_only_when_offered() -> None:
    challenge = b'realm="r",nonce="n",algorithm=md5-sess'
    with pytest.raises(SaslError, match="UTF-8"):
        DigestMD5("mesh", "pässwörd✓", cnonce="c").respond(challenge)
    latin = DigestMD5("mesh", "pässwörd", cnonce="c").respond(challenge)
    assert b"response=" in latin
    utf8 = DigestMD5("mesh", "pässwörd✓", cnonce="c").respond(challenge + b",charset=utf-8")
    assert b"charset=utf-8" in utf8


@pytest.mark.parametrize(
    ("challenge", "message"),
    [
        (b'realm="r",algorithm=md5-sess', "no nonce"),
        (b'nonce="n"', "md5-sess"),
        (b'nonce="n",algorithm=md5-sess,qop="auth-conf"', "only auth"),
        (b'nonce="n,algorithm=md5-sess', "unterminated"),
        (b"nonce", "malformed"),
        (b"\xff", "UTF-8"),
    ],
)
def test_challenges_we_cannot_answer(challenge: bytes, message: str) -> None:
    with pytest.raises(SaslError, match=message):
        DigestMD5("mesh", "s3cret").respond(challenge)


def test_the_password_never_shows_in_an_error() -> None:
    client = DigestMD5("mesh", "hunter2")
    for challenge in (b"nonce", b'nonce="n"'):
        with pytest.raises(SaslError) as caught:
            client.respond(challenge)
        assert "hunter2" not in str(caught.value)
