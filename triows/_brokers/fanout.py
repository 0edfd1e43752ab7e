"""Local fan-out: who is connected here, handing a framed message to a channel's subscribers,
and waiting for ``block`` subscribers that ran out of room.

This is the one thing a broker needs from the shell. Brokers decide *what* to deliver and in
which order (numbering, history, Redis); :class:`FanOut` does the delivering, typed against the
small :class:`Subscriber` protocol, so that no broker knows connections or the server.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

from .._config import Config
from .._core.auth import Principal
from .._core.deflate import deflated_frame
from .._core.frames import header_length
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
    #: Largest payload it may be sent compressed (permessage-deflate); 0: never.
    deflate_limit: int

    def __hash__(self) -> int: ...

    def deliver(self, frame: bytes, policy: SlowConsumerPolicy, counter: DropCounter) -> bool:
        """Take a frame without waiting; False when a ``block`` outbox went over capacity."""

    async def wait_for_room(self) -> None: ...

    def reply_nowait(self, frame: dict[str, Any]) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


class FanOut:
    """The subscribers connected to this process, by client id, and the delivery counters.

    A broadcast whose payload is over ``compression_threshold`` bytes (None: compression off)
    is compressed the first time a subscriber that negotiated permessage-deflate comes up in
    the loop, and that one compressed frame goes to every such subscriber; the others get the
    plain frame. Compressed at most once, and not at all when nobody can take it.
    """

    def __init__(self, block_timeout: float, *, compression_threshold: int | None = None) -> None:
        self.block_timeout = block_timeout
        self._by_id: dict[str, Subscriber] = {}
        #: Frames handed to subscribers.
        self.delivered = 0
        self.slow_consumer_disconnects = 0
        #: Smallest frame (header included) worth compressing: past the threshold's payload.
        self._compress_from = (
            1 << 62 if compression_threshold is None else compression_threshold + 1
        )
        #: Broadcasts compressed, and deliveries that took the compressed frame.
        self.compressed = 0
        self.compressed_deliveries = 0

    @classmethod
    def configured(cls, config: Config) -> FanOut:
        threshold = config.compression_threshold if config.compression else None
        return cls(config.block_timeout, compression_threshold=threshold)

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
        size = len(frame)
        if size - 2 < self._compress_from:  # the common small case: nothing to decide
            for member in state.members:
                if member is not sender:
                    delivered += 1
                    if not member.deliver(frame, policy, state):
                        blocked.append(member)
        else:
            payload = size - header_length(frame)
            compress = payload >= self._compress_from
            deflated: bytes | None = None
            taken = 0
            for member in state.members:
                if member is not sender:
                    delivered += 1
                    data = frame
                    if compress and member.deflate_limit >= payload:
                        if deflated is None:
                            deflated = deflated_frame(frame)
                        data = deflated
                        taken += 1
                    if not member.deliver(data, policy, state):
                        blocked.append(member)
            if deflated is not None and deflated is not frame:  # else it did not shrink
                self.compressed += 1
                self.compressed_deliveries += taken
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
