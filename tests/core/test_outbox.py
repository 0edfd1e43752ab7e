"""Slow-consumer policies applied to a full outbox."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from triows._core.outbox import Outbox, OutboxTotals, SlowConsumerPolicy, Verdict

P = SlowConsumerPolicy


@attrs.define
class Counter:
    dropped: int = 0


def full(capacity: int = 2, policy: SlowConsumerPolicy = P.DROP_OLDEST) -> Outbox:
    box = Outbox(capacity)
    for i in range(capacity):
        assert box.offer(b"f%d" % i, policy) is Verdict.QUEUED
    return box


def frames(box: Outbox) -> list[bytes]:
    batch = box.take(1 << 30)
    box.written(batch)
    return [bytes(f) for f in batch]


def test_queues_until_capacity() -> None:
    box = full(3)
    assert len(box) == 3
    assert not box.has_room
    assert box.queued_bytes == 6


def test_drop_oldest_evicts_first_droppable() -> None:
    counter = Counter()
    box = Outbox(2)
    box.offer_reply(b"reply")
    box.offer(b"old", P.DROP_OLDEST, counter)
    assert box.offer(b"new", P.DROP_OLDEST, counter) is Verdict.QUEUED
    assert frames(box) == [b"reply", b"new"]
    assert box.dropped == 1
    assert counter.dropped == 1


def test_drop_oldest_drops_new_when_nothing_is_droppable() -> None:
    box = Outbox(1)
    box.offer(b"keep", P.DISCONNECT)
    assert box.offer(b"new", P.DROP_OLDEST) is Verdict.DROPPED
    assert frames(box) == [b"keep"]


def test_drop_newest() -> None:
    counter = Counter()
    box = full(2, P.DROP_NEWEST)
    assert box.offer(b"new", P.DROP_NEWEST, counter) is Verdict.DROPPED
    assert frames(box) == [b"f0", b"f1"]
    assert counter.dropped == box.dropped == 1


def test_disconnect() -> None:
    box = full(2, P.DISCONNECT)
    assert box.offer(b"new", P.DISCONNECT) is Verdict.DISCONNECT
    assert len(box) == 2


def test_block_queues_over_capacity_in_order() -> None:
    box = full(2, P.BLOCK)
    assert box.offer(b"a", P.BLOCK) is Verdict.OVER
    assert box.offer(b"b", P.BLOCK) is Verdict.OVER
    assert frames(box) == [b"f0", b"f1", b"a", b"b"]


def test_replies_are_never_dropped() -> None:
    box = full(1, P.DROP_OLDEST)
    assert box.offer_reply(b"r") is Verdict.OVER
    assert box.offer(b"x", P.DROP_OLDEST) is Verdict.QUEUED  # evicts f0, not the reply
    assert frames(box) == [b"r", b"x"]


def test_partial_write_tail_goes_first() -> None:
    box = Outbox(4)
    box.offer(b"second", P.DISCONNECT)
    box.push_front(memoryview(b"tail"))
    assert frames(box) == [b"tail", b"second"]
    assert box.queued_bytes == 0


def test_take_batches_by_bytes_but_always_one() -> None:
    box = Outbox(10)
    for chunk in (b"a" * 5, b"b" * 5, b"c" * 5):
        box.offer(chunk, P.DISCONNECT)
    assert [bytes(f) for f in box.take(10)] == [b"a" * 5, b"b" * 5]
    assert [bytes(f) for f in box.take(1)] == [b"c" * 5]
    assert box.take(10) == []


def test_frames_being_written_still_take_room() -> None:
    box = Outbox(2)
    box.offer(b"a", P.DISCONNECT)
    box.offer(b"b", P.DISCONNECT)
    batch = box.take(100)
    assert len(box) == 2  # the socket has not accepted them yet
    assert box.offer(b"c", P.DISCONNECT) is Verdict.DISCONNECT
    box.written(batch)
    assert len(box) == 0
    assert box.queued_bytes == 0
    assert box.has_room


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Outbox(0)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["offer", "reply", "front", "take", "written", "clear"]),
        st.integers(0, 2),
        st.sampled_from(list(P)),
        st.integers(1, 40),
    ),
    max_size=60,
)


@given(OPS)
def test_shared_totals_equal_the_sum_of_the_outboxes(ops: list[Any]) -> None:
    """Statistics read the totals in O(1): they must always equal what a sum would say."""
    totals = OutboxTotals()
    boxes = [Outbox(3, 100, totals) for _ in range(3)]
    taken: list[list[Any]] = [[], [], []]
    for op, index, policy, size in ops:
        box = boxes[index]
        if op == "offer":
            box.offer(b"x" * size, policy)
        elif op == "reply":
            box.offer_reply(b"r" * size)
        elif op == "front":
            box.push_front(memoryview(b"t" * size))
        elif op == "take" and box and not taken[index]:
            taken[index] = box.take(size * 4)
        elif op == "written" and taken[index]:
            box.written(taken[index])
            taken[index] = []
        elif op == "clear":
            box.clear()
            taken[index] = []
        assert totals.frames == sum(len(b) for b in boxes)
        assert totals.bytes == sum(b.queued_bytes for b in boxes)
        assert totals.dropped == sum(b.dropped for b in boxes)
        # What an outbox holds, kept as it changes (``held``), against a recount.
        for each, in_writer in zip(boxes, taken, strict=True):
            assert len(each) == each.held == len(each._entries or ()) + len(in_writer)
