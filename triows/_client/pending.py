"""What waits for the server's answer: publishes until their ack, requests until their reply.

Both outlive one connection, so they belong to the client; the connection (``link``) feeds
them from the frames it reads. Keeping the bookkeeping here lets the client and the
connection share it through a few named operations instead of reaching into each other's
dictionaries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio

from .._core.retry import Pacer


@attrs.define(eq=False)
class PendingPublish:
    """One ``publish()`` call, from the call until its ack (or error) or its caller gives up."""

    channel: str
    #: The publish frame, encoded once at the call (so bad data fails there, not later).
    frame: str
    id: str
    done: trio.Event = attrs.field(factory=trio.Event)
    seq: int | None = None
    error: Exception | None = None

    def succeed(self, seq: int) -> None:
        self.seq = seq
        self.done.set()

    def fail(self, error: Exception) -> None:
        self.error = error
        self.done.set()


class PublishQueue:
    """Publishes the server has not acked, paced by a :class:`~triows._core.retry.Pacer`: at
    most ``window`` in flight; one refused for now (429, 503: never numbered) goes again with
    its id, first, after a pause.

    A reconnect puts the ones in flight back in front of the others, with their ids: the
    server's dedupe acks any it already has instead of delivering it twice.
    """

    def __init__(self, window: int, backoff: tuple[float, float]) -> None:
        self._window, self._backoff = window, backoff
        self._pacer = self._new_pacer()
        self._items: dict[str, PendingPublish] = {}
        self._more = trio.Event()
        #: The pause a refusal started, for the sender to sleep before sending more.
        self._pause: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    def _new_pacer(self) -> Pacer[str]:
        return Pacer(self._window, *self._backoff)

    def add(self, item: PendingPublish) -> None:
        self._items[item.id] = item
        self._pacer.add(item.id)
        self._more.set()

    def withdraw(self, item: PendingPublish) -> bool:
        """Take ``item`` back if it is not in flight (its caller stopped waiting)."""
        if self._pacer.discard(item.id):
            del self._items[item.id]
            return True
        return False

    async def next_batch(self) -> list[PendingPublish]:
        """What may be sent now, waiting (and pausing after a refusal) until there is some."""
        while True:
            if self._pause is not None:
                pause, self._pause = self._pause, None
                await trio.sleep(pause)
                self._pacer.resume()
            taken = self._pacer.take()
            if taken:
                return [self._items[key] for key in taken]
            self._more = trio.Event()  # no checkpoint since take(): no lost wakeup
            await self._more.wait()

    def answered(self, publish_id: Any) -> PendingPublish | None:
        """The publish in flight that a frame with ``publish_id`` answers for good, if any."""
        if not isinstance(publish_id, str) or not self._pacer.answered(publish_id):
            return None
        self._more.set()  # room for the next one
        return self._items.pop(publish_id)

    def refused_for_now(self, publish_id: Any) -> bool:
        """A publish in flight refused for now (never numbered): it goes again after a pause.
        False if no publish in flight has that id."""
        if not isinstance(publish_id, str) or publish_id not in self._items:
            return False
        pause = self._pacer.refused(publish_id)
        if pause is not None:
            self._pause = pause
            self._more.set()
        return True

    def resend_unacked(self) -> None:
        """On a new connection: the publishes sent on the last one go again, first, in order."""
        self._pacer.restart()
        self._pause = None

    def fail_all(self, error: Callable[[], Exception]) -> None:
        """The client closed: every waiting publish fails (each with its own exception)."""
        for item in self._items.values():
            item.fail(error())
        self._items.clear()
        self._pacer = self._new_pacer()


class PendingRequests:
    """Subscribe, unsubscribe and presence requests waiting for their reply, by request id.

    A reply is kept until its requester takes it; when the connection ends every requester is
    woken, finds no reply, and knows the connection was lost.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, trio.Event] = {}
        self._replies: dict[str, dict[str, Any]] = {}

    def expect(self, request_id: str) -> trio.Event:
        """Register ``request_id``; the event is set when its reply arrives."""
        waiter = self._waiting[request_id] = trio.Event()
        return waiter

    def stop_waiting(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    def take_reply(self, request_id: str) -> dict[str, Any] | None:
        return self._replies.pop(request_id, None)

    def answer(self, frame: dict[str, Any]) -> bool:
        """Hand ``frame`` to the request its ``id`` names; False when none waits for it."""
        request_id = frame.get("id")
        waiter = self._waiting.get(request_id) if isinstance(request_id, str) else None
        if waiter is None:
            return False
        self._replies[frame["id"]] = frame
        waiter.set()
        return True

    def connection_lost(self) -> None:
        """Wake every requester: no reply can come on a connection that is gone."""
        for waiter in self._waiting.values():
            waiter.set()
