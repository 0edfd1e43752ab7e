"""Publish dedupe: a repeated publish ``id`` is acked again with its first seq, not re-sent.

Keyed by principal (the authenticated user, so a client that reconnects keeps its window) and
by ``(channel, id)``. Bounded: at most ``size`` ids per principal, none older than ``ttl``
seconds, and at most ``max_principals`` principals (the least recently active is forgotten
first). ``now`` is the shell's monotonic clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

Key = tuple[str, str | int]  # (channel, publish id)


class DedupeWindow:
    __slots__ = ("_windows", "max_principals", "size", "ttl")

    def __init__(self, *, size: int, ttl: float, max_principals: int) -> None:
        self.size = size
        self.ttl = ttl
        self.max_principals = max_principals
        self._windows: OrderedDict[Hashable, OrderedDict[Key, tuple[int, float]]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.size > 0 and self.ttl > 0

    def lookup(
        self, principal: Hashable, channel: str, publish_id: str | int, now: float
    ) -> int | None:
        """The seq a previous publish with this id got, if it is still in the window."""
        window = self._windows.get(principal)
        if window is None:
            return None
        self._expire(window, now)
        found = window.get((channel, publish_id))
        return None if found is None else found[0]

    def record(
        self, principal: Hashable, channel: str, publish_id: str | int, seq: int, now: float
    ) -> None:
        if not self.enabled:
            return
        window = self._windows.get(principal)
        if window is None:
            window = self._windows[principal] = OrderedDict()
            while len(self._windows) > self.max_principals:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(principal)
        window[(channel, publish_id)] = (seq, now)
        window.move_to_end((channel, publish_id))
        while len(window) > self.size:
            window.popitem(last=False)

    def expire(self, now: float) -> None:
        """Drop expired ids and principals left with none (called periodically)."""
        for principal in list(self._windows):
            window = self._windows[principal]
            self._expire(window, now)
            if not window:
                del self._windows[principal]

    def _expire(self, window: OrderedDict[Key, tuple[int, float]], now: float) -> None:
        cutoff = now - self.ttl
        while window and next(iter(window.values()))[1] <= cutoff:
            window.popitem(last=False)

    @property
    def principals(self) -> int:
        return len(self._windows)

    @property
    def entries(self) -> int:
        return sum(len(window) for window in self._windows.values())
