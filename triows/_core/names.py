"""Channel names and the glob patterns that select them.

A channel name is 1 to 255 characters from ``A-Z a-z 0-9 _ - . : @ / = +``. The glob
characters ``* ? [ ]`` are excluded on purpose: names and patterns (JWT ``channels`` claims,
per-channel policies) never get confused, so a client cannot subscribe to a name that reads as
a wildcard in an audit log.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from typing import Final, TypeVar

T = TypeVar("T")

MAX_CHANNEL_LENGTH: Final = 255
_CHANNEL_RE: Final = re.compile(r"[A-Za-z0-9_\-.:@/=+]{1,255}")


class ChannelNameError(ValueError):
    pass


def validate_channel(value: object) -> str:
    if not isinstance(value, str):
        raise ChannelNameError("'channel' must be a string")
    if not _CHANNEL_RE.fullmatch(value):
        if not 0 < len(value) <= MAX_CHANNEL_LENGTH:
            raise ChannelNameError(f"channel name must be 1 to {MAX_CHANNEL_LENGTH} characters")
        raise ChannelNameError("channel name may only contain A-Z a-z 0-9 _ - . : @ / = +")
    return value


_PATTERN_RE: Final = re.compile(r"[A-Za-z0-9_\-.:@/=+*?\[\]!]{1,255}")


def validate_pattern(value: object) -> str:
    """A glob pattern over channel names: their characters and ``* ? [ ] !``, with every
    ``[`` closed (``fnmatch`` would read ``chat[`` as a literal ``[``, which no channel name
    holds: a pattern that can never match is a typo to report, not to accept)."""
    if not isinstance(value, str) or not _PATTERN_RE.fullmatch(value):
        raise ChannelNameError(
            f"{value!r} is not a channel pattern: 1 to 255 characters from "
            "A-Z a-z 0-9 _ - . : @ / = + and the globs * ? [...]"
        )
    depth = 0
    for char in value:
        if char == "[":
            if depth:
                raise ChannelNameError(f"{value!r}: '[' inside a [...] class")
            depth = 1
        elif char == "]":
            if not depth:
                raise ChannelNameError(f"{value!r}: a ']' without its '['")
            depth = 0
    if depth:
        raise ChannelNameError(f"{value!r}: a '[' is never closed")
    return value


class PatternSet:
    """An ordered set of glob patterns, compiled once into one regular expression.

    ``*`` matches any run of characters (``/`` included), ``?`` one character, ``[...]`` a class,
    exactly as :func:`fnmatch.fnmatchcase`.
    """

    __slots__ = ("_regex", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns: tuple[str, ...] = tuple(patterns)
        if self.patterns:
            joined = "|".join(f"(?:{fnmatch.translate(p)})" for p in self.patterns)
            self._regex: re.Pattern[str] | None = re.compile(joined)
        else:
            self._regex = None

    def matches(self, name: str) -> bool:
        return self._regex is not None and self._regex.match(name) is not None

    def __repr__(self) -> str:
        return f"PatternSet({list(self.patterns)!r})"


def first_match(rules: Iterable[tuple[str, T]], name: str, default: T) -> T:
    """The value of the first ``(pattern, value)`` rule whose pattern matches ``name``."""
    for pattern, value in rules:
        if fnmatch.fnmatchcase(name, pattern):
            return value
    return default
