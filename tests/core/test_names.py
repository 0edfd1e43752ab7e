"""Channel names and the glob patterns that select them (triows._core.names)."""

from __future__ import annotations

import pytest

from triows._core.names import ChannelNameError, first_match, validate_channel


def test_channel_names() -> None:
    assert validate_channel("user:42/room-1.a_b@x=y+z") == "user:42/room-1.a_b@x=y+z"
    for bad in ("", "a b", "a*", "a?", "é", "x" * 256, None):
        with pytest.raises(ChannelNameError):
            validate_channel(bad)


def test_first_match_wins() -> None:
    rules = [("a.*", 1), ("a.b", 2), ("*", 3)]
    assert first_match(rules, "a.b", 0) == 1
    assert first_match(rules, "zzz", 0) == 3
    assert first_match([], "a", 0) == 0
