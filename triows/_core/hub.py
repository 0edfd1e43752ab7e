"""The hub: which member is in which channel, and each channel's sequence numbers.

Rules of this file:

- Sequence numbers are per channel, start at 1 and strictly increase within an epoch.
- A channel's epoch names one lifetime of its numbering. A channel without members stays
  *idle*, keeping its epoch and seq (and its history, until that expires), so that a client
  coming back to a quiet channel is told exactly what it missed; only a channel evicted from
  the idle ones is forgotten, and its next lifetime gets a new epoch. A client holding
  ``(epoch, seq)`` can therefore always tell "nothing missed" from "cannot know".
- Memory is bounded: channels with members are bounded by the connections' subscription
  limits; idle channels are at most ``max_idle_channels`` (the one published to, or left,
  least recently is forgotten first; 0 forgets a channel as soon as it has no members), each
  history by its size, bytes and ttl, and all histories together by ``max_history_bytes`` (the
  oldest messages of the channel published to least recently go first).
- Periodic work costs what it removes: histories expire through a heap of deadlines, never by
  walking every channel.
- The hub never sends anything. It answers who should receive a message and what its number is;
  the shell frames and delivers. Members are opaque hashable objects.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Generic, TypeVar

import attrs

from .history import History, Unframed
from .outbox import SlowConsumerPolicy

M = TypeVar("M", bound=Hashable)


class SubscriptionLimitError(Exception):
    """The member already holds as many subscriptions as allowed."""


@attrs.define(eq=False, slots=True)
class ChannelState(Generic[M]):
    name: str
    epoch: str
    policy: SlowConsumerPolicy
    history: History
    members: dict[M, None] = attrs.field(factory=dict)  # insertion-ordered set
    seq: int = 0
    published: int = 0
    delivered: int = 0
    dropped: int = 0
    #: The deadline this channel has in the hub's expiry heap, if any.
    expiry_deadline: float | None = None
    #: What the in-process broker made once to frame this channel's messages (its head and
    #: epoch), if anything: there a channel keeps its name and epoch for its lifetime. (The
    #: Redis broker, whose epochs follow Redis, neither makes nor reads them, and keeps no
    #: history here.)
    frame_parts: tuple[bytes, bytes] | None = None

    def message_id(self, seq: int) -> str:
        return f"{self.epoch}:{seq}"


@attrs.frozen
class Resume:
    """What a ``subscribe`` with ``since`` learns: what the client missed and what it gets."""

    recovered: bool
    #: Inclusive range of sequence numbers the client missed and cannot get, if known.
    gap: tuple[int, int] | None = None
    #: Frames of the missed messages history still holds, in order, to send before live ones.
    replay: tuple[bytes, ...] = ()
    #: The ``(seq, epoch)`` the reply states when it is not the node's own (see
    #: :func:`resume_behind_restart`); None: the node's.
    numbering: tuple[int, str] | None = None


def resume_without_history(
    since: int, epoch: str | None, current_epoch: str | None, current_seq: int
) -> Resume | None:
    """The answer to a resume from ``(epoch, since)`` when no history is needed, else None.

    Another epoch means the numbers the client holds mean nothing here: ``recovered`` is false
    and nothing is replayed. Nothing missed: recovered.

    ``since`` beyond ``current_seq`` in the same epoch: where ``current_seq`` is the channel's
    own numbering (in process) this cannot be lag, only a client's bug: ``recovered`` false, no
    gap, nothing replayed (a tracker keeps its cursor: within an epoch it never moves back).
    Where it is only how far a node's feed got (Redis), the broker first lets the feed catch up
    or asks the numbering itself: :func:`resume_ahead_of_feed`.
    """
    if epoch != current_epoch or since > current_seq:
        return Resume(recovered=False)
    if since == current_seq:
        return Resume(recovered=True)
    return None


def resume_ahead_of_feed(
    since: int, epoch: str | None, channel_epoch: str | None, channel_seq: int
) -> Resume:
    """A resume from beyond what this node has delivered, in its feed's epoch, answered by the
    channel's numbering (``channel_epoch``, ``channel_seq``, read from where it lives).

    The node is behind the client (pub/sub in flight, a fill after a link reset, a blocked
    subscriber): ``since`` was numbered in this epoch, so the client missed nothing and nothing
    is replayed; what the node hands over later up to ``since`` the client already has.
    Beyond the numbering itself, the client's numbers are not this epoch's: not recovered.
    """
    if epoch == channel_epoch and since <= channel_seq:
        return Resume(recovered=True)
    return Resume(recovered=False)


def resume_behind_restart(
    since: int, epoch: str | None, channel_epoch: str | None, channel_seq: int
) -> Resume | None:
    """A resume in another epoch than the node's feed, when the channel's numbering (read from
    where it lives) is in the client's epoch: the numbering restarted and this node has not
    seen it yet (its feed is held up, or nothing reached it since). The client, which saw the
    new numbering elsewhere, missed nothing; the reply states the client's epoch at seq 0 (where
    this node's traffic in that epoch will start) and what the node still sends of the old
    numbering is not that epoch's (trackers drop it by its id). None when the numbering is not
    the client's: the numbers the client holds mean nothing here.
    """
    if epoch is None or epoch != channel_epoch or since > channel_seq:
        return None
    return Resume(recovered=True, numbering=(0, epoch))


def resume_from_history(since: int, current_seq: int, held: Sequence[tuple[int, bytes]]) -> Resume:
    """A resume from ``since`` (same epoch, behind ``current_seq``) given ``held``: the
    ``(seq, frame)`` of every message after ``since`` that history still holds, in order.

    Every held message is replayed; ``gap`` names the range history no longer reaches.
    """
    if not held:
        return Resume(recovered=False, gap=(since + 1, current_seq))
    replay = tuple(frame for _, frame in held)
    first = held[0][0]
    if first <= since + 1:
        return Resume(recovered=True, replay=replay)
    return Resume(recovered=False, gap=(since + 1, first - 1), replay=replay)


class Hub(Generic[M]):
    def __init__(
        self,
        *,
        epoch_prefix: str,
        max_subscriptions: int,
        policy_for: Callable[[str], SlowConsumerPolicy],
        history_for: Callable[[str], tuple[int, float]] = lambda _: (0, 0.0),
        max_idle_channels: int = 10_000,
        channel_history_bytes: int = 1 << 62,
        max_history_bytes: int = 1 << 62,
    ) -> None:
        self._epoch_prefix = epoch_prefix
        self._epochs = itertools.count(1)
        self._max_subscriptions = max_subscriptions
        self._policy_for = policy_for
        self._history_for = history_for
        self._max_idle = max_idle_channels
        self._channel_history_bytes = channel_history_bytes
        self._max_history_bytes = max_history_bytes
        #: Kept as they change, so that statistics cost O(1) with any number of channels.
        self._history_bytes = 0
        self._history_messages = 0
        self._subscription_count = 0
        #: Channels holding history, least recently published first.
        self._recency: dict[str, ChannelState[M]] = {}
        #: ``(deadline, tiebreak, channel)``: when a channel's oldest message outlives its ttl.
        self._deadlines: list[tuple[float, int, str]] = []
        self._tiebreak = itertools.count()
        self._channels: dict[str, ChannelState[M]] = {}
        self._memberships: dict[M, dict[str, ChannelState[M]]] = {}
        #: Channels without members, kept with their numbering, least recently used first.
        self._idle: dict[str, ChannelState[M]] = {}
        #: The channel last put at the end of ``_recency`` / ``_idle`` by :meth:`record`, while
        #: it is still there and still last (anything else that changes either forgets it): a
        #: channel published to again and again is not moved to where it is.
        self._recency_last: ChannelState[M] | None = None
        self._idle_last: ChannelState[M] | None = None
        #: Frames dropped on channels forgotten since, by slow-consumer policy.
        self._retired_drops: dict[SlowConsumerPolicy, int] = {}

    # -- membership ---------------------------------------------------------------------------

    def subscribe(self, member: M, channel: str) -> ChannelState[M]:
        """Add ``member`` to ``channel`` (idempotent) and return the channel's state."""
        held = self._memberships.setdefault(member, {})
        state = held.get(channel)
        if state is not None:
            return state
        if len(held) >= self._max_subscriptions:
            raise SubscriptionLimitError(
                f"subscription limit of {self._max_subscriptions} channels reached"
            )
        state = self._channels.get(channel) or self._create(channel)
        state.members[member] = None
        self._idle.pop(channel, None)
        self._idle_last = None
        held[channel] = state
        self._subscription_count += 1
        return state

    def unsubscribe(self, member: M, channel: str) -> bool:
        held = self._memberships.get(member)
        state = held.pop(channel, None) if held else None
        if state is None:
            return False
        del state.members[member]
        self._subscription_count -= 1
        self._discard_if_unused(state)
        return True

    def remove_member(self, member: M) -> None:
        """Forget every membership of a member that is gone."""
        for state in self._memberships.pop(member, {}).values():
            del state.members[member]
            self._subscription_count -= 1
            self._discard_if_unused(state)

    def subscriptions(self, member: M) -> int:
        return len(self._memberships.get(member, ()))

    def is_member(self, member: M, channel: str) -> bool:
        return channel in self._memberships.get(member, ())

    def channels_of(self, member: M) -> list[str]:
        return list(self._memberships.get(member, ()))

    # -- numbering ------------------------------------------------------------------------------

    def publish(self, channel: str) -> tuple[ChannelState[M], int]:
        """Number the next message of ``channel``; the caller delivers it to ``state.members``
        and then calls :meth:`record` with its frame."""
        state = self._channels.get(channel) or self._create(channel)
        state.seq += 1
        state.published += 1
        return state, state.seq

    def record(
        self, state: ChannelState[M], seq: int, frame: bytes | Unframed, now: float, size: int = -1
    ) -> None:
        """Keep a published message in history (its frame, or the parts of a frame of
        ``size`` bytes: :class:`~triows._core.history.History`); a channel without members
        goes idle (the most recently published last)."""
        history = state.history
        name = state.name
        if history.enabled:
            before = history.nbytes
            pushed_out = history.append(seq, now, frame, len(frame) if size < 0 else size)
            self._history_bytes += history.nbytes - before
            self._history_messages += 1 - pushed_out
            if history.nbytes or len(history):
                if self._recency_last is not state:  # else it is the last already
                    recency = self._recency
                    recency.pop(name, None)
                    recency[name] = state  # most recently published goes last
                    self._recency_last = state
                if state.expiry_deadline is None:
                    self._schedule(state)
            else:
                self._recency.pop(name, None)
                self._recency_last = None
            if self._history_bytes > self._max_history_bytes:
                self._enforce_total()
        if not state.members and self._idle_last is not state:
            idle = self._idle
            idle.pop(name, None)  # most recently published goes last
            idle[name] = state
            self._idle_last = state
            if len(idle) > self._max_idle:
                self._discard_if_unused(state)

    def resume(self, state: ChannelState[M], since: int, epoch: str | None, now: float) -> Resume:
        """What a client that last saw ``(epoch, since)`` missed, and what history can replay
        (the rules are :func:`resume_without_history` and :func:`resume_from_history`)."""
        known = resume_without_history(since, epoch, state.epoch, state.seq)
        if known is not None:
            return known
        self._prune(state, now)
        return resume_from_history(since, state.seq, state.history.after(since, state.frame_parts))

    def held(self, state: ChannelState[M], now: float) -> list[tuple[int, bytes]]:
        """``(seq, frame)`` of what the channel's history holds now, oldest first."""
        self._prune(state, now)
        return state.history.after(0, state.frame_parts)

    def expire(self, now: float) -> None:
        """Prune histories whose oldest message outlived its ttl. Looks only at channels whose
        deadline passed."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            deadline, _, name = heapq.heappop(deadlines)
            state = self._channels.get(name)
            if state is None or state.expiry_deadline != deadline:
                continue  # forgotten, or rescheduled since
            state.expiry_deadline = None
            self._prune(state, now)
            if state.history:
                self._schedule(state)
            else:
                self._discard_if_unused(state)

    # -- inspection -----------------------------------------------------------------------------

    def channel(self, name: str) -> ChannelState[M] | None:
        return self._channels.get(name)

    def channels(self) -> Iterator[ChannelState[M]]:
        return iter(self._channels.values())

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    @property
    def subscription_count(self) -> int:
        return self._subscription_count

    @property
    def history_bytes(self) -> int:
        return self._history_bytes

    @property
    def history_messages(self) -> int:
        return self._history_messages

    # -- internals ------------------------------------------------------------------------------

    def _create(self, channel: str) -> ChannelState[M]:
        size, ttl = self._history_for(channel)
        state: ChannelState[M] = ChannelState(
            name=channel,
            epoch=f"{self._epoch_prefix}.{next(self._epochs)}",
            policy=self._policy_for(channel),
            history=History(size, ttl, self._channel_history_bytes),
        )
        self._channels[channel] = state
        return state

    def _discard_if_unused(self, state: ChannelState[M]) -> None:
        """A channel without members goes idle, keeping its epoch and seq, history or not: a
        subscriber of a quiet channel that was away is then told exactly what it missed, not
        "epoch changed". The idle ones are bounded; the oldest is forgotten first."""
        if state.members:
            return
        self._idle.setdefault(state.name, state)
        self._idle_last = None
        while len(self._idle) > self._max_idle:
            self._forget(next(iter(self._idle.values())))

    def dropped_by_policy(self) -> dict[SlowConsumerPolicy, int]:
        """Frames slow-consumer policies dropped, ever (channels forgotten included)."""
        totals = dict(self._retired_drops)
        for state in self._channels.values():
            if state.dropped:
                totals[state.policy] = totals.get(state.policy, 0) + state.dropped
        return totals

    def _forget(self, state: ChannelState[M]) -> None:
        if state.dropped:
            drops = self._retired_drops
            drops[state.policy] = drops.get(state.policy, 0) + state.dropped
            state.dropped = 0
        self._history_bytes -= state.history.nbytes
        self._history_messages -= len(state.history)
        state.history.clear()
        state.expiry_deadline = None  # its heap entry is now stale
        self._recency.pop(state.name, None)
        self._idle.pop(state.name, None)
        self._recency_last = self._idle_last = None
        if self._channels.get(state.name) is state:
            del self._channels[state.name]

    def _prune(self, state: ChannelState[M], now: float) -> None:
        history = state.history
        before, count = history.nbytes, len(history)
        history.prune(now)
        self._history_bytes += history.nbytes - before
        self._history_messages += len(history) - count
        if not history:
            self._recency.pop(state.name, None)
            self._recency_last = None

    def _schedule(self, state: ChannelState[M]) -> None:
        """Give a channel with history a deadline in the heap, unless it has one (an early
        deadline is harmless: the channel is pruned then and scheduled again)."""
        deadline = state.history.expires_at()
        if state.expiry_deadline is None and deadline is not None:
            state.expiry_deadline = deadline
            heapq.heappush(self._deadlines, (deadline, next(self._tiebreak), state.name))

    def _enforce_total(self) -> None:
        """Over the total byte cap: drop the oldest messages of the channels published to
        least recently, until under it."""
        while self._history_bytes > self._max_history_bytes and self._recency:
            state = next(iter(self._recency.values()))
            history = state.history
            before, count = history.nbytes, len(history)
            history.drop_oldest()
            self._history_bytes += history.nbytes - before
            self._history_messages += len(history) - count
            if not history:
                del self._recency[state.name]
                self._recency_last = None
                self._discard_if_unused(state)
