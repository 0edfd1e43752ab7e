"""Publish dedupe: a repeated publish ``id`` is acked again with its first seq, not re-sent.

Keyed by principal (the authenticated user, so a client that reconnects keeps its window) and
by ``(channel, id)``. Bounded four ways: at most ``size`` ids per principal, none older than
``ttl`` seconds, at most ``max_principals`` principals (the least recently active is
forgotten first) and at most ``max_entries`` ids in all (the oldest is forgotten first).

Every entry has the same ttl, so one insertion-ordered table of all entries is also their
order of expiry: :meth:`expire` pops from its front and costs only what it removes, however
many principals there are. ``now`` is the shell's monotonic clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

Key = tuple[str, str | int]  # (channel, publish id)
_Entry = tuple[Hashable, str, str | int]  # (principal, channel, publish id)


class DedupeWindow:
    __slots__ = ("_entries", "_principals", "max_entries", "max_principals", "size", "ttl")

    def __init__(
        self, *, size: int, ttl: float, max_principals: int, max_entries: int = 1_000_000
    ) -> None:
        self.size = size
        self.ttl = ttl
        self.max_principals = max_principals
        self.max_entries = max_entries
        #: Every entry, oldest first: ``(principal, channel, id) -> (seq, recorded at)``.
        self._entries: OrderedDict[_Entry, tuple[int, float]] = OrderedDict()
        #: Each principal's keys, oldest first; principals least recently active first.
        self._principals: OrderedDict[Hashable, OrderedDict[Key, None]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.size > 0 and self.ttl > 0 and self.max_entries > 0

    def lookup(
        self, principal: Hashable, channel: str, publish_id: str | int, now: float
    ) -> int | None:
        """The seq a previous publish with this id got, if it is still in the window."""
        found = self._entries.get((principal, channel, publish_id))
        if found is None or now - found[1] >= self.ttl:
            return None
        return found[0]

    def record(
        self, principal: Hashable, channel: str, publish_id: str | int, seq: int, now: float
    ) -> None:
        if not self.enabled:
            return
        entry = (principal, channel, publish_id)
        if entry in self._entries:  # expired but not yet collected: recorded anew
            self._remove(entry)
        keys = self._principals.get(principal)
        if keys is None:
            keys = self._principals[principal] = OrderedDict()
            while len(self._principals) > self.max_principals:
                self._forget_principal(next(iter(self._principals)))
        else:
            self._principals.move_to_end(principal)
        self._entries[entry] = (seq, now)
        keys[(channel, publish_id)] = None
        while len(keys) > self.size:
            self._remove((principal, *next(iter(keys))))
        while len(self._entries) > self.max_entries:
            self._remove(next(iter(self._entries)))

    def expire(self, now: float) -> None:
        """Drop expired entries (and principals left with none); costs what it removes."""
        # ``now - at >= ttl``, not ``at <= now - ttl``: the two differ by a rounding, and
        # lookup() must agree with expire() to the last bit.
        ttl = self.ttl
        entries = self._entries
        while entries:
            entry, (_, at) = next(iter(entries.items()))
            if now - at < ttl:
                break
            self._remove(entry)

    def _remove(self, entry: _Entry) -> None:
        del self._entries[entry]
        principal, channel, publish_id = entry
        keys = self._principals[principal]
        del keys[(channel, publish_id)]
        if not keys:
            del self._principals[principal]

    def forget(self, principal: Hashable) -> None:
        """Drop a principal's window at once (it can publish no more)."""
        if principal in self._principals:
            self._forget_principal(principal)

    def _forget_principal(self, principal: Hashable) -> None:
        for channel, publish_id in self._principals.pop(principal):
            del self._entries[(principal, channel, publish_id)]

    @property
    def principals(self) -> int:
        return len(self._principals)

    @property
    def entries(self) -> int:
        return len(self._entries)
