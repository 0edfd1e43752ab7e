"""Revoked tokens: a user's tokens issued before a moment are refused, for a while.

``revoke(user, before)`` makes every token of ``user`` issued (``iat``) before ``before`` (unix
seconds) invalid: at the handshake, on ``refresh``, and its live connections are closed. A
token without ``iat`` counts as issued before; a principal without a token (from the
``authenticate`` hook) counts as issued when the hook vouched for it (``authenticated_at``),
so that a login after the revocation is good. The state is bounded: one entry per user (a
later revocation of the same user replaces the earlier one if it reaches further), at most
``max_entries`` users (more are refused, never silently forgotten), and each entry expires
``ttl`` seconds after its ``before`` (at most ``ttl`` from now; a ``before`` reaches at most
:data:`MAX_AHEAD` past now): with ``--jwt-max-age`` such tokens are refused anyway
by then; without it the ttl is :data:`DEFAULT_TTL`. No clock is read here: ``now`` is passed.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

#: How long a revocation lasts without ``--jwt-max-age`` (seconds).
DEFAULT_TTL: Final = 24 * 3600.0
#: Users revoked at once at most.
MAX_REVOKED: Final = 100_000
#: How far past now a revocation's ``before`` may reach (seconds): the application's clock
#: and the nodes' may differ a little; further is a mistake (a year 5138 revocation).
MAX_AHEAD: Final = 300.0


class RevocationsFull(Exception):
    """Too many users revoked at once: nothing was revoked."""


class Revocations:
    def __init__(self, ttl: float, max_entries: int = MAX_REVOKED) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        #: user -> (before, expires at)
        self._entries: dict[str, tuple[float, float]] = {}
        self._deadlines: list[tuple[float, str]] = []
        #: users whose revocation is on its way (kept in Redis, sent to the nodes): their
        #: place is held, so that two at once cannot both pass :meth:`check_room` for one.
        self._reserved: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def revoke(self, user: str, before: float, now: float) -> None:
        """Refuse ``user``'s tokens issued before ``before``; :class:`RevocationsFull` when
        ``max_entries`` other users are revoked already."""
        self.check_room(user, now)
        held = self._entries.get(user)
        if held is not None and held[0] >= before:
            return  # an earlier revocation reaches as far
        # ttl from ``before``, and never more than ttl from now (a ``before`` ahead of now).
        expires = min(before, now) + self.ttl
        if expires <= now:
            return  # every such token is too old to be accepted anyway
        self._entries[user] = (before, expires)
        heapq.heappush(self._deadlines, (expires, user))
        if len(self._deadlines) > 2 * len(self._entries) + 64:  # replaced ones: rebuild
            self._deadlines = [(exp, name) for name, (_, exp) in self._entries.items()]
            heapq.heapify(self._deadlines)

    def check_room(self, user: str, now: float) -> None:
        """:class:`RevocationsFull` when revoking ``user`` now would be refused."""
        self.expire(now)
        if user in self._entries or user in self._reserved:
            return
        held = len(self._entries) + sum(1 for name in self._reserved if name not in self._entries)
        if held >= self.max_entries:
            raise RevocationsFull(f"{self.max_entries} users are revoked already")

    @contextmanager
    def reserving(self, user: str, now: float) -> Iterator[None]:
        """Hold a place for ``user`` while its revocation is shared (kept in Redis, sent to
        the other nodes), so that a refused one is nowhere and two at once cannot both take
        the last place (check, await, count); :class:`RevocationsFull` when there is none.
        The place is given back on every exit: by then the revocation holds it (or expired)."""
        self.check_room(user, now)
        self._reserved[user] = self._reserved.get(user, 0) + 1
        try:
            yield
        finally:
            left = self._reserved.pop(user) - 1
            if left:
                self._reserved[user] = left

    def revoked(
        self,
        user: str | None,
        claims: dict[str, Any],
        now: float,
        authenticated_at: float | None = None,
    ) -> bool:
        """Whether a token of ``user`` with ``claims`` is revoked at ``now``; without an
        ``iat`` claim, issued at ``authenticated_at`` (the hook's principal), or before."""
        if user is None:
            return False
        held = self._entries.get(user)
        if held is None or held[1] <= now:
            return False
        issued = claims.get("iat")
        if isinstance(issued, bool) or not isinstance(issued, int | float):
            issued = authenticated_at
        return issued is None or issued < held[0]

    def expire(self, now: float) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            expires, user = heapq.heappop(deadlines)
            held = self._entries.get(user)
            if held is not None and held[1] == expires:
                del self._entries[user]
