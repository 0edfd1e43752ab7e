"""Publish dedupe: a repeated publish ``id`` is acked again with its first seq, not re-sent.

Keyed by principal (the authenticated user, so a client that reconnects keeps its window) and
by ``(channel, id)``. :class:`DedupeRule` is the one rule both brokers follow: an id is
remembered for ``ttl`` seconds (the in-process :class:`DedupeWindow`, and the once-keys of the
Redis broker, which Redis expires). In process, memory bounds may forget an id earlier: at
most ``size`` ids per client principal, at most ``max_principals`` principals (the least
recently active is forgotten first) and at most ``max_entries`` ids in all (the oldest is
forgotten first). The server's own principal (:data:`SERVER_PRINCIPAL`: application code and
the HTTP API, every backend caller at once) has no count of its own and is never forgotten as
a principal: one caller's traffic must not push out another caller's key before its ttl.

Every entry has the same ttl, so one insertion-ordered table of all entries is also their
order of expiry: :meth:`DedupeWindow.expire` pops from its front and costs only what it
removes, however many principals there are. ``now`` is the shell's monotonic clock.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from typing import Final

import attrs

Key = tuple[str, str | int]  # (channel, publish id)
_Entry = tuple[Hashable, str, str | int]  # (principal, channel, publish id)

#: Whose idempotency keys the server's own publishes are: application code
#: (``Server.publish``) and the HTTP API, whoever calls them.
SERVER_PRINCIPAL: Final = ("server", "api")


@attrs.frozen
class DedupeRule:
    """What a broker remembers of publish ids; both brokers read this one rule."""

    #: Ids kept per client principal (in process); 0 turns dedupe off.
    size: int
    #: Seconds an id is remembered; 0 turns dedupe off.
    ttl: float
    #: Ids kept in all (in process).
    max_entries: int = 1_000_000

    @property
    def enabled(self) -> bool:
        return self.size > 0 and self.ttl > 0 and self.max_entries > 0

    @property
    def ttl_ms(self) -> int:
        """The ttl as Redis takes it (``PX``): whole milliseconds, rounded up."""
        return max(1, math.ceil(self.ttl * 1000))

    def size_for(self, principal: Hashable) -> int | None:
        """Ids ``principal``'s window holds at most; None: bounded by the ttl and
        ``max_entries`` only (the server's own principal, shared by every backend caller)."""
        return None if principal == SERVER_PRINCIPAL else self.size


class DedupeWindow:
    __slots__ = ("_entries", "_principals", "enabled", "max_principals", "rule", "ttl")

    def __init__(
        self, *, size: int, ttl: float, max_principals: int, max_entries: int = 1_000_000
    ) -> None:
        self.rule = DedupeRule(size=size, ttl=ttl, max_entries=max_entries)
        #: Whether it keeps anything (a plain attribute: read once per publish with an id).
        self.enabled = self.rule.enabled
        self.ttl = ttl
        self.max_principals = max_principals
        #: Every entry, oldest first: ``(principal, channel, id) -> (seq, recorded at)``.
        self._entries: OrderedDict[_Entry, tuple[int, float]] = OrderedDict()
        #: Each principal's entries (the same tuples as keys of ``_entries``), oldest first;
        #: principals least recently active first.
        self._principals: OrderedDict[Hashable, OrderedDict[_Entry, None]] = OrderedDict()

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
        entries = self._entries
        if entry in entries:  # expired but not yet collected: recorded anew
            self._remove(entry)
        principals = self._principals
        keys = principals.get(principal)
        if keys is None:
            keys = principals[principal] = OrderedDict()
            self._cap_principals()
        else:
            principals.move_to_end(principal)
        entries[entry] = (seq, now)
        keys[entry] = None
        rule = self.rule
        if len(keys) > rule.size and principal != SERVER_PRINCIPAL:
            # The principal's oldest goes (one, in the steady state of a full window); it is
            # never its last, so the principal stays.
            while len(keys) > rule.size:
                del entries[keys.popitem(last=False)[0]]
        while len(entries) > rule.max_entries:
            self._remove(next(iter(entries)))

    def _cap_principals(self) -> None:
        """Forget the least recently active principals over ``max_principals``; not a
        principal without a count of its own (its keys go by ttl and ``max_entries``)."""
        principals = self._principals
        while len(principals) > self.max_principals:
            oldest = next(iter(principals))
            if self.rule.size_for(oldest) is None:
                principals.move_to_end(oldest)
                oldest = next(iter(principals))
            self._forget_principal(oldest)

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
        principal = entry[0]
        keys = self._principals[principal]
        del keys[entry]
        if not keys:
            del self._principals[principal]

    def forget(self, principal: Hashable) -> None:
        """Drop a principal's window at once (it can publish no more)."""
        if principal in self._principals:
            self._forget_principal(principal)

    def _forget_principal(self, principal: Hashable) -> None:
        entries = self._entries
        for entry in self._principals.pop(principal):
            del entries[entry]

    @property
    def principals(self) -> int:
        return len(self._principals)

    @property
    def entries(self) -> int:
        return len(self._entries)
