"""Whole numbers written by peers, read strictly.

``str.isdigit()`` is true for ``"²"`` and ``"٣"``, which ``int()`` then refuses or reads as
another number, and ``int()`` of a 4,400-digit string raises (CPython's conversion limit):
either way a peer's typo became a 500 and a traceback. Every number a peer writes (a
``Content-Length``, a query parameter, a stored field) goes through :func:`ascii_int`.
"""

from __future__ import annotations

from typing import Final

#: Digits read at most: 18 fit in a signed 64-bit integer, and no count triows takes is larger.
MAX_DIGITS: Final = 18
_DIGITS: Final = frozenset("0123456789")


def ascii_int(text: str, *, max_digits: int = MAX_DIGITS) -> int | None:
    """The value of ``text`` when it is 1 to ``max_digits`` ASCII digits, else None."""
    if not 0 < len(text) <= max_digits or not _DIGITS.issuperset(text):
        return None
    return int(text)
