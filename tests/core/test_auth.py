"""Token verification and what the claims allow."""

from __future__ import annotations

import jwt
import pytest

from triows._core.auth import Action, AuthError, Principal, verify_token

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret"
NOW = 1_700_000_000.0


def token(claims: dict[str, object], secret: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=alg)


def test_valid_token_becomes_principal() -> None:
    principal = verify_token(
        token({"sub": "u1", "exp": NOW + 60, "channels": ["news.*"], "publish": ["chat"]}),
        SECRET,
        now=NOW,
    )
    assert principal.user_id == "u1"
    assert principal.expires_at == NOW + 60
    assert principal.may(Action.SUBSCRIBE, "news.eu")
    assert not principal.may(Action.SUBSCRIBE, "chat")
    assert principal.may(Action.PUBLISH, "chat")
    assert not principal.may(Action.PUBLISH, "news.eu")


def test_no_claims_means_no_restriction() -> None:
    principal = verify_token(token({"sub": "u1"}), SECRET, now=NOW)
    assert principal.expires_at is None
    assert principal.may(Action.PUBLISH, "anything")


def test_an_integer_subject_is_its_string_form() -> None:
    """Django's user ids are integers; PyJWT alone refuses them (InvalidSubjectError)."""
    assert verify_token(token({"sub": 42}), SECRET, now=NOW).user_id == "42"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (token({"sub": "u1"}, secret="another-secret-value-another-secret"), "invalid token"),
        (token({"sub": "u1", "exp": NOW - 1}), "expired"),
        (token({"sub": "u1", "exp": NOW}), "expired"),
        (token({"exp": NOW + 60}), "'sub'"),
        (token({"sub": ""}), "'sub'"),
        (token({"sub": True}), "'sub'"),
        (token({"sub": 1.5}), "'sub'"),
        (token({"sub": "u\ud800"}), "lone surrogate"),  # no UTF-8 form: no Redis key
        (token({"sub": "u1", "channels": "news"}), "'channels'"),
        (token({"sub": "u1", "publish": [1]}), "'publish'"),
        (token({"sub": "u1"}, secret=SECRET * 2, alg="HS512"), "invalid token"),
        (jwt.encode({"sub": "u1"}, "", algorithm="none"), "invalid token"),
        ("not.a.token", "invalid token"),
        ("", "invalid token"),
    ],
)
def test_bad_tokens_are_refused(raw: str, fragment: str) -> None:
    with pytest.raises(AuthError, match=fragment) as info:
        verify_token(raw, SECRET, now=NOW)
    assert raw == "" or raw not in str(info.value)


def test_principal_accepts_pattern_lists() -> None:
    principal = Principal(user_id="x", channels=["a", "b*"])
    assert principal.may(Action.SUBSCRIBE, "bee")
    assert not principal.may(Action.SUBSCRIBE, "c")


def test_audience_and_issuer_are_checked_when_configured() -> None:
    good = token({"sub": "u", "aud": "chat", "iss": "https://id.example"})
    principal = verify_token(good, SECRET, now=NOW, audience="chat", issuer="https://id.example")
    assert principal.user_id == "u"
    with pytest.raises(AuthError, match="wrong audience"):
        verify_token(good, SECRET, now=NOW, audience="billing")
    with pytest.raises(AuthError, match="wrong issuer"):
        verify_token(good, SECRET, now=NOW, issuer="https://evil.example")
    with pytest.raises(AuthError, match="no 'aud' claim"):
        verify_token(token({"sub": "u"}), SECRET, now=NOW, audience="chat")
    assert verify_token(good, SECRET, now=NOW).user_id == "u"  # not configured: not checked


def test_nbf_and_exp_use_the_injected_clock_with_leeway() -> None:
    early = token({"sub": "u", "nbf": NOW + 30})
    with pytest.raises(AuthError, match="not valid yet"):
        verify_token(early, SECRET, now=NOW)
    assert verify_token(early, SECRET, now=NOW, leeway=30).user_id == "u"
    assert verify_token(early, SECRET, now=NOW + 31).user_id == "u"
    late = token({"sub": "u", "exp": NOW - 5})
    with pytest.raises(AuthError, match="expired"):
        verify_token(late, SECRET, now=NOW)
    assert verify_token(late, SECRET, now=NOW, leeway=10).expires_at == NOW + 5


def test_a_stored_presence_entry_with_odd_digits_is_skipped() -> None:
    from triows._core import presence

    entries = {b"a": "\u00b2 node user".encode(), b"b": b"99999999999999 node bob", b"c": b"\xff"}
    assert presence.live_members(entries, 0) == [presence.Member("b", "bob")]
    assert {m.client_id for m in presence.expired(entries, 0)} == {"a", "c"}


def test_origins_are_compared_as_browsers_send_them() -> None:
    from triows import Config

    config = Config(allow_origins=["https://App.Example.com"])
    assert config.origin_allowed("https://app.example.com")
    assert not config.origin_allowed("https://evil.example.com")
