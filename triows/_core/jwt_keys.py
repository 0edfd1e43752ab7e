"""Public keys for tokens signed by an identity provider (RS256, ES256 and their kin).

Sans-I/O: a PEM key read into a :class:`VerifyingKey`, a JWKS document read into keys by
``kid``, and :class:`KeySetCache`, the rule for when a key set may be fetched again (``now`` is
an argument). The fetch itself is the server's (:mod:`triows._server.token_keys`).

The algorithm is never taken from the token alone: each key names the algorithms it may
verify, all asymmetric, so a token that says ``HS256`` and was "signed" with the public key
as an HMAC secret (the classic algorithm confusion) is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .auth import AuthError

RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
#: Every algorithm a public key may verify; symmetric ones (HS*) and ``none`` never.
ASYMMETRIC = frozenset({*RSA_ALGORITHMS, *_EC_ALGORITHMS.values(), "EdDSA"})


@attrs.frozen
class VerifyingKey:
    """A public key and the algorithms a token signed with its private half may name."""

    key: Any = attrs.field(repr=False)
    algorithms: tuple[str, ...]


def _algorithms_of(key: Any) -> tuple[str, ...]:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError(f"an RSA key of {key.key_size} bits is too short (2048 at least)")
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise ValueError(f"the curve {key.curve.name} is not one of P-256, P-384, P-521")
        return (algorithm,)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ("EdDSA",)
    raise ValueError(f"a {type(key).__name__} cannot verify tokens (RSA, EC or Ed25519 only)")


def public_key_from_pem(pem: str) -> VerifyingKey:
    """A PEM public key (``BEGIN PUBLIC KEY``, ``BEGIN RSA PUBLIC KEY``) or certificate
    (``BEGIN CERTIFICATE``, as some providers publish theirs); ``ValueError`` with the reason
    otherwise. A private key is refused: the server never needs one, and should not hold it."""
    data = pem.strip().encode()
    if b"PRIVATE KEY-----" in data:
        raise ValueError("is a private key; give the provider's public key (or certificate)")
    try:
        if data.startswith(b"-----BEGIN CERTIFICATE-----"):
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ValueError(
            "is not a PEM public key or certificate (-----BEGIN PUBLIC KEY----- ...)"
        ) from None
    return VerifyingKey(key, _algorithms_of(key))


def keys_from_jwks(document: Any) -> dict[str | None, VerifyingKey]:
    """The signing keys of a JWKS document, by ``kid``; keys this server cannot use (symmetric
    ``oct`` keys, encryption keys, unknown types, and what :func:`public_key_from_pem` refuses:
    RSA under 2048 bits, other curves) are left out. ``ValueError`` when none is
    left: a document without usable keys must not replace keys that worked."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError('the JWKS is not a JSON object with a "keys" list')
    keys: dict[str | None, VerifyingKey] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            jwk = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        algorithm = jwk.algorithm_name
        if algorithm not in ASYMMETRIC:  # an ``oct`` key would make HS256 tokens acceptable
            continue
        try:
            _algorithms_of(jwk.key)  # what a PEM key is refused for: too short, odd curve
        except ValueError:
            continue
        kid = entry.get("kid")
        keys[kid if isinstance(kid, str) else None] = VerifyingKey(jwk.key, (algorithm,))
    if not keys:
        raise ValueError("the JWKS holds no usable signing key (RSA, EC or OKP, use 'sig')")
    return keys


def token_kid(token: str) -> str | None:
    """The ``kid`` a token's header names, read before its signature is checked (only to pick
    the key that will check it)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthError("invalid token: DecodeError") from None
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise AuthError("invalid token: 'kid' header is not a string")
    return kid


@attrs.define
class KeySetCache:
    """The keys of one JWKS, and when they may be fetched again.

    At most one fetch starts per ``min_interval`` seconds, whatever asks for it (a flood of
    tokens naming unknown ``kid``s costs the provider one request per interval); keys older
    than ``ttl`` are fetched again in the background, and kept if that fails (a provider's
    outage does not log everyone out).
    """

    min_interval: float
    ttl: float
    keys: dict[str | None, VerifyingKey] = attrs.field(factory=dict)
    fetched_at: float = -math.inf
    attempted_at: float = -math.inf
    #: Why the last fetch failed (``None`` after a success), for the refusals it causes.
    error: str | None = None

    def find(self, kid: str | None) -> VerifyingKey | None:
        if kid is None and len(self.keys) == 1:  # a provider with one key may omit ``kid``
            return next(iter(self.keys.values()))
        return self.keys.get(kid)

    def may_fetch(self, now: float) -> bool:
        return now - self.attempted_at >= self.min_interval

    def next_refresh(self, now: float) -> float:
        """When the background refresh should fetch next: at the ttl, or after a failure as
        soon as the interval allows."""
        due = self.fetched_at + self.ttl if self.error is None else now
        return max(due, self.attempted_at + self.min_interval)

    def attempted(self, now: float) -> None:
        self.attempted_at = now

    def stored(self, keys: dict[str | None, VerifyingKey], now: float) -> None:
        self.keys = keys
        self.fetched_at = now
        self.error = None

    def failed(self, reason: str) -> None:
        self.error = reason
