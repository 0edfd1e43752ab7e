"""The hub: which member is in which channel, and each channel's sequence numbers.

Rules of this file:

- Sequence numbers are per channel, start at 1 and strictly increase within an epoch.
- A channel's epoch names one lifetime of its numbering. A channel's state is kept while it has
  members; when it has none the state (and so what the numbers meant) is discarded, and the next
  lifetime gets a new epoch. A client holding ``(epoch, seq)`` can therefore always tell
  "nothing missed" from "cannot know", and memory does not grow with channels nobody uses.
- The hub never sends anything. It answers who should receive a message and what its number is;
  the shell frames and delivers. Members are opaque hashable objects.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

import attrs

from .outbox import SlowConsumerPolicy

M = TypeVar("M", bound=Hashable)


class SubscriptionLimitError(Exception):
    """The member already holds as many subscriptions as allowed."""


@attrs.define(eq=False, slots=True)
class ChannelState(Generic[M]):
    name: str
    epoch: str
    policy: SlowConsumerPolicy
    members: dict[M, None] = attrs.field(factory=dict)  # insertion-ordered set
    seq: int = 0
    published: int = 0
    delivered: int = 0
    dropped: int = 0

    def message_id(self, seq: int) -> str:
        return f"{self.epoch}:{seq}"


@attrs.frozen
class Resume:
    """What a ``subscribe`` with ``since`` learns: whether the client missed anything."""

    recovered: bool
    #: Inclusive range of sequence numbers the client missed and cannot get, if known.
    gap: tuple[int, int] | None = None


class Hub(Generic[M]):
    def __init__(
        self,
        *,
        epoch_prefix: str,
        max_subscriptions: int,
        policy_for: Callable[[str], SlowConsumerPolicy],
    ) -> None:
        self._epoch_prefix = epoch_prefix
        self._epochs = itertools.count(1)
        self._max_subscriptions = max_subscriptions
        self._policy_for = policy_for
        self._channels: dict[str, ChannelState[M]] = {}
        self._memberships: dict[M, dict[str, ChannelState[M]]] = {}

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
        held[channel] = state
        return state

    def unsubscribe(self, member: M, channel: str) -> bool:
        held = self._memberships.get(member)
        state = held.pop(channel, None) if held else None
        if state is None:
            return False
        del state.members[member]
        self._discard_if_unused(state)
        return True

    def remove_member(self, member: M) -> None:
        """Forget every membership of a member that is gone."""
        for state in self._memberships.pop(member, {}).values():
            del state.members[member]
            self._discard_if_unused(state)

    def subscriptions(self, member: M) -> int:
        return len(self._memberships.get(member, ()))

    def channels_of(self, member: M) -> list[str]:
        return list(self._memberships.get(member, ()))

    # -- numbering ------------------------------------------------------------------------------

    def publish(self, channel: str) -> tuple[ChannelState[M], int]:
        """Number the next message of ``channel``; the caller delivers it to ``state.members``.

        A channel without members gets a state for this one message and loses it right after:
        nobody could have been told its numbers.
        """
        state = self._channels.get(channel) or self._create(channel)
        state.seq += 1
        state.published += 1
        self._discard_if_unused(state)
        return state, state.seq

    def resume(self, state: ChannelState[M], since: int, epoch: str | None) -> Resume:
        """Compare a client's last seen ``(epoch, since)`` with the channel's numbering.

        Without history every message after ``since`` is a gap; the history issue fills it.
        """
        if epoch != state.epoch or since > state.seq:
            return Resume(recovered=False)
        if since == state.seq:
            return Resume(recovered=True)
        return Resume(recovered=False, gap=(since + 1, state.seq))

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
        return sum(len(held) for held in self._memberships.values())

    # -- internals ------------------------------------------------------------------------------

    def _create(self, channel: str) -> ChannelState[M]:
        state: ChannelState[M] = ChannelState(
            name=channel,
            epoch=f"{self._epoch_prefix}.{next(self._epochs)}",
            policy=self._policy_for(channel),
        )
        self._channels[channel] = state
        return state

    def _discard_if_unused(self, state: ChannelState[M]) -> None:
        if not state.members:
            self._channels.pop(state.name, None)
