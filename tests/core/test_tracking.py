"""The client's tracker: each message once, own publications accounted for, gaps reported."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from triows._core.backoff import full_jitter
from triows._core.tracking import AdaptiveInterval, Gap, Message, Recovered, Tracker


def subscribed(seq: int, epoch: str = "e1", **extra: Any) -> dict[str, Any]:
    return {"type": "subscribed", "channel": "c", "seq": seq, "epoch": epoch, **extra}


def message(seq: int, sender: str = "other") -> dict[str, Any]:
    return {
        "type": "message",
        "channel": "c",
        "seq": seq,
        "data": seq,
        "from": sender,
        "id": f"e1:{seq}",
        "timestamp": 0,
    }


def tracker_at(seq: int) -> Tracker:
    tracker = Tracker()
    tracker.track("c")
    assert tracker.on_subscribed(subscribed(seq)) == []
    return tracker


def own(tracker: Tracker, seq: int) -> None:
    """An ack of this client's publication with ``seq``."""
    tracker.expect_ack(f"p{seq}", "c")
    tracker.on_ack(f"p{seq}", seq)


def seqs(events: list[Any]) -> list[int]:
    return [e.seq for e in events if isinstance(e, Message)]


def test_in_order_messages_pass_and_duplicates_drop() -> None:
    tracker = tracker_at(0)
    assert seqs(tracker.on_message(message(1))) == [1]
    assert tracker.on_message(message(1)) == []
    assert seqs(tracker.on_message(message(2))) == [2]
    assert tracker.resume_from("c") == (2, "e1")


def test_own_acks_are_not_gaps() -> None:
    tracker = tracker_at(0)
    own(tracker, 2)
    assert seqs(tracker.on_message(message(1))) == [1]
    assert tracker.on_message(message(3)) == [
        Message(channel="c", data=3, seq=3, id="e1:3", sender="other", timestamp=0)
    ]
    assert tracker.resume_from("c") == (3, "e1")


def test_jump_is_reported_as_gap() -> None:
    tracker = tracker_at(0)
    events = tracker.on_message(message(4))
    assert events[0] == Gap(channel="c", first=1, last=3, reason="messages skipped")
    assert seqs(events) == [4]


def test_replayed_own_messages_from_earlier_connections_are_skipped() -> None:
    tracker = tracker_at(0)
    tracker.add_client_id("me-old")
    assert tracker.on_message(message(1, sender="me-old")) == []
    assert seqs(tracker.on_message(message(2))) == [2]


def test_resume_outcomes() -> None:
    tracker = tracker_at(5)
    assert tracker.on_subscribed(subscribed(9, recovered=True)) == [
        Recovered(channel="c", epoch="e1", seq=9)
    ]
    assert tracker.on_subscribed(subscribed(9, recovered=False, gap=[6, 7])) == [
        Gap(channel="c", first=6, last=7, reason="history expired")
    ]
    assert seqs(tracker.on_message(message(8))) == [8]  # replay continues after the gap
    assert tracker.on_subscribed(subscribed(3, epoch="e2", recovered=False)) == [
        Gap(channel="c", first=None, last=None, reason="epoch changed")
    ]
    assert tracker.resume_from("c") == (3, "e2")


def test_untracked_channels_are_ignored() -> None:
    tracker = Tracker()
    assert tracker.on_message(message(1)) == []
    assert tracker.on_subscribed(subscribed(1)) == []
    assert tracker.resume_from("c") is None


@given(st.lists(st.integers(1, 30), max_size=80), st.sets(st.integers(1, 30)))
def test_every_seq_is_delivered_or_reported_once(arrivals: list[int], mine: set[int]) -> None:
    """Whatever order and repetition messages arrive in, the output is increasing, has no
    duplicate, never reports one seq twice or an own seq at all, and together with gaps and
    own publications accounts for every seq up to the highest one delivered."""
    tracker = tracker_at(0)
    for seq in sorted(mine):
        own(tracker, seq)
    delivered: list[int] = []
    reported: list[int] = []
    for seq in arrivals:
        for event in tracker.on_message(message(seq)):
            if isinstance(event, Gap):
                assert event.first is not None
                assert event.last is not None
                reported += range(event.first, event.last + 1)
            else:
                assert isinstance(event, Message)
                delivered.append(event.seq)
    assert delivered == sorted(set(delivered))
    assert len(reported) == len(set(reported))
    assert not set(reported) & (mine | set(delivered))
    assert not set(delivered) & mine
    if delivered:
        assert set(range(1, delivered[-1] + 1)) <= set(delivered) | set(reported) | mine


def test_full_jitter_stays_within_its_cap() -> None:
    assert full_jitter(0, 0.5, 30, rand=lambda: 1.0) == 0.5
    assert full_jitter(3, 0.5, 30, rand=lambda: 1.0) == 4.0
    assert full_jitter(20, 0.5, 30, rand=lambda: 1.0) == 30
    assert full_jitter(1000, 0.5, 30, rand=lambda: 0.5) == 15
    assert full_jitter(5, 0.5, 30, rand=lambda: 0.0) == 0


def test_adaptive_interval() -> None:
    interval = AdaptiveInterval(1, 8, streak=2)
    for _ in range(10):
        interval.success()
    assert interval.value == 8
    interval.failure()
    assert interval.value == 4
    interval.success()
    interval.failure()
    interval.failure()
    interval.failure()
    assert interval.value == 1
    with pytest.raises(ValueError, match="minimum"):
        AdaptiveInterval(0, 1)


def test_a_backlog_is_bounded_in_bytes_too() -> None:
    """1000 events of 64 KiB would be 64 MiB per subscription: the buffer holds messages up to
    its byte bound, then skips, and the application learns exactly what was skipped."""
    from triows._core.backlog import Backlog
    from triows._core.tracking import SUBSCRIPTION_BUFFER_FULL

    backlog = Backlog("c", capacity=1000, max_bytes=250_000)
    for seq in range(1, 11):
        event = Message(channel="c", data="x", seq=seq, id=f"e1:{seq}", sender="o", timestamp=0)
        backlog.put(event, size=65_536)
    assert backlog.nbytes == 3 * 65_536
    assert backlog.skipped == 7
    read = [backlog.take() for _ in range(4)]
    assert [getattr(e, "seq", None) for e in read[:3]] == [1, 2, 3]
    assert read[3] == Gap(channel="c", first=4, last=10, reason=SUBSCRIPTION_BUFFER_FULL)
    assert backlog.nbytes == 0


def test_one_message_larger_than_the_byte_bound_still_gets_through() -> None:
    from triows._core.backlog import Backlog

    backlog = Backlog("c", capacity=10, max_bytes=100)
    event = Message(channel="c", data="big", seq=1, id="e1:1", sender="o", timestamp=0)
    assert backlog.put(event, size=1000)
    assert backlog.take() == event
