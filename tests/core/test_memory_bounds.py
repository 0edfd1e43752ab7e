"""Memory bounded in bytes, not only in counts: history, outboxes, the memory guard."""

from __future__ import annotations

import pytest

from triows import Config
from triows._core.history import History
from triows._core.hub import Hub
from triows._core.memory_guard import Crossing, MemoryGuard
from triows._core.outbox import Outbox, SlowConsumerPolicy, Verdict


def hub(
    size: int = 100, ttl: float = 60, channel_bytes: int = 1 << 40, total: int = 1 << 40
) -> Hub[str]:
    return Hub[str](
        epoch_prefix="E",
        max_subscriptions=10,
        policy_for=lambda _: SlowConsumerPolicy.DISCONNECT,
        history_for=lambda _: (size, ttl),
        channel_history_bytes=channel_bytes,
        max_history_bytes=total,
    )


def publish(h: Hub[str], channel: str, nbytes: int, now: float = 0) -> None:
    state, seq = h.publish(channel)
    h.record(state, seq, b"x" * nbytes, now)


def test_history_is_capped_in_bytes_per_channel() -> None:
    history = History(size=100, ttl=60, max_bytes=1000)
    for seq in range(1, 11):
        history.append(seq, 0, b"x" * 300, 300)
    assert (len(history), history.nbytes, history.first_seq()) == (3, 900, 8)


def test_all_histories_together_are_capped_least_recently_published_first() -> None:
    h = hub(total=10_000)
    for n in range(5):
        for _ in range(5):
            publish(h, f"c{n}", 500)  # 12,500 bytes offered in all
    assert h.history_bytes <= 10_000
    c0 = h.channel("c0")  # the oldest idle channel lost its whole history (not its numbering)
    assert c0 is not None
    assert (len(c0.history), c0.seq) == (0, 5)
    c4 = h.channel("c4")
    assert c4 is not None
    assert len(c4.history) == 5
    assert h.history_bytes == sum(len(s.history) * 500 for s in h.channels())


def test_expiry_looks_only_at_channels_whose_deadline_passed() -> None:
    h = hub(ttl=10)
    for n in range(1000):
        publish(h, f"c{n}", 10, now=n / 100)  # deadlines from 10.00 to 19.99
    h.expire(now=15.0)
    assert sum(1 for state in h.channels() if state.history) == 499
    assert len(h._deadlines) == 499  # one entry per channel still holding history
    h.expire(now=100)
    assert (h.history_messages, h.history_bytes, len(h._deadlines)) == (0, 0, 0)
    assert h.channel_count == 1000  # idle, with their numbering (at most max_idle_channels)


def test_outbox_is_full_at_its_byte_limit() -> None:
    box = Outbox(capacity=100, max_bytes=1000)
    for _ in range(4):
        assert box.offer(b"x" * 300, SlowConsumerPolicy.DISCONNECT) is Verdict.QUEUED
    assert not box.has_room
    assert box.offer(b"y", SlowConsumerPolicy.DISCONNECT) is Verdict.DISCONNECT
    dropping = Outbox(capacity=100, max_bytes=1000)
    for _ in range(4):
        dropping.offer(b"x" * 300, SlowConsumerPolicy.DROP_OLDEST)
    assert dropping.offer(b"z" * 600, SlowConsumerPolicy.DROP_OLDEST) is Verdict.QUEUED
    # Room again after one eviction (900 < 1000): over the limit by at most one frame.
    assert (dropping.dropped, dropping.queued_bytes) == (1, 1500)


def test_memory_guard_reports_each_crossing_once() -> None:
    guard = MemoryGuard(limit=1000)
    seen = [guard.update(rss) for rss in (500, 1001, 2000, 950, 899, 899, 1200)]
    assert seen == [None, Crossing.TRIPPED, None, None, Crossing.CLEARED, None, Crossing.TRIPPED]
    assert (guard.over, guard.trips) == (True, 2)
    off = MemoryGuard(limit=0)
    assert off.update(10**12) is None
    assert not off.over


def test_max_message_size_leaves_room_for_data() -> None:
    with pytest.raises(ValueError, match="at least 2048"):
        Config(max_message_size=1023)
    assert Config(max_message_size=2048).max_message_size == 2048
