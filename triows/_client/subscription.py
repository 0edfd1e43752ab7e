"""What ``client.subscribe()`` returns: one channel's events, buffered for the application.

The client's reader puts events here without ever waiting, so that one slow consumer cannot
stall acks and every other channel; the bound and the gap that reports what was skipped live
in the tracker's ``Backlog``.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import trio

from .._core.backlog import Backlog
from .._core.tracking import Event
from .errors import ClientError


class Unsubscriber(Protocol):
    """What a subscription needs of its client: a way to be closed (the client itself)."""

    async def unsubscribe(self, channel: str) -> None: ...


class Subscription:
    """Messages (:class:`~triows.client.Message`) and gaps (:class:`~triows.client.Gap`) of one
    channel, in order, each once. ``async for event in subscription``.

    It holds at most ``subscription_buffer`` events and ``subscription_buffer_bytes`` bytes of
    messages. The client's reader never waits for the application (acks and every other
    channel would stall behind it): when the buffer is full, newer messages are skipped and,
    once the application has caught up, one ``Gap`` with ``reason="subscription buffer full"``
    names exactly which seqs were skipped.
    """

    def __init__(self, client: Unsubscriber, channel: str, buffer: int, buffer_bytes: int) -> None:
        self.channel = channel
        self._client = client
        self._backlog = Backlog(channel, buffer, buffer_bytes)
        self._wakeup = trio.Event()
        self._ended = False
        self._error: ClientError | None = None  # why it ended, when the server ended it
        #: Asked with ``rewind``: sent with the first subscribe (also one made on connect).
        self.rewind: int | None = None

    @property
    def skipped(self) -> int:
        """Messages (and joins and leaves) skipped because the buffer was full."""
        return self._backlog.skipped

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        await trio.lowlevel.checkpoint()
        while True:
            event = self._backlog.take()
            if event is not None:
                return event
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    async def aclose(self) -> None:
        await self._client.unsubscribe(self.channel)

    def _put(self, event: Event, size: int = 0) -> None:
        """From the client's reader: queue ``event`` (``size`` bytes on the wire) without
        waiting, or skip it."""
        if not self._ended and self._backlog.put(event, size):
            self._wakeup.set()

    def _end(self, error: ClientError | None) -> None:
        self._ended = True
        self._error = error
        self._wakeup.set()


#: Subscriptions the server made that the application has not taken yet, at most.
OFFERED_KEPT = 64


class Offered:
    """Subscriptions the server made (``Server.subscribe``), for the application to take in
    order; at most :data:`OFFERED_KEPT` wait (older ones are still followed, just not
    offered: ``client.subscriptions`` has them)."""

    def __init__(self) -> None:
        self._waiting: deque[Subscription] = deque(maxlen=OFFERED_KEPT)
        self._wakeup = trio.Event()

    def put(self, subscription: Subscription) -> None:
        self._waiting.append(subscription)
        self._wakeup.set()

    async def take(self) -> Subscription:
        while not self._waiting:
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        return self._waiting.popleft()
