"""What a reconnecting client has seen, so that its application gets each message once.

The rules are written once, in docs/delivery.md ("What a client does with it"), and pinned as
data in ``tests/vectors/tracking.json``, which this tracker and triows.js's both pass. In short:

- Per channel a cursor holds the epoch and the last sequence number accounted for. A message
  at or below the cursor is a duplicate (a replay overlapping live traffic, or a node catching
  up) and is dropped; within an epoch the cursor never moves backwards.
- The server never sends a client its own publications: the seqs of its acks are accounted for
  without a message, late acks (after the caller stopped waiting) included, and so are replayed
  messages of this client's earlier connections (their ``from`` is one of its last
  :data:`CLIENT_IDS_KEPT` client ids) and any message whose seq was acked to it.
- A resume answered ``recovered``, or in the same epoch without a ``gap`` (a node whose feed is
  behind the client's cursor), missed nothing. So does a reply in an epoch the cursor left (a
  node that has not seen the numbering restart yet): a cursor never goes back to an epoch it
  left, and a message whose id names another epoch than the cursor's is not delivered.
  Anything else missing is reported as a :class:`Gap`, never skipped silently: a jump in live
  seqs (a ``drop_*`` policy), a ``gap`` the server reports on resume, or a new epoch (the
  numbering restarted: what was missed cannot be known). Gaps name exact ranges: never a seq
  this client published.
- A first subscription with ``rewound: k`` (``rewind``) starts its cursor ``k`` below the
  reply's seq: the rewound messages that follow are delivered, once, in order, then live.
- A frame without what its rule needs (a channel, a whole-number seq, an epoch, a gap of two
  seqs) is ignored; ``recovered: null`` is no ``recovered`` field.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Any

import attrs

from .protocol import MAX_EPOCH_LENGTH, MAX_SAFE_INTEGER


def check_position(since: object, epoch: object, rewind: object) -> None:
    """Refuse, before anything is sent, a ``subscribe`` position the server would refuse or
    that means nothing (``tests/vectors/positions.json``: triows.js's ``checkPosition`` passes
    the same vectors). ``None`` is "not given". ``since`` and ``rewind`` are whole numbers from 0
    to :data:`MAX_SAFE_INTEGER` (not booleans); ``epoch`` a string of 1 to
    :data:`MAX_EPOCH_LENGTH` characters; a ``since`` above 0 needs its ``epoch`` (``since=0``
    alone is "a channel never numbered") and an ``epoch`` needs its ``since``.

    Raises ValueError with the reason."""
    for key, value in (("since", since), ("rewind", rewind)):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 0 <= value <= MAX_SAFE_INTEGER
        ):
            raise ValueError(f"'{key}' must be an integer from 0 to {MAX_SAFE_INTEGER}")
    if epoch is not None and (not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH_LENGTH):
        raise ValueError(f"'epoch' must be a string of 1 to {MAX_EPOCH_LENGTH} characters")
    if epoch is None and since is not None and since != 0:
        raise ValueError("a position with a seq has an epoch")
    if epoch is not None and since is None:
        raise ValueError("an epoch needs its since")


#: Client ids of earlier connections whose replayed publications are recognised as this
#: client's own. Older ones are forgotten (a bound): a publication of theirs still unacked
#: when its connection died is resent with its id, and its ack accounts for it too.
CLIENT_IDS_KEPT = 16
#: Epochs a cursor left that it still recognises (its last epoch changes): a reply in one of
#: them comes from a node that has not seen the numbering restart yet.
EPOCHS_LEFT_KEPT = 4
#: ``Gap.reason`` values.
HISTORY_EXPIRED = "history expired"
EPOCH_CHANGED = "epoch changed"
MESSAGES_SKIPPED = "messages skipped"
SUBSCRIPTION_BUFFER_FULL = "subscription buffer full"


@attrs.frozen(kw_only=True)
class Message:
    channel: str
    data: Any
    seq: int
    #: ``<epoch>:<seq>`` (None only if the server sent none).
    id: str | None
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
class Recovered:
    """A resume missed nothing: the server said ``recovered``, or the node answering is behind
    the client's cursor in the same epoch. What history replays follows. (triows.js emits it as
    its ``recovered`` event; triows.client has nothing to tell the application.)"""

    channel: str
    epoch: str
    seq: int


@attrs.frozen(kw_only=True)
class Join:
    """A client subscribed to a presence channel (the server's ``--presence`` patterns)."""

    channel: str
    client_id: str
    user_id: str | None
    #: The connection's ``info`` (a JSON object its token or the server gave), if any.
    info: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class Leave:
    """A client left a presence channel: it unsubscribed, disconnected, or its node died."""

    channel: str
    client_id: str
    user_id: str | None
    info: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class Presence:
    """The answer to :meth:`triows.client.Client.presence`: ``members`` is None when the
    channel answers counts only (a ``--presence-counts`` pattern, or over the member limit)."""

    channel: str
    count: int
    members: tuple[tuple[str, str | None], ...] | None
    #: Members' ``info`` by client id (those that have one).
    info: dict[str, dict[str, Any]] = attrs.field(factory=dict)


#: What a subscription yields.
Event = Message | Gap | Join | Leave
#: What the tracker makes of a frame.
Tracked = Message | Gap | Recovered


@attrs.define
class _Cursor:
    epoch: str | None = None
    #: The last seq accounted for: delivered, reported missing, or this client's own.
    seq: int = 0
    #: Seqs above ``seq`` acked to this client (its own publications).
    own: set[int] = attrs.field(factory=set)
    #: Epochs this cursor left, the last :data:`EPOCHS_LEFT_KEPT` of them.
    left: deque[str] = attrs.field(factory=lambda: deque(maxlen=EPOCHS_LEFT_KEPT))

    def restart(self, epoch: str, seq: int) -> None:
        """The numbering restarted: start again at ``(epoch, seq)``, remembering the old one."""
        if self.epoch is not None:
            self.left.append(self.epoch)
        self.epoch, self.seq, self.own = epoch, seq, set()

    def settle(self) -> None:
        """Move over own seqs that now follow the cursor; forget those at or below it."""
        while self.seq + 1 in self.own:
            self.seq += 1
        self.own = {s for s in self.own if s > self.seq}

    def gaps(self, channel: str, first: int, last: int, reason: str) -> list[Gap]:
        """Exact ranges of ``first..last`` still missing: above the cursor, not our own."""
        low = max(first, self.seq + 1)
        gaps = []
        for own in sorted(s for s in self.own if low <= s <= last):
            if own > low:
                gaps.append(Gap(channel=channel, first=low, last=own - 1, reason=reason))
            low = own + 1
        if low <= last:
            gaps.append(Gap(channel=channel, first=low, last=last, reason=reason))
        return gaps


class Tracker:
    """Per channel cursors, this client's ids and the acks it expects (see the module doc)."""

    def __init__(self) -> None:
        self._cursors: dict[str, _Cursor] = {}
        self._my_ids: deque[str] = deque(maxlen=CLIENT_IDS_KEPT)
        #: Publish id -> channel, from the moment it is sent until its ack or error: a late
        #: ack (after the caller stopped waiting) still tells which seq is ours.
        self._expected: dict[Hashable, str] = {}

    # -- what is followed -----------------------------------------------------------------------

    def track(self, channel: str) -> None:
        self._cursors.setdefault(channel, _Cursor())

    def start_at(self, channel: str, seq: int, epoch: str) -> None:
        """Follow ``channel`` from a position read elsewhere (``/api/channel``): its first
        reply is then a resume from there (rules 2-5): every message after it, or the gap."""
        self._cursors[channel] = _Cursor(epoch=epoch, seq=seq)

    def untrack(self, channel: str) -> None:
        """Unsubscribed, or the subscription was refused: nothing of it is delivered any more."""
        self._cursors.pop(channel, None)

    def channels(self) -> list[str]:
        return list(self._cursors)

    def add_client_id(self, client_id: str) -> None:
        """A new connection's id: messages ``from`` it (or the last few before it) are ours."""
        if client_id in self._my_ids:
            self._my_ids.remove(client_id)
        self._my_ids.append(client_id)

    def restore(self, channel: str, epoch: str, seq: int) -> None:
        """Follow ``channel`` from ``(epoch, seq)`` as if it had been seen up to there: a
        position carried over from elsewhere (an SSE stream's ``Last-Event-ID``, another
        stream's step). In the cursor's own epoch it only moves (the epochs it left stay)."""
        cursor = self._cursors.get(channel)
        if cursor is None or cursor.epoch != epoch:
            self._cursors[channel] = _Cursor(epoch=epoch, seq=seq)
        else:
            cursor.seq = seq
            cursor.settle()

    def resume_from(self, channel: str) -> tuple[int, str] | None:
        """``(since, epoch)`` to resubscribe with, once the channel has been seen."""
        cursor = self._cursors.get(channel)
        if cursor is None or cursor.epoch is None:
            return None
        return cursor.seq, cursor.epoch

    # -- own publications -----------------------------------------------------------------------

    def expect_ack(self, publish_id: Hashable, channel: str) -> None:
        """A publish went out: its ack, whenever it comes, names a seq of ours."""
        self._expected[publish_id] = channel

    def forget_ack(self, publish_id: Hashable) -> None:
        """The publish was refused (an error reply): no ack will come."""
        self._expected.pop(publish_id, None)

    def on_ack(self, publish_id: Hashable, seq: int) -> None:
        channel = self._expected.pop(publish_id, None)
        cursor = None if channel is None else self._cursors.get(channel)
        if cursor is not None and seq > cursor.seq:
            cursor.own.add(seq)
            cursor.settle()

    # -- frames ---------------------------------------------------------------------------------

    def receive(self, frame: dict[str, Any]) -> list[Tracked]:
        """Any frame from the server: what the application gets from it."""
        kind = frame.get("type")
        if kind == "message":
            return self.on_message(frame)
        if kind == "subscribed":
            return self.on_subscribed(frame)
        if kind == "ack":
            seq = _seq(frame.get("seq"))
            if seq is not None:
                self.on_ack(frame.get("id"), seq)
        elif kind == "error":
            self.forget_ack(frame.get("id"))
        return []

    def on_subscribed(self, frame: dict[str, Any]) -> list[Tracked]:
        channel, epoch, seq = frame.get("channel"), frame.get("epoch"), _seq(frame.get("seq"))
        if not isinstance(channel, str) or not isinstance(epoch, str) or seq is None:
            return []  # malformed: nothing to go by
        cursor = self._cursors.get(channel)
        if cursor is None:
            return []
        recovered, gap = frame.get("recovered"), frame.get("gap")
        if gap is not None and _range(gap) is None:
            return []  # malformed
        if cursor.epoch is None:  # the first subscription: live from here
            cursor.epoch, cursor.seq = epoch, seq
            rewound = _seq(frame.get("rewound"))
            if rewound is not None and rewound <= seq:
                # The last ``rewound`` messages follow from history: start before them.
                cursor.seq = seq - rewound
            cursor.settle()
            return []
        if epoch in cursor.left:
            # A node that has not seen the numbering restart yet: nothing missed, and what it
            # sends of that old numbering is not delivered (on_message). The cursor stays.
            if recovered is None:
                return []
            return [Recovered(channel=channel, epoch=cursor.epoch, seq=cursor.seq)]
        if epoch != cursor.epoch:  # the numbering restarted: what was missed is unknown
            cursor.restart(epoch, seq)
            return [Gap(channel=channel, first=None, last=None, reason=EPOCH_CHANGED)]
        if recovered is None:
            return []  # a plain reply for a channel already followed
        found = _range(gap)
        if found is None:
            if recovered is False and seq == 0:
                # The server's notice that the numbering restarted, in the epoch this cursor
                # already has (it learnt it on another node): nothing new.
                return []
            # Recovered, or a node behind our cursor (same epoch: it cannot have messages we
            # missed). The cursor stays: what the node sends up to it are duplicates.
            return [Recovered(channel=channel, epoch=epoch, seq=seq)]
        first, last = found
        gaps: list[Tracked] = [*cursor.gaps(channel, first, last, HISTORY_EXPIRED)]
        cursor.seq = max(cursor.seq, last)
        cursor.settle()
        return gaps

    def on_message(self, frame: dict[str, Any]) -> list[Tracked]:
        channel, seq = frame.get("channel"), _seq(frame.get("seq"))
        if not isinstance(channel, str) or seq is None:
            return []  # malformed
        cursor = self._cursors.get(channel)
        if cursor is None or cursor.epoch is None or seq <= cursor.seq:
            return []  # not followed, not subscribed yet (live starts at the reply), a duplicate
        message_id = frame.get("id")
        if not isinstance(message_id, str):
            message_id = None
        elif ":" in message_id and message_id.rpartition(":")[0] != cursor.epoch:
            return []  # another epoch's message (a node behind a numbering restart)
        events: list[Tracked] = [*cursor.gaps(channel, cursor.seq + 1, seq - 1, MESSAGES_SKIPPED)]
        own = seq in cursor.own or frame.get("from") in self._my_ids
        cursor.seq = seq
        cursor.settle()
        if not own:
            events.append(
                Message(
                    channel=channel,
                    data=frame.get("data"),
                    seq=seq,
                    id=message_id,
                    sender=frame.get("from"),
                    timestamp=frame.get("timestamp", 0),
                )
            )
        return events


def _seq(value: object) -> int | None:
    """A sequence number as the server writes it (a whole number, 0 or more), else None.
    (JSON has one number type: 4.0 is 4, as it is for triows.js; true is not a number.)"""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if value >= 0 else None


def _range(value: object) -> tuple[int, int] | None:
    """A ``gap`` as ``(first, last)``, or None when it is not two seqs in order."""
    if not isinstance(value, list) or len(value) != 2:
        return None
    first, last = _seq(value[0]), _seq(value[1])
    if first is None or last is None or first > last:
        return None
    return first, last


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
