"""What an event stream's ``drop_*`` policy dropped, so that the stream can say so.

A WebSocket client sees a dropped message as a jump in seq and reports the gap itself. An
event stream's client is a browser's ``EventSource``: the server keeps its tracker, and the
tracker moved past a message the moment its event was made, before the outbox dropped it
(``drop_newest``: at once; ``drop_oldest``: later, to make room for a newer event). Without a
word the browser would never learn of it, and the ids after it would resume past it.

Each event a stream queues under a ``drop_*`` policy goes with a :class:`SkipCounter` naming
the seqs its event moved over; when the outbox drops it, the range is noted in
:class:`Skips`, and the stream sends the ``gap`` (``"messages skipped"``) as soon as its outbox
has room again. Ranges of a channel that follow each other are merged; a stream with more than
:data:`MAX_RANGES` ranges waiting has been dropping for long without ever catching up.
"""

from __future__ import annotations

from typing import Final

from .outbox import DropCounter

#: Ranges waiting for room in the outbox; beyond this the stream is ended as a slow consumer.
MAX_RANGES: Final = 64


class Skips:
    """Ranges dropped and not yet reported, in the order they were dropped (per channel)."""

    __slots__ = ("_ranges", "overflowed")

    def __init__(self) -> None:
        self._ranges: dict[str, list[list[int]]] = {}
        self.overflowed = False

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def add(self, channel: str, first: int, last: int) -> None:
        ranges = self._ranges.setdefault(channel, [])
        for held in ranges:  # an adjacent range grows (drop_oldest drops in order)
            if held[1] + 1 == first:
                held[1] = last
                return
            if last + 1 == held[0]:
                held[0] = first
                return
        if sum(len(r) for r in self._ranges.values()) >= MAX_RANGES:
            self.overflowed = True
            return
        ranges.append([first, last])

    def take(self) -> list[tuple[str, int, int]]:
        """Every range waiting, sorted per channel; none wait any more."""
        taken = [
            (channel, first, last)
            for channel, ranges in self._ranges.items()
            for first, last in sorted(ranges)
        ]
        self._ranges = {}
        return taken


class SkipCounter:
    """The channel's drop counter, as the outbox sees it, for one queued event: a drop is
    counted where it always is, and noted in the stream's :class:`Skips`."""

    __slots__ = ("_channel", "_counter", "_first", "_last", "_skips")

    def __init__(
        self, counter: DropCounter, skips: Skips, channel: str, first: int, last: int
    ) -> None:
        self._counter = counter
        self._skips = skips
        self._channel, self._first, self._last = channel, first, last

    @property
    def dropped(self) -> int:
        return self._counter.dropped

    @dropped.setter
    def dropped(self, value: int) -> None:
        self._counter.dropped = value
        self._skips.add(self._channel, self._first, self._last)
