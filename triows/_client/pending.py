"""What waits for the server's answer: publishes until their ack, requests until their reply.

Both outlive one connection, so they belong to the client; the connection (``link``) feeds
them from the frames it reads. Keeping the bookkeeping here lets the client and the
connection share it through a few named operations instead of reaching into each other's
dictionaries.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
import trio


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
    """Publishes the server has not acked: ``unsent`` in call order, ``in_flight`` by id.

    A reconnect puts the ones in flight back in front of the unsent ones, with their ids: the
    server's dedupe acks any it already has instead of delivering it twice.
    """

    def __init__(self) -> None:
        self.unsent: deque[PendingPublish] = deque()
        self.in_flight: dict[str, PendingPublish] = {}
        self._more = trio.Event()

    def __len__(self) -> int:
        return len(self.unsent) + len(self.in_flight)

    def add(self, item: PendingPublish) -> None:
        self.unsent.append(item)
        self._more.set()

    def withdraw(self, item: PendingPublish) -> bool:
        """Take ``item`` back if it was not sent yet (its caller stopped waiting)."""
        if item in self.unsent:
            self.unsent.remove(item)
            return True
        return False

    def next_to_send(self) -> PendingPublish | None:
        """The oldest unsent publish, now counted in flight; None when none is left."""
        if not self.unsent:
            return None
        item = self.unsent.popleft()
        self.in_flight[item.id] = item
        return item

    async def wait_for_more(self) -> None:
        """Until a publish is added. Call it right after ``next_to_send()`` returned None,
        with no checkpoint between, so that no wakeup is lost."""
        self._more = trio.Event()
        await self._more.wait()

    def answered(self, publish_id: Any) -> PendingPublish | None:
        """The publish in flight that a frame with ``publish_id`` answers, if any."""
        return self.in_flight.pop(publish_id, None)

    def resend_unacked(self) -> None:
        """On a new connection: the publishes sent on the last one go again, first, in order."""
        self.unsent.extendleft(reversed(self.in_flight.values()))
        self.in_flight.clear()

    def fail_all(self, error: Callable[[], Exception]) -> None:
        """The client closed: every waiting publish fails (each with its own exception)."""
        for item in [*self.in_flight.values(), *self.unsent]:
            item.fail(error())
        self.in_flight.clear()
        self.unsent.clear()


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
