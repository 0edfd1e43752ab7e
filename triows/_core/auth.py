"""Who a connection is, and what its token lets it do.

Tokens are JWTs: HS256 with a shared secret, or signed by an identity provider whose public
key (RS256, ES256, ...; :mod:`triows._core.jwt_keys`) checks them. The clock is an argument
(``now``, unix seconds) so that expiry is checked exactly the same way in tests and in
production. Error messages never contain the
token: they end up in logs and in replies.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import attrs
import jwt

from .conninfo import InfoError, check_info
from .ids import has_utf8_form
from .names import PatternSet


class Action(enum.StrEnum):
    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"


class AuthError(Exception):
    """The token is missing, malformed, badly signed, expired or has wrong claims."""


def _patterns(value: Iterable[str] | PatternSet | None) -> PatternSet | None:
    if value is None or isinstance(value, PatternSet):
        return value
    return PatternSet(value)


@attrs.frozen(kw_only=True)
class Principal:
    """The authenticated identity of a connection.

    ``channels`` / ``publish`` restrict subscribing / publishing to channels matching one of
    their glob patterns; ``None`` means no restriction from the token (the application's
    ``authorize`` hook may still refuse).
    """

    user_id: str | None = None
    expires_at: float | None = None
    channels: PatternSet | None = attrs.field(default=None, converter=_patterns)
    publish: PatternSet | None = attrs.field(default=None, converter=_patterns)
    claims: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)
    #: What others see of this connection in presence (a name...): a JSON object of at most
    #: 1 KiB encoded (``triows._core.conninfo``); from the JWT claim ``info``.
    info: dict[str, Any] | None = attrs.field(default=None, eq=False, converter=check_info)
    #: When the ``authenticate`` hook vouched for this principal (unix seconds, set by the
    #: server at the handshake): what a revocation compares when there is no token ``iat``,
    #: so that a login after ``Server.revoke`` is good. ``None`` for a JWT's principal.
    authenticated_at: float | None = attrs.field(default=None, eq=False)

    def may(self, action: Action, channel: str) -> bool:
        patterns = self.channels if action is Action.SUBSCRIBE else self.publish
        return patterns is None or patterns.matches(channel)


ANONYMOUS = Principal()


def _pattern_claim(claims: dict[str, Any], name: str) -> list[str] | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise AuthError(f"claim '{name}' must be a list of strings")
    return value


def verify_token(
    token: str,
    key: Any,
    *,
    now: float,
    algorithms: tuple[str, ...] = ("HS256",),
    audience: str | None = None,
    issuer: str | None = None,
    leeway: float = 0.0,
    require_exp: bool = False,
    max_age: float = 0.0,
) -> Principal:
    """Check a token with ``key`` (the HS256 secret, or a public key with the ``algorithms``
    it may verify) and turn its claims into a :class:`Principal`.

    ``alg`` is pinned to ``algorithms`` (HS256 by default): a token that names another
    algorithm (``none`` included) is refused rather than trusted. With ``audience`` /
    ``issuer``, the ``aud`` / ``iss`` claims must name them. ``exp`` and ``nbf`` are checked
    against ``now`` (the injected clock, never the library's), each with ``leeway`` seconds
    of tolerance for clock skew. With ``require_exp`` a token without ``exp`` (valid
    forever) is refused; with ``max_age`` (> 0) one issued (``iat``) more than that many
    seconds ago, or without ``iat``, is refused.
    """
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=list(algorithms),
            audience=audience,
            issuer=issuer,
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                # Checked below: an integer ``sub`` (Django's primary keys) is accepted as
                # its string form, where PyJWT >= 2.10 refuses anything but a string.
                "verify_sub": False,
                "verify_aud": audience is not None,
                "verify_iss": issuer is not None,
            },
        )
    except jwt.InvalidAudienceError:
        raise AuthError("invalid token: wrong audience") from None
    except jwt.InvalidIssuerError:
        raise AuthError("invalid token: wrong issuer") from None
    except jwt.InvalidAlgorithmError:
        raise AuthError("invalid token: algorithm not allowed") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"invalid token: no '{exc.claim}' claim") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {type(exc).__name__}") from None
    if not isinstance(claims, dict):
        raise AuthError("invalid token: claims are not an object")
    sub = claims.get("sub")
    if isinstance(sub, int) and not isinstance(sub, bool):
        sub = str(sub)
    if not isinstance(sub, str) or not sub:
        raise AuthError("token has no 'sub' claim (a non-empty string or an integer)")
    if not has_utf8_form(sub):
        raise AuthError("claim 'sub' must be text with a UTF-8 form (it has a lone surrogate)")
    exp = claims.get("exp")
    if exp is not None:
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise AuthError("claim 'exp' must be a number")
        if exp <= now - leeway:
            raise AuthError("token expired")
    elif require_exp:
        raise AuthError("token has no 'exp' claim (this server requires one)")
    if max_age > 0:
        iat = claims.get("iat")
        if iat is None:
            raise AuthError("token has no 'iat' claim (this server limits token age)")
        if isinstance(iat, bool) or not isinstance(iat, int | float):
            raise AuthError("claim 'iat' must be a number")
        if now - iat > max_age + leeway:
            raise AuthError(f"token is older than {max_age:g} seconds")
    nbf = claims.get("nbf")
    if nbf is not None:
        if isinstance(nbf, bool) or not isinstance(nbf, int | float):
            raise AuthError("claim 'nbf' must be a number")
        if nbf > now + leeway:
            raise AuthError("token not valid yet")
    try:
        info = check_info(claims.get("info"))
    except InfoError as exc:
        raise AuthError(f"claim {exc}") from None
    return Principal(
        user_id=sub,
        expires_at=None if exp is None else float(exp) + leeway,
        channels=_pattern_claim(claims, "channels"),
        publish=_pattern_claim(claims, "publish"),
        claims=claims,
        info=info,
    )
