"""Tokens signed by an identity provider: public keys, key sets, and when to fetch again."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import math
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from triows._core.auth import AuthError, verify_token
from triows._core.jwt_keys import (
    KeySetCache,
    VerifyingKey,
    keys_from_jwks,
    public_key_from_pem,
    token_kid,
)

NOW = 1_700_000_000.0
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_pem(private: Any) -> str:
    return str(
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def jwk(private: Any, kid: str, **extra: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(private, rsa.RSAPrivateKey) else None
    if algorithm is None:
        data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    else:
        data = json.loads(algorithm.to_jwk(private.public_key()))
    return {**data, "kid": kid, **extra}


def forged_hs256(claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 token "signed" with a public key as its HMAC secret (PyJWT refuses to make
    one, so it is made by hand): the algorithm confusion attack."""

    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = part(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{part(signature)}"


def check(token: str, key: VerifyingKey, **options: Any) -> str | None:
    principal = verify_token(token, key.key, algorithms=key.algorithms, now=NOW, **options)
    return principal.user_id


def test_rs256_and_es256_tokens_verify_with_the_public_key() -> None:
    rsa_key = public_key_from_pem(public_pem(RSA_KEY))
    ec_key = public_key_from_pem(public_pem(EC_KEY))
    assert "RS256" in rsa_key.algorithms
    assert ec_key.algorithms == ("ES256",)
    assert check(jwt.encode({"sub": "ann"}, RSA_KEY, algorithm="RS256"), rsa_key) == "ann"
    assert check(jwt.encode({"sub": "bob"}, EC_KEY, algorithm="ES256"), ec_key) == "bob"
    # Another provider's key does not verify.
    with pytest.raises(AuthError, match="InvalidSignatureError"):
        check(jwt.encode({"sub": "x"}, rsa.generate_private_key(65537, 2048), "RS256"), rsa_key)


def test_a_certificate_gives_its_public_key() -> None:
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "idp")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(RSA_KEY.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1))
        .not_valid_after(datetime.datetime(2040, 1, 1))
        .sign(RSA_KEY, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    key = public_key_from_pem(pem)
    assert check(jwt.encode({"sub": "ann"}, RSA_KEY, algorithm="RS256"), key) == "ann"


def test_algorithm_confusion_is_refused() -> None:
    """HS256 with the public key as the secret would verify if the token chose the algorithm."""
    pem = public_pem(RSA_KEY)
    key = public_key_from_pem(pem)
    forged = forged_hs256({"sub": "mallory"}, pem.encode())
    with pytest.raises(AuthError, match="algorithm not allowed"):
        check(forged, key)
    unsigned = jwt.encode({"sub": "mallory"}, "", algorithm="none")
    with pytest.raises(AuthError, match="algorithm not allowed"):
        check(unsigned, key)
    # An EC key verifies its own curve's algorithm only.
    ec_key = public_key_from_pem(public_pem(EC_KEY))
    with pytest.raises(AuthError, match="algorithm not allowed"):
        check(jwt.encode({"sub": "x"}, RSA_KEY, algorithm="RS256"), ec_key)


def test_claims_are_checked_as_for_hs256() -> None:
    key = public_key_from_pem(public_pem(RSA_KEY))

    def token(**claims: Any) -> str:
        return jwt.encode({"sub": "ann", **claims}, RSA_KEY, algorithm="RS256")

    with pytest.raises(AuthError, match="expired"):
        check(token(exp=NOW - 1), key)
    with pytest.raises(AuthError, match="wrong audience"):
        check(token(aud="other"), key, audience="chat")
    with pytest.raises(AuthError, match="wrong issuer"):
        check(token(iss="evil"), key, issuer="https://id.example")
    with pytest.raises(AuthError, match="no 'exp'"):
        check(token(), key, require_exp=True)
    with pytest.raises(AuthError, match="older than"):
        check(token(iat=NOW - 100), key, max_age=60)
    ok = token(aud="chat", iss="https://id.example", exp=NOW + 60, iat=NOW)
    assert check(ok, key, audience="chat", issuer="https://id.example", max_age=60) == "ann"


def test_unusable_pem_is_refused_with_the_reason() -> None:
    private = RSA_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    with pytest.raises(ValueError, match="private key"):
        public_key_from_pem(private)
    with pytest.raises(ValueError, match="not a PEM public key"):
        public_key_from_pem("hello")
    with pytest.raises(ValueError, match="too short"):
        public_key_from_pem(public_pem(rsa.generate_private_key(65537, 1024)))
    with pytest.raises(ValueError, match="curve"):
        public_key_from_pem(public_pem(ec.generate_private_key(ec.SECP256K1())))


def test_a_key_set_keeps_signing_keys_by_kid_and_never_a_symmetric_one() -> None:
    document = {
        "keys": [
            jwk(RSA_KEY, "r1"),
            jwk(EC_KEY, "e1"),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "h1"},  # would make HS256 acceptable
            {**jwk(RSA_KEY, "enc"), "use": "enc"},
            {"kty": "nope", "kid": "odd"},
            "not a key",
        ]
    }
    keys = keys_from_jwks(document)
    assert set(keys) == {"r1", "e1"}
    assert keys["r1"].algorithms == ("RS256",)
    assert keys["e1"].algorithms == ("ES256",)
    token = jwt.encode({"sub": "ann"}, RSA_KEY, algorithm="RS256", headers={"kid": "r1"})
    assert token_kid(token) == "r1"
    assert check(token, keys["r1"]) == "ann"
    # A JWKS key's "alg" pins it: PS256 tokens are not taken by an RS256 key.
    with pytest.raises(AuthError, match="algorithm not allowed"):
        check(jwt.encode({"sub": "ann"}, RSA_KEY, algorithm="PS256"), keys["r1"])
    bad_documents: list[Any] = [{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, {"keys": "x"}, []]
    for bad in bad_documents:
        with pytest.raises(ValueError, match="JWKS"):
            keys_from_jwks(bad)
    with pytest.raises(AuthError, match="DecodeError"):
        token_kid("garbage")


def test_the_cache_fetches_at_most_once_per_interval() -> None:
    cache = KeySetCache(min_interval=10, ttl=300)
    assert cache.may_fetch(0)
    assert cache.next_refresh(0) == -math.inf  # at once
    cache.attempted(100)
    assert not cache.may_fetch(109.9)
    assert cache.may_fetch(110)
    cache.stored({"a": VerifyingKey(None, ("RS256",))}, 101)
    assert cache.find("a") is not None
    assert cache.find(None) is not None  # one key: a token without kid means it
    assert cache.find("b") is None
    assert cache.next_refresh(150) == 401  # at the ttl
    cache.attempted(401)
    cache.failed("down")
    assert cache.find("a") is not None  # a failed fetch keeps what worked
    assert cache.next_refresh(405) == 411  # again after the interval, not at once
    cache.stored({"a": VerifyingKey(None, ("RS256",)), "b": VerifyingKey(None, ("RS256",))}, 411)
    assert cache.find(None) is None  # two keys: a token must say which
    assert cache.error is None


def test_a_key_set_leaves_out_what_a_pem_key_would_be_refused_for() -> None:
    # One rule for both ways to give keys: a 1024-bit RSA key (or a curve that is not
    # P-256/384/521) from a JWKS was kept, while the same key as --jwt-public-key is refused.
    weak = rsa.generate_private_key(65537, 1024)
    odd_curve = {**jwk(EC_KEY, "k1"), "crv": "secp256k1"}
    keys = keys_from_jwks({"keys": [jwk(weak, "weak"), odd_curve, jwk(RSA_KEY, "r1")]})
    assert set(keys) == {"r1"}
