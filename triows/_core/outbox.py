"""A subscriber's outbox: the frames its socket could not take yet, and what happens when full.

The shell writes a frame straight into the socket when nothing is queued and the socket has
room; only the rest lands here. An outbox is full at ``capacity`` frames or ``max_bytes``
bytes, whichever comes first, so a subscriber holds a bounded amount of memory whatever the
size of the messages. (A broadcast frame is one ``bytes`` object shared by every outbox that
holds it, so the bytes counted are an upper bound of what it costs.)

Rules when an outbox is full (the policy is the channel's, see :class:`SlowConsumerPolicy`):

========== ============================================================================
block      queue it anyway (over capacity by one frame per waiting publisher); the
           publisher waits until the outbox is below capacity again, or disconnects the
           subscriber when its block timeout passes
drop_oldest evict the oldest queued frame of a dropping channel, then queue the new one
drop_newest discard the new frame
disconnect close the subscriber's connection (1013); it can resume from history
========== ============================================================================

Replies to the connection's own requests are never dropped: they are queued and the
connection's own request loop waits for room, which slows only the client that asked.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Protocol


class SlowConsumerPolicy(enum.StrEnum):
    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"
    DISCONNECT = "disconnect"


class Verdict(enum.Enum):
    QUEUED = "queued"
    #: Queued over capacity: the caller must wait for room (block policy, replies).
    OVER = "over"
    DROPPED = "dropped"
    DISCONNECT = "disconnect"


class DropCounter(Protocol):
    """Where a dropped frame is counted besides the outbox: its channel's statistics."""

    dropped: int


_DROPPABLE = (SlowConsumerPolicy.DROP_OLDEST, SlowConsumerPolicy.DROP_NEWEST)
_Entry = tuple[bytes | memoryview, SlowConsumerPolicy | None, DropCounter | None]


class OutboxTotals:
    """What all the outboxes of a server hold and dropped, kept up to date as each changes,
    so that statistics cost the same with 10 connections or 100,000 (no sum over them)."""

    __slots__ = ("bytes", "dropped", "frames")

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.dropped = 0


class Outbox:
    __slots__ = (
        "_entries",
        "_in_flight",
        "capacity",
        "dropped",
        "held",
        "max_bytes",
        "queued_bytes",
        "totals",
    )

    def __init__(
        self, capacity: int, max_bytes: int = 1 << 62, totals: OutboxTotals | None = None
    ) -> None:
        if capacity < 1 or max_bytes < 1:
            raise ValueError("outbox capacity and max_bytes must be at least 1")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.totals = totals if totals is not None else OutboxTotals()
        #: Created when the first frame is queued and dropped once the outbox is empty again:
        #: an empty deque still holds a block of 64 slots, and most outboxes are empty.
        self._entries: deque[_Entry] | None = None
        self.dropped = 0
        #: Bytes queued or being written; with ``len()`` this is what the outbox holds.
        self.queued_bytes = 0
        self._in_flight = 0  # frames taken by the writer, not yet accepted by the socket
        #: Frames queued plus frames being written (``len()``), kept as they change: the
        #: write path asks "is anything held?" for every frame, as an attribute, not a call.
        self.held = 0

    def __len__(self) -> int:
        """Frames queued plus frames being written: both are memory this subscriber holds."""
        return self.held

    @property
    def has_room(self) -> bool:
        return self.held < self.capacity and self.queued_bytes < self.max_bytes

    def offer(
        self, frame: bytes, policy: SlowConsumerPolicy, counter: DropCounter | None = None
    ) -> Verdict:
        """Queue a broadcast frame, applying ``policy`` when the outbox is full."""
        if self.has_room:
            self._append(frame, policy, counter)
            return Verdict.QUEUED
        if policy is SlowConsumerPolicy.BLOCK:
            self._append(frame, policy, counter)
            return Verdict.OVER
        if policy is SlowConsumerPolicy.DISCONNECT:
            return Verdict.DISCONNECT
        if policy is SlowConsumerPolicy.DROP_OLDEST and self._make_room_for(len(frame)):
            self._append(frame, policy, counter)
            return Verdict.QUEUED
        self._count_drop(counter)
        return Verdict.DROPPED

    def offer_reply(self, frame: bytes) -> Verdict:
        """Queue a reply; never dropped. ``OVER`` tells the request loop to wait for room."""
        self._append(frame, None, None)
        over = self.held > self.capacity or self.queued_bytes > self.max_bytes
        return Verdict.OVER if over else Verdict.QUEUED

    def push_front(self, rest: memoryview) -> None:
        """Put back the unwritten tail of a frame: it must go out before anything else."""
        if self._entries is None:
            self._entries = deque()
        self._entries.appendleft((rest, None, None))
        self.held += 1
        self.queued_bytes += len(rest)
        totals = self.totals
        totals.frames += 1
        totals.bytes += len(rest)

    def take(self, max_bytes: int) -> list[bytes | memoryview]:
        """Hand frames to the writer (at least one, then up to ``max_bytes`` in total).

        They still count as held until :meth:`written`: a socket that does not drain must not
        make room in the outbox.
        """
        batch: list[bytes | memoryview] = []
        size = 0
        entries = self._entries
        while entries and (not batch or size + len(entries[0][0]) <= max_bytes):
            frame = entries.popleft()[0]
            batch.append(frame)
            size += len(frame)
        if not entries:
            self._entries = None
        self._in_flight += len(batch)
        return batch

    def written(self, batch: list[bytes | memoryview]) -> None:
        """The socket accepted a batch from :meth:`take`."""
        size = sum(len(frame) for frame in batch)
        self._in_flight -= len(batch)
        self.held -= len(batch)
        self.queued_bytes -= size
        totals = self.totals
        totals.frames -= len(batch)
        totals.bytes -= size

    def clear(self) -> None:
        totals = self.totals
        totals.frames -= len(self)
        totals.bytes -= self.queued_bytes
        self._entries = None
        self._in_flight = 0
        self.held = 0
        self.queued_bytes = 0

    def _append(
        self,
        frame: bytes | memoryview,
        policy: SlowConsumerPolicy | None,
        counter: DropCounter | None,
    ) -> None:
        if self._entries is None:
            self._entries = deque()
        self._entries.append((frame, policy, counter))
        self.held += 1
        self.queued_bytes += len(frame)
        totals = self.totals
        totals.frames += 1
        totals.bytes += len(frame)

    def _make_room_for(self, size: int) -> bool:
        """Evict the oldest droppable frames until a new frame of ``size`` bytes fits, or at
        least does not make the outbox grow (replies may hold it over capacity); False, with
        nothing evicted, when the droppable frames are not enough."""
        entries = self._entries
        if entries is None:
            return False
        frames, held = len(self), self.queued_bytes
        freed = 0
        chosen: list[int] = []
        for index, (frame, policy, _) in enumerate(entries):
            if (frames < self.capacity and held < self.max_bytes) or (chosen and freed >= size):
                break
            if policy in _DROPPABLE:
                chosen.append(index)
                frames -= 1
                held -= len(frame)
                freed += len(frame)
        fits = (frames < self.capacity and held < self.max_bytes) or freed >= size
        if not chosen or not fits:
            return False
        for index in reversed(chosen):
            frame, _, counter = entries[index]
            del entries[index]
            self.held -= 1
            self.queued_bytes -= len(frame)
            self.totals.frames -= 1
            self.totals.bytes -= len(frame)
            self._count_drop(counter)
        return True

    def _count_drop(self, counter: DropCounter | None) -> None:
        self.dropped += 1
        self.totals.dropped += 1
        if counter is not None:
            counter.dropped += 1
