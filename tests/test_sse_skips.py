"""What an event stream's drop_* policy dropped, kept until it is told (triows._core.sse_skips)."""

from __future__ import annotations

from triows._core.sse_skips import MAX_RANGES, SkipCounter, Skips


class Counter:
    dropped = 0


def test_adjacent_drops_are_one_range_and_counted_where_they_always_were() -> None:
    skips, channel_counter = Skips(), Counter()
    for seq in (10, 11, 12):
        counter = SkipCounter(channel_counter, skips, "a", seq, seq)
        counter.dropped += 1  # what the outbox does
    SkipCounter(channel_counter, skips, "a", 8, 9).dropped += 1  # before them
    SkipCounter(channel_counter, skips, "b", 3, 5).dropped += 1
    SkipCounter(channel_counter, skips, "a", 20, 20).dropped += 1  # another run
    assert channel_counter.dropped == 6
    assert skips.take() == [("a", 8, 12), ("a", 20, 20), ("b", 3, 5)]
    assert not skips
    assert skips.take() == []


def test_too_many_ranges_waiting_is_an_overflow() -> None:
    skips = Skips()
    for n in range(MAX_RANGES):
        skips.add("a", 3 * n, 3 * n)
    assert not skips.overflowed
    skips.add("a", 1000, 1000)
    assert skips.overflowed
    assert len(skips.take()) == MAX_RANGES
