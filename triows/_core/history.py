"""A channel's recent messages, kept so that a client that reconnects can get what it missed.

Bounded twice: at most ``size`` messages and none older than ``ttl`` seconds. Entries hold the
message's ready frame (the very bytes live subscribers got), so a replay is byte-identical to
the live delivery and costs no encoding. ``now`` is the shell's monotonic clock.
"""

from __future__ import annotations

from collections import deque


class History:
    __slots__ = ("_entries", "nbytes", "size", "ttl")

    def __init__(self, size: int, ttl: float) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: deque[tuple[int, float, bytes]] = deque()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.size > 0 and self.ttl > 0

    def append(self, seq: int, now: float, frame: bytes) -> None:
        if not self.enabled:
            return
        self._entries.append((seq, now, frame))
        self.nbytes += len(frame)
        self.prune(now)

    def prune(self, now: float) -> None:
        """Forget what is over the size or older than the ttl."""
        entries = self._entries
        cutoff = now - self.ttl
        while entries and (len(entries) > self.size or entries[0][1] <= cutoff):
            self.nbytes -= len(entries.popleft()[2])

    def first_seq(self) -> int | None:
        return self._entries[0][0] if self._entries else None

    def after(self, seq: int) -> list[tuple[int, bytes]]:
        """``(seq, frame)`` of every held message with a sequence number above ``seq``, in
        order."""
        return [(number, frame) for number, _, frame in self._entries if number > seq]

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0
