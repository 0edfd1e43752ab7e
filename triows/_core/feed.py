"""One channel's messages as a cluster node receives them from Redis, put back in order.

Redis numbers every message (per channel, in one script), appends it to the channel's stream and
publishes it. Pub/sub alone loses messages whenever the node's subscription is down, so a node
delivers to its local subscribers through a :class:`Feed`:

- Before the feed has a baseline (the channel's ``(seq, epoch)`` read once the node's Redis
  subscription is confirmed), arriving messages are held.
- Live, the next seq is delivered; a seq at or below the last one is a duplicate and dropped; a
  jump asks the shell to ``Fill`` the missing range from the stream and holds what comes after.
- After a reconnect (:meth:`resync`) the feed holds messages again until a new baseline says how
  far the channel got meanwhile; the difference is filled from the stream.
- Another epoch means the numbering restarted (Redis lost the channel): ``Restart`` tells the
  local subscribers, and numbering continues from 0 in the new epoch.

What the stream no longer holds is skipped: subscribers see the jump in ``seq`` and report a gap,
exactly as with a ``drop_*`` policy (the streams keep what a node needs to catch up for the
retention window, see :mod:`triows._core.redis_format`). A long fill may be read and answered in
parts; a fill whose numbering restarted while it was read is dropped and its answer ignored.
Nothing here does I/O; the shell acts on the returned actions in order.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Entry:
    seq: int
    epoch: str
    #: The ``message`` frame's JSON payload, as the publishing node built it.
    payload: bytes
    #: The publishing node's token for its own publish, so that node can acknowledge it.
    token: str = ""
    #: The publishing connection's client id: it does not get its own message back.
    sender: str | None = None


@attrs.frozen
class Deliver:
    entry: Entry


@attrs.frozen
class Fill:
    """Read the stream for seqs ``after < seq <= upto`` and hand them to :meth:`Feed.filled`
    (in parts if the range is long)."""

    after: int
    upto: int
    #: Which fill this is. A fill can be superseded while it is being read (the numbering
    #: restarted: its range means other messages now); the answer of such a fill is ignored.
    number: int = attrs.field(default=0, eq=False)


@attrs.frozen
class Restart:
    """The channel's numbering restarted in ``epoch``; subscribers must be told."""

    epoch: str


Action = Deliver | Fill | Restart


class Feed:
    def __init__(self) -> None:
        self.epoch: str | None = None
        #: The last seq delivered (or accounted for by the baseline).
        self.seq = 0
        self._waiting_for_baseline = True
        #: The fill in progress, if any.
        self._filling: Fill | None = None
        self._fills = 0
        #: The highest seq a baseline said exists: filled up to, even if nothing new arrives.
        self._known = 0
        #: Messages waiting for a baseline or a fill, by ``(epoch, seq)`` in arrival order.
        self._held: dict[tuple[str, int], Entry] = {}

    @property
    def ready(self) -> bool:
        """True once a baseline is known: the feed's ``(seq, epoch)`` can be told to clients."""
        return self.epoch is not None

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def filling(self) -> Fill | None:
        """The fill in progress: a fill read in parts stops once it is not this one."""
        return self._filling

    def baseline(self, seq: int, epoch: str) -> list[Action]:
        """The channel's ``(seq, epoch)`` as Redis has it, read after the subscription was
        confirmed: everything published later arrives by pub/sub."""
        self._waiting_for_baseline = False
        actions: list[Action] = []
        if self.epoch is None:
            self.epoch, self.seq = epoch, seq
        elif epoch != self.epoch:
            actions.append(self._restart(epoch))
        self._known = max(self._known, seq)
        if self._filling is None:
            if seq > self.seq:
                actions.append(self._fill(seq))
            else:
                actions.extend(self._drain())
        return actions

    def resync(self) -> None:
        """The node's subscription was re-established: hold messages until the next baseline."""
        self._waiting_for_baseline = True

    def receive(self, entry: Entry) -> list[Action]:
        if self._waiting_for_baseline or self._filling is not None:
            self._hold(entry)
            return []
        return self._accept(entry)

    def filled(
        self, entries: list[Entry], *, fill: Fill | None = None, through: int | None = None
    ) -> list[Action]:
        """Entries read from the stream for ``fill`` (the one in progress when None), in seq
        order, covering seqs up to ``through`` (the whole fill when None: a long fill may be
        read and answered in parts, the last one reaching ``fill.upto``). What the range read
        lacks is gone from the stream for good: subscribers see the jump. The answer of a fill
        that was superseded meanwhile (the numbering restarted) is ignored."""
        current = self._filling
        if current is None or (fill is not None and fill.number != current.number):
            return []
        upto = current.upto
        end = upto if through is None else min(through, upto)
        actions: list[Action] = []
        for entry in entries:
            if entry.epoch == self.epoch and self.seq < entry.seq <= end:
                self.seq = entry.seq
                actions.append(Deliver(entry))
        self.seq = max(self.seq, end)
        if end < upto:
            return actions  # more parts to come
        self._filling = None
        if not self._waiting_for_baseline:
            actions.extend(self._drain())
            if self._filling is None and self.seq < self._known:
                actions.append(self._fill(self._known))
        return actions

    # -- internals ------------------------------------------------------------------------------

    def _hold(self, entry: Entry) -> None:
        if entry.epoch != self.epoch or entry.seq > self.seq:
            self._held[entry.epoch, entry.seq] = entry

    def _restart(self, epoch: str) -> Restart:
        self.epoch, self.seq, self._known = epoch, 0, 0
        # A fill being read was for the old numbering: its answer no longer fits.
        self._filling = None
        # Messages of an older numbering cannot be placed in the new one.
        self._held = {key: e for key, e in self._held.items() if e.epoch == epoch}
        return Restart(epoch)

    def _accept(self, entry: Entry) -> list[Action]:
        actions: list[Action] = []
        if entry.epoch != self.epoch:
            actions.append(self._restart(entry.epoch))
        if entry.seq <= self.seq:
            return actions  # a duplicate
        if entry.seq == self.seq + 1:
            self.seq = entry.seq
            actions.append(Deliver(entry))
            return actions
        self._hold(entry)
        actions.append(self._fill(entry.seq - 1))
        return actions

    def _fill(self, upto: int) -> Fill:
        self._fills += 1
        self._filling = Fill(self.seq, upto, self._fills)
        return self._filling

    def _drain(self) -> list[Action]:
        """Deliver held messages in order, until one is missing: that asks for a fill."""
        held, self._held = self._held, {}
        # The current epoch first, then any later one in the order it was first seen.
        epochs = list(dict.fromkeys([self.epoch, *(epoch for epoch, _ in held)]))
        ordered = sorted(held.values(), key=lambda e: (epochs.index(e.epoch), e.seq))
        actions: list[Action] = []
        for entry in ordered:
            if self._filling is not None:
                self._hold(entry)
            else:
                actions.extend(self._accept(entry))
        return actions
