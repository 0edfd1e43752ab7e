"""User and client ids, one rule wherever one is taken (the control API, the dashboard's
lookup, a JWT's ``sub``).

An id is text with a UTF-8 form. JSON's ``\\ud800`` escape lets a lone surrogate into a
Python string, which has none: it cannot name a Redis key, be written to a log as UTF-8 or be
read by another client, so a revoke of such a user failed half-way with a codec message. It
is refused where it comes in, with the reason.
"""

from __future__ import annotations


class IdError(ValueError):
    """Not a usable user or client id; the message says why."""


def has_utf8_form(text: str) -> bool:
    """Whether ``text`` is free of lone surrogates (every other string encodes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_id(value: object, name: str, limit: int) -> str:
    """``value`` as a ``name`` id (``'user'``, ``'client'``): a string of 1 to ``limit``
    characters with a UTF-8 form; :class:`IdError` otherwise."""
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise IdError(f"'{name}' must be a string of 1 to {limit} characters")
    if not has_utf8_form(value):
        raise IdError(f"'{name}' must be text with a UTF-8 form (it has a lone surrogate)")
    return value
