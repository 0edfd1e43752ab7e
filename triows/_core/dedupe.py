"""Publish dedupe: a repeated publish ``id`` is acked again with its first seq, not re-sent.

Keyed by principal (the authenticated user, so a client that reconnects keeps its window) and by
``(channel, id)``. :class:`DedupeRule` is the one rule both brokers follow: an id is remembered
for ``ttl`` seconds (the in-process :class:`DedupeWindow`, and the once-keys of the Redis
broker, which Redis expires). In process, memory bounds may forget an id earlier: at most
``size`` ids per client principal, at most ``max_principals`` principals (the least recently
active is forgotten first) and at most ``max_entries`` ids in all (the oldest is forgotten
first; while a long run of stale tokens is walked, ``CAP_SLICE`` per publish, exceeded by one id
per slice, and ids remembered longer, never shorter). The server's own principal
(:data:`SERVER_PRINCIPAL`: application code and the HTTP API, every backend caller at once) has
no count of its own, is never forgotten as a principal and takes no place among
``max_principals``: one caller's traffic must not push out another caller's key before its ttl.

Every entry has the same ttl and ``now`` is the shell's monotonic clock, so the order in which
entries were recorded is also their order of expiry: :meth:`DedupeWindow.expire` takes from
the front of one record-ordered log and costs only what it removes, however many principals
there are. How the window is laid out, and why, is in :class:`DedupeWindow`.
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Final

import attrs

#: Tokens of the log one record's total cap (``max_entries``) reads at most (~50 µs), so a
#: run of stale tokens at the log's front is walked over several publishes, not in one.
CAP_SLICE: Final = 256

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


class _Principal:
    """One principal's ids: ``ids[channel][publish id] = complex(seq, recorded at)``, and
    their order, oldest first, as flat triples ``channel, id, entry, ...`` in a deque
    (contiguous blocks, no node per entry). A triple whose id was recorded anew since is a
    ghost (its entry is no longer the id's): it stays in place, so the order of the others
    is kept, and counts for nothing. Of its tokens in the window's log, the first ``stale``
    stand for entries that left otherwise than from the log's front; one token per triple
    follows."""

    __slots__ = ("ghosts", "ids", "indone", "limit", "order", "principal", "stale", "stamp")

    def __init__(self, principal: Hashable, limit: int) -> None:
        self.principal = principal
        #: The length ``order`` may reach: three times the ids it may hold, plus its ghosts.
        self.limit = limit
        self.ids: dict[str, dict[str | int, complex]] = {}
        self.order: deque[str | int | complex] = deque()
        self.ghosts = 0
        self.stale = 0
        #: Its tokens in ``_done``, counted for the pass numbered ``stamp``.
        self.indone = 0
        self.stamp = -1


_Log = deque[_Principal]


class DedupeWindow:
    """The in-process window, laid out for the publish path's memory traffic.

    - ``_principals``: principal → its :class:`_Principal`, least recently active first (an
      ``OrderedDict`` of principals only: one ``move_to_end`` per record, a hot node).
    - Per principal, plain dicts per channel keyed by the publish id (the principal hashed
      once, no key built); an entry is one object, ``complex(seq, at)`` (both exact in it: a
      full window's eviction frees one object); its order is a deque of ``channel, id,
      entry`` triples (a full window appends at one end and pops at the other).
    - The global order (for ``expire`` and ``max_entries``) is a log of tokens, one per
      record, in record order: the principal's object itself (8 bytes, nothing allocated),
      in four deques read as one, ``_done`` + ``_log`` + ``_next`` + ``_fresh``. A
      principal's tokens are interchangeable: its first ``stale`` ones stand for entries
      that left otherwise than from the log's front (its own count, ``forget``, the
      principals' cap), the rest for its triples in order. Nothing is unlinked then. While
      the stale tokens outnumber the entries, each record takes two steps of a pass that
      walks ``_log`` and then ``_next``, drops stale tokens and moves the others to ``_done``
      (a token is stale if fewer of its principal's tokens than ``stale`` are in ``_done``
      before it); records meanwhile go to ``_fresh``; when both are walked, the next pass
      walks ``_done`` and then ``_fresh``, each where it is (nothing is copied).
    - An id recorded anew (expired; the broker records only after a lookup missed) leaves a
      ghost, O(1). Ghosts go when they reach a front (``expire`` takes them); should they
      outnumber the entries (no ``expire`` for long), one O(tokens) sweep buries them.

    Bounds (docs/design.md, "The dedupe window, live"): ``entries ≤ max_entries`` (while a
    long run of stale tokens is walked, one more per ``CAP_SLICE`` tokens of it), ``≤ size``
    per client principal, ``principals ≤ max_principals`` (and the server's); ghosts ``≤
    max_entries + 65``; tokens (8 bytes each) about ``5 * max_entries + 165`` (checked by
    random sequences, not proven). Costs: a lookup, three dict reads; a record, O(1)
    amortized (two pass steps, ``CAP_SLICE`` tokens of the total cap); ``expire`` what it
    removes, and the stale tokens and ghosts it meets; the sweep of ghosts, O(tokens), once
    per as many ghosts as entries.
    """

    __slots__ = (
        "_count",
        "_done",
        "_fresh",
        "_ghosts",
        "_log",
        "_next",
        "_pass",
        "_principals",
        "_stale",
        "enabled",
        "max_entries",
        "max_principals",
        "rule",
        "size",
        "ttl",
    )

    def __init__(
        self, *, size: int, ttl: float, max_principals: int, max_entries: int = 1_000_000
    ) -> None:
        self.rule = DedupeRule(size=size, ttl=ttl, max_entries=max_entries)
        #: Whether it keeps anything (a plain attribute: read once per publish with an id).
        self.enabled = self.rule.enabled
        self.ttl = ttl
        self.size = size
        self.max_principals = max_principals
        self.max_entries = max_entries
        self._principals: OrderedDict[Hashable, _Principal] = OrderedDict()
        self._count = 0  # entries
        self._stale = 0  # stale tokens, of every principal
        self._ghosts = 0  # ghosts, of every principal
        self._pass = 0
        self._done: _Log = deque()
        self._log: _Log = deque()
        self._next: _Log = deque()
        self._fresh: _Log = deque()

    def lookup(
        self, principal: Hashable, channel: str, publish_id: str | int, now: float
    ) -> int | None:
        """The seq a previous publish with this id got, if it is still in the window."""
        held = self._principals.get(principal)
        if held is None:
            return None
        ids = held.ids.get(channel)
        if ids is None:
            return None
        found = ids.get(publish_id)
        if found is None or now - found.imag >= self.ttl:
            return None
        return int(found.real)

    def record(
        self, principal: Hashable, channel: str, publish_id: str | int, seq: int, now: float
    ) -> None:
        if not self.enabled:
            return
        principals = self._principals
        held = principals.get(principal)
        if held is None:
            held = self._admit(principal)
        else:
            principals.move_to_end(principal)
        channels = held.ids
        ids = channels.get(channel)
        if ids is None:
            ids = channels[channel] = {}
        elif publish_id in ids:
            # Recorded before: its triple stays in place as a ghost, the id is recorded anew.
            if self._ghosts > self._count + 64:
                self._bury()
            held.ghosts += 1
            held.limit += 3
            self._ghosts += 1
            self._count -= 1
        ids[publish_id] = entry = complex(seq, now)
        order = held.order
        order.append(channel)
        order.append(publish_id)
        order.append(entry)
        self._fresh.append(held)
        if len(order) > held.limit:
            # A full window (the steady state): the principal's oldest goes, inline; it is
            # never its last, so the principal stays, and the count is unchanged.
            if held.ghosts:
                while not self._pop_oldest(held):
                    held.stale += 1
                    self._stale += 1
            else:
                oldest = order.popleft()
                kept = channels[oldest]  # type: ignore[index]
                del kept[order.popleft()]  # type: ignore[arg-type]
                order.popleft()
                if not kept:
                    del channels[oldest]  # type: ignore[arg-type]
            held.stale += 1
            self._stale += 1
        else:
            self._count += 1
        if self._count > self.max_entries:  # one more id, or a walk of the cap not done yet
            self._cap_entries()
        if self._stale > self._count:
            self._steps()

    def _steps(self) -> None:
        """Two steps of the pass over the log (see the class)."""
        done = self._done
        for _ in range(2):
            log = self._log
            if not log:
                if self._next:  # what was recorded during the last pass: walked after
                    self._log, self._next = self._next, log
                else:
                    self._turn()
                    done = self._done
                log = self._log
                if not log:
                    return
            owner = log.popleft()
            if owner.stamp != self._pass:
                owner.stamp = self._pass
                owner.indone = 0
            if owner.indone < owner.stale:
                owner.stale -= 1
                self._stale -= 1
            else:
                owner.indone += 1
                done.append(owner)

    def _turn(self) -> None:
        """The end of a pass (nothing left to walk): the next one walks what it kept, then
        what was recorded meanwhile (record order), each where it is: nothing is moved."""
        self._log, self._next = self._done, self._fresh
        self._done, self._fresh = deque(), deque()
        self._pass += 1

    def _admit(self, principal: Hashable) -> _Principal:
        """A new principal's window (the least recently active over the cap forgotten, never
        the new one: the cap is at least one client besides the server's principal)."""
        principals = self._principals
        held = principals[principal] = _Principal(
            principal, sys.maxsize if principal == SERVER_PRINCIPAL else 3 * self.size
        )
        if len(principals) > self.max_principals:
            self._cap_principals()
        return held

    def _front(self) -> _Log:
        """The deque whose first token is the oldest of the log (empty if the log is)."""
        return self._done or self._log or self._next or self._fresh

    def _pop_oldest(self, held: _Principal) -> bool:
        """Take ``held``'s first triple; whether it was an entry (not a ghost)."""
        order = held.order
        channel = order.popleft()
        publish_id = order.popleft()
        entry = order.popleft()
        ids = held.ids[channel]  # type: ignore[index]
        if ids.get(publish_id) is not entry:  # type: ignore[arg-type]
            held.ghosts -= 1
            held.limit -= 3
            self._ghosts -= 1
            return False
        del ids[publish_id]  # type: ignore[arg-type]
        if not ids:
            del held.ids[channel]  # type: ignore[arg-type]
        return True

    def _take(self, front: _Log, held: _Principal) -> None:
        """Take the log's first token, ``held``'s, with its triple if it is not stale."""
        front.popleft()
        if front is self._done:
            held.indone -= 1
        if held.stale:
            held.stale -= 1
            self._stale -= 1
            return
        if self._pop_oldest(held):
            self._count -= 1
        if not held.order:
            del self._principals[held.principal]

    def _cap_entries(self) -> None:
        """Forget the oldest entries over ``max_entries``, reading at most ``CAP_SLICE``
        tokens. A run of stale tokens (or ghosts) behind an idle principal's live entry at the
        log's front can be as long as the window (~0.2 s to walk at the default cap): each
        record walks a slice of it and the next ones (and ``expire``) go on while the cap is
        exceeded. Meanwhile it is exceeded by one id per slice walked; ids the exact order
        would have forgotten are remembered longer (to their ttl, if closing connections
        bring the count under the cap first), never shorter (:meth:`_cap_principals`)."""
        left = CAP_SLICE
        while self._count > self.max_entries and left:
            front = self._front()
            self._take(front, front[0])
            left -= 1

    def _cap_principals(self) -> None:
        """Forget the least recently active client principals over ``max_principals``. The
        server's principal (no count of its own) is never forgotten and takes no place: while
        a walk of the total cap lags its key may outlive the exact order's, and taking a place
        it would have a client forgotten whose ids the exact order keeps (a retry published
        twice). A client principal held that way is older than every other: it goes first."""
        principals = self._principals
        limit = self.max_principals + (SERVER_PRINCIPAL in principals)
        while len(principals) > limit:
            oldest = next(iter(principals))
            if oldest == SERVER_PRINCIPAL:
                principals.move_to_end(oldest)
                oldest = next(iter(principals))
            self._forget(principals[oldest])

    def expire(self, now: float, budget: int | None = None) -> bool:
        """Drop expired entries (and principals left with none), and go on with a walk of the
        total cap not done yet (:meth:`_cap_entries`); costs what it removes, and the stale
        tokens and ghosts it meets. With ``budget``, at most that many tokens: True
        if it stopped there (call it again, after letting others run: a mass ``forget`` leaves
        up to ``max_entries`` stale tokens for one expiry, ~0.12 µs each live)."""
        # ``now - at >= ttl``, not ``at <= now - ttl``: the two differ by a rounding, and
        # lookup() must agree with expire() to the last bit. A ghost is read like an entry:
        # those after it in the log were recorded after it.
        ttl = self.ttl
        left = -1 if budget is None else budget
        while left:
            front = self._front()
            if not front:
                return False
            held = front[0]
            if (
                not held.stale
                and now - held.order[2].imag < ttl  # type: ignore[union-attr]
                and self._count <= self.max_entries  # else a walk of the cap to go on with
            ):
                return False
            self._take(front, held)
            left -= 1
        return True

    def _bury(self) -> None:
        """Take every ghost out of its principal's order and its token out of the log, in
        one walk of the log (O(tokens), once per as many ghosts as entries); the pass
        starts again on the whole log."""
        haunted: dict[_Principal, list[bool]] = {}
        for held in self._principals.values():
            if held.ghosts:
                order = list(held.order)
                haunted[held] = [
                    held.ids[order[i]].get(order[i + 1]) is not order[i + 2]  # type: ignore[index, arg-type]
                    for i in range(0, len(order), 3)
                ]
                held.order = deque(
                    part
                    for i in range(0, len(order), 3)
                    if not haunted[held][i // 3]
                    for part in order[i : i + 3]
                )
                held.limit -= 3 * held.ghosts
                held.ghosts = 0
        seen: dict[_Principal, int] = {}
        tokens: _Log = deque()
        for owner in (*self._done, *self._log, *self._next, *self._fresh):
            rank = seen.get(owner, 0)
            seen[owner] = rank + 1
            ghostly = haunted.get(owner)
            if ghostly is None or rank < owner.stale or not ghostly[rank - owner.stale]:
                tokens.append(owner)
        self._done, self._log, self._next, self._fresh = deque(), tokens, deque(), deque()
        self._pass += 1
        self._ghosts = 0

    def forget(self, principal: Hashable) -> None:
        """Drop a principal's window at once (it can publish no more)."""
        held = self._principals.get(principal)
        if held is not None:
            self._forget(held)

    def _forget(self, held: _Principal) -> None:
        del self._principals[held.principal]
        triples = len(held.order) // 3
        self._count -= triples - held.ghosts
        self._ghosts -= held.ghosts
        held.ghosts = 0
        held.stale += triples  # all its tokens in the log are stale now
        self._stale += triples
        held.order.clear()
        held.ids.clear()

    @property
    def principals(self) -> int:
        return len(self._principals)

    @property
    def entries(self) -> int:
        return self._count
