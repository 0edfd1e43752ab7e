"""Local fan-out: who is connected here, handing a framed message to a channel's subscribers,
and waiting for ``block`` subscribers that ran out of room.

This is the one thing a broker needs from the shell. Brokers decide *what* to deliver and in
which order (numbering, history, Redis); :class:`FanOut` does the delivering, typed against the
small :class:`Subscriber` protocol, so that no broker knows connections or the server.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

from .._core.auth import Principal
from .._core.hub import ChannelState
from .._core.outbox import DropCounter, Outbox, SlowConsumerPolicy

#: Close code for a subscriber that cannot keep up.
TRY_AGAIN_LATER = 1013
#: Work one task does in one step before it lets the others run: items served (requests,
#: control frames, pub/sub events) and the deliveries they caused. One 16 KiB read holds
#: hundreds of small publishes; served in one go to a few hundred subscribers each, they
#: stalled every other connection for 0.6 s.
ITEMS_PER_STEP = 64
DELIVERIES_PER_STEP = 2048


class StepBudget:
    """What a loop of work (a reader serving a read, a backlog, a batch of pub/sub events)
    has done since its last checkpoint. ``spend()`` after each item; when it says the step is
    full, the loop checkpoints and calls ``reset()``. One rule for every such loop."""

    __slots__ = ("_delivered", "_fanout", "_items")

    def __init__(self, fanout: FanOut) -> None:
        self._fanout = fanout
        self._items = 0
        self._delivered = fanout.delivered

    def spend(self) -> bool:
        self._items += 1
        return (
            self._items >= ITEMS_PER_STEP
            or self._fanout.delivered - self._delivered >= DELIVERIES_PER_STEP
        )

    def reset(self) -> None:
        self._items = 0
        self._delivered = self._fanout.delivered


class Closable(Protocol):
    def close(self, code: int, reason: str) -> None: ...


class Subscriber(Protocol):
    """What fan-out needs of a connection."""

    client_id: str
    close_code: int | None
    outbox: Outbox
    #: Who it is (presence lists members with their user ids).
    principal: Principal

    def __hash__(self) -> int: ...

    def deliver(self, frame: bytes, policy: SlowConsumerPolicy, counter: DropCounter) -> bool:
        """Take a frame without waiting; False when a ``block`` outbox went over capacity."""

    async def wait_for_room(self) -> None: ...

    def reply_nowait(self, frame: dict[str, Any]) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


class FanOut:
    """The subscribers connected to this process, by client id, and the delivery counters."""

    def __init__(self, block_timeout: float) -> None:
        self.block_timeout = block_timeout
        self._by_id: dict[str, Subscriber] = {}
        #: Frames handed to subscribers.
        self.delivered = 0
        self.slow_consumer_disconnects = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def register(self, subscriber: Subscriber) -> None:
        self._by_id[subscriber.client_id] = subscriber

    def unregister(self, subscriber: Subscriber) -> None:
        if self._by_id.get(subscriber.client_id) is subscriber:
            del self._by_id[subscriber.client_id]

    def by_id(self, client_id: str | None) -> Subscriber | None:
        return None if client_id is None else self._by_id.get(client_id)

    def deliver(
        self, state: ChannelState[Subscriber], frame: bytes, sender_id: str | None
    ) -> list[Subscriber]:
        """Hand one framed message to every local subscriber but its sender, without waiting;
        returns the ``block`` subscribers that went over capacity."""
        sender = self.by_id(sender_id)
        policy = state.policy
        blocked: list[Subscriber] = []
        delivered = 0
        for member in state.members:
            if member is not sender:
                delivered += 1
                if not member.deliver(frame, policy, state):
                    blocked.append(member)
        state.delivered += delivered
        self.delivered += delivered
        return blocked

    async def wait_for_blocked(self, blocked: list[Subscriber]) -> None:
        """Wait for each blocked subscriber to have room again, all by one deadline; those
        still full then are disconnected (1013), so a publisher never waits longer."""
        if not blocked:
            return
        deadline = trio.current_time() + self.block_timeout
        for member in blocked:
            with trio.move_on_at(deadline):
                await member.wait_for_room()
            if not member.outbox.has_room and member.close_code is None:
                self.slow_consumer(member, "Slow consumer")

    def slow_consumer(self, member: Closable, reason: str) -> None:
        """Disconnect ``member`` for not keeping up, and count it."""
        self.slow_consumer_disconnects += 1
        member.close(TRY_AGAIN_LATER, reason)
