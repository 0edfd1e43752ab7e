"""A subscription's bounded buffer in the client, between its reader and the application:
the reader never waits, and what does not fit becomes one exact :class:`Gap`."""

from __future__ import annotations

from collections import deque

from .tracking import SUBSCRIPTION_BUFFER_FULL, Event, Gap, Join, Leave, Message


class Backlog:
    """A subscription's bounded buffer between the client's reader and the application.

    The reader never waits for the application (acks and every other channel would stall
    behind it). The buffer holds at most ``capacity`` events and ``max_bytes`` bytes of
    messages (as they came on the wire; one message alone always fits); when it is full, newer
    events are skipped; once the application has read what was buffered it gets one
    :class:`Gap` (``reason="subscription buffer full"``) naming exactly the skipped seqs, or
    with ``first``/``last`` None when a skipped event's range was itself unknown (an epoch
    change). Joins and leaves carry no seq: skipped ones are only counted in :attr:`skipped`.
    """

    def __init__(self, channel: str, capacity: int, max_bytes: int = 1 << 62) -> None:
        self.channel = channel
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._events: deque[tuple[Event, int]] = deque()
        self._held: Gap | None = None
        #: Bytes of the messages buffered.
        self.nbytes = 0
        #: Messages and presence events skipped because the buffer was full.
        self.skipped = 0

    def __len__(self) -> int:
        return len(self._events) + (self._held is not None)

    def put(self, event: Event, size: int = 0) -> bool:
        """Buffer ``event`` (``size`` bytes on the wire), or skip it; True when it was
        buffered."""
        need = 2 if self._held is not None else 1  # the held gap and the event both need room
        fits = len(self._events) + need <= self._capacity and (
            not self._events or self.nbytes + size <= self._max_bytes
        )
        if not fits:
            self._skip(event)
            return False
        if self._held is not None:
            self._events.append((self._held, 0))
            self._held = None
        self._events.append((event, size))
        self.nbytes += size
        return True

    def take(self) -> Event | None:
        if self._events:
            event, size = self._events.popleft()
            self.nbytes -= size
            return event
        held, self._held = self._held, None
        return held

    def _skip(self, event: Event) -> None:
        first: int | None
        last: int | None
        if isinstance(event, Join | Leave):
            # Not numbered, so no gap can say it: counted; ask presence() again to catch up.
            self.skipped += 1
            return
        if isinstance(event, Message):
            self.skipped += 1
            first, last = event.seq, event.seq
        else:
            first, last = event.first, event.last
        held = self._held
        if held is not None:
            if held.first is None or held.last is None or first is None or last is None:
                first = last = None  # a range that is not known makes the whole one unknown
            else:
                first, last = min(held.first, first), max(held.last, last)
        self._held = Gap(
            channel=self.channel, first=first, last=last, reason=SUBSCRIPTION_BUFFER_FULL
        )
