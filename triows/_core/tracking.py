"""What a reconnecting client has seen, so that its application gets each message once.

Rules of this file:

- Per channel a cursor holds the epoch and the last sequence number accounted for. A message
  at or below the cursor is a duplicate (a replay overlapping live traffic) and is dropped.
- The server never sends a client its own publications, so the seqs of our own acks are
  accounted for without a message; so are replayed messages from this client's earlier
  connections (their ``from`` is one of our past client ids).
- Anything else missing is reported as a :class:`Gap`, never skipped silently: a jump in live
  seqs (a ``drop_*`` policy), a ``gap`` the server reports on resume, or a new epoch (the
  numbering restarted: what was missed cannot be known).
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen(kw_only=True)
class Message:
    channel: str
    data: Any
    seq: int
    id: str
    sender: str | None
    timestamp: int


@attrs.frozen(kw_only=True)
class Gap:
    """Messages of ``channel`` the application will not get.

    ``first``/``last`` is the inclusive range of sequence numbers when known; both are None
    when the channel's epoch changed and what was missed cannot be known.
    """

    channel: str
    first: int | None
    last: int | None
    reason: str


@attrs.frozen(kw_only=True)
class Join:
    """A client subscribed to a presence channel (the server's ``--presence`` patterns)."""

    channel: str
    client_id: str
    user_id: str | None


@attrs.frozen(kw_only=True)
class Leave:
    """A client left a presence channel: it unsubscribed, disconnected, or its node died."""

    channel: str
    client_id: str
    user_id: str | None


@attrs.frozen(kw_only=True)
class Presence:
    """The answer to :meth:`triows.client.Client.presence`: ``members`` is None when the
    channel answers counts only (a ``--presence-counts`` pattern, or over the member limit)."""

    channel: str
    count: int
    members: tuple[tuple[str, str | None], ...] | None


Event = Message | Gap | Join | Leave


@attrs.define
class _Cursor:
    epoch: str | None = None
    seq: int = 0
    own: set[int] = attrs.field(factory=set)

    def advance_over_own(self) -> None:
        while self.seq + 1 in self.own:
            self.seq += 1
            self.own.discard(self.seq)
        self.own = {s for s in self.own if s > self.seq}


class Tracker:
    def __init__(self) -> None:
        self._cursors: dict[str, _Cursor] = {}
        self._my_ids: set[str] = set()

    def track(self, channel: str) -> None:
        self._cursors.setdefault(channel, _Cursor())

    def untrack(self, channel: str) -> None:
        self._cursors.pop(channel, None)

    def tracking(self, channel: str) -> bool:
        return channel in self._cursors

    def channels(self) -> list[str]:
        return list(self._cursors)

    def add_client_id(self, client_id: str) -> None:
        self._my_ids.add(client_id)

    def resume_from(self, channel: str) -> tuple[int, str] | None:
        """``(since, epoch)`` to resubscribe with, once the channel has been seen."""
        cursor = self._cursors.get(channel)
        if cursor is None or cursor.epoch is None:
            return None
        return cursor.seq, cursor.epoch

    def on_subscribed(self, frame: dict[str, Any]) -> list[Message | Gap]:
        cursor = self._cursors.get(frame["channel"])
        if cursor is None:
            return []
        channel, epoch, seq = frame["channel"], frame["epoch"], frame["seq"]
        if cursor.epoch is None:  # first subscription: live from here
            cursor.epoch, cursor.seq = epoch, seq
            return []
        if frame.get("recovered") is True:
            return []  # the replay follows
        gap = frame.get("gap")
        if epoch == cursor.epoch and gap is not None:
            first, last = gap
            cursor.seq = max(cursor.seq, last)
            cursor.own = {s for s in cursor.own if s > cursor.seq}
            return [Gap(channel=channel, first=first, last=last, reason="history expired")]
        if epoch == cursor.epoch and frame.get("recovered") is None:
            return []  # a plain subscribe to a channel we already follow
        cursor.epoch, cursor.seq, cursor.own = epoch, seq, set()
        return [Gap(channel=channel, first=None, last=None, reason="epoch changed")]

    def on_ack(self, channel: str, seq: int) -> None:
        cursor = self._cursors.get(channel)
        if cursor is not None and seq > cursor.seq:
            cursor.own.add(seq)
            cursor.advance_over_own()

    def on_message(self, frame: dict[str, Any]) -> list[Message | Gap]:
        cursor = self._cursors.get(frame["channel"])
        seq = frame["seq"]
        if cursor is None or seq <= cursor.seq:
            return []  # not followed, or a duplicate
        if frame.get("from") in self._my_ids:
            self.on_ack(frame["channel"], seq)
            return []
        events: list[Message | Gap] = []
        missing = [s for s in range(cursor.seq + 1, seq) if s not in cursor.own]
        if missing:
            events.append(
                Gap(
                    channel=frame["channel"],
                    first=missing[0],
                    last=missing[-1],
                    reason="messages skipped",
                )
            )
        cursor.seq = seq
        cursor.own = {s for s in cursor.own if s > seq}
        cursor.advance_over_own()
        events.append(
            Message(
                channel=frame["channel"],
                data=frame.get("data"),
                seq=seq,
                id=frame.get("id", ""),
                sender=frame.get("from"),
                timestamp=frame.get("timestamp", 0),
            )
        )
        return events


class AdaptiveInterval:
    """A ping interval between ``minimum`` and ``maximum``: doubled after ``streak`` pongs in a
    row, halved after a failure, so healthy links are pinged rarely and shaky ones often."""

    def __init__(self, minimum: float, maximum: float, streak: int = 3) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError("need 0 < minimum <= maximum")
        self.minimum, self.maximum, self._streak = minimum, maximum, streak
        self.value = minimum
        self._successes = 0

    def success(self) -> None:
        self._successes += 1
        if self._successes >= self._streak:
            self.value = min(self.maximum, self.value * 2)
            self._successes = 0

    def failure(self) -> None:
        self.value = max(self.minimum, self.value / 2)
        self._successes = 0
