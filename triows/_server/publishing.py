"""Publishing: turning data into a publication and handing it to the broker.

Three publishers share these rules: application code (``Server.publish`` and friends), the
HTTP API (``triows._ops.api``) and clients (``publish`` frames, through their connection).
What they share: channel names are checked, ``data`` is encoded once and must leave room for
the ``message`` envelope within ``max_message_size``, and a repeated idempotency key (or a
client's repeated publish id) is answered from the dedupe window instead of published twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from .._brokers.fanout import FanOut, Subscriber
from .._brokers.seam import (
    Broker,
    BrokerUnavailableError,
    DataTooLargeError,
    Publication,
    Published,
)
from .._core import protocol
from .._core.dedupe import SERVER_PRINCIPAL
from .._core.names import ChannelNameError, validate_channel
from .._core.protocol import ProtocolError

#: Room kept in ``max_message_size`` for the envelope of a ``message`` frame around ``data``.
ENVELOPE_ALLOWANCE = 1024


class Publishing:
    def __init__(
        self, broker: Broker, fanout: FanOut, max_message_size: int, now_ms: Callable[[], int]
    ) -> None:
        self._broker = broker
        self._fanout = fanout
        self._max_data = max_message_size - ENVELOPE_ALLOWANCE
        self._now_ms = now_ms

    def publication(self, channel: str, data: Any, sender_id: str | None) -> Publication:
        data_json = protocol.encode_value(data)
        if len(data_json) > self._max_data:
            raise DataTooLargeError(f"data is larger than {self._max_data} bytes")
        return Publication(channel, data_json, sender_id, self._now_ms())

    async def publish_message(
        self, channel: str, data: Any, *, sender: str | None, idempotency_key: str | None
    ) -> Published:
        published, blocked = await self.publish_numbered(
            channel, data, sender=sender, idempotency_key=idempotency_key
        )
        await self._fanout.wait_for_blocked(blocked)
        return published

    async def publish_numbered(
        self, channel: str, data: Any, *, sender: str | None, idempotency_key: str | None
    ) -> tuple[Published, list[Subscriber]]:
        # A checkpoint, as trio's own APIs are, whichever broker: an application loop of
        # publishes must let readers, writers and heartbeats run.
        await trio.lowlevel.checkpoint()
        outcome: list[int | Exception] = []
        done = trio.Event()

        def settle(result: int | Exception) -> None:
            outcome.append(result)
            done.set()

        pub = self.publication(_checked_channel(channel), data, sender)
        if idempotency_key is not None:
            pub.dedupe = (SERVER_PRINCIPAL, idempotency_key)
        pub.numbered = pub.failed = settle
        blocked = self._broker.publish(pub)
        if not outcome:  # in process it is numbered at once
            await done.wait()
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        return Published(channel=pub.channel, seq=outcome[0], epoch=pub.epoch), blocked

    def publish_nowait(self, channel: str, data: Any, *, sender: str | None) -> int:
        pub = self.publication(_checked_channel(channel), data, sender)
        return self._broker.publish_nowait(pub)

    def publish_from_client(
        self,
        sender_id: str,
        dedupe_key: object,
        channel: str,
        data: Any,
        request_id: protocol.RequestId | None,
        numbered: Callable[[int], None],
        failed: Callable[[Exception], None],
        *,
        echo: bool = False,
    ) -> list[Subscriber]:
        """A client's publish, handed to the broker without waiting.

        ``numbered(seq)`` is called once the message has its number (at once in process; when
        Redis accepted it otherwise), always before a later message of the channel reaches
        the sender. Returns the subscribers a ``block`` publisher must wait for. Refusals are
        the client's error frames (413, 503).
        """
        try:
            pub = self.publication(channel, data, sender_id)
        except DataTooLargeError as exc:
            raise ProtocolError(protocol.TOO_LARGE, str(exc), request_id) from None
        if request_id is not None:
            pub.dedupe = (dedupe_key, request_id)
        pub.echo = echo
        pub.numbered, pub.failed = numbered, failed
        try:
            return self._broker.publish(pub)
        except BrokerUnavailableError as exc:
            raise ProtocolError(protocol.UNAVAILABLE, str(exc), request_id) from None


def _checked_channel(channel: str) -> str:
    try:
        return validate_channel(channel)
    except ChannelNameError as exc:
        raise ValueError(str(exc)) from None


class PublishingApi:
    """The ``Server``'s publishing methods, for application code (one place with
    :class:`Publishing`, which they call)."""

    publishing: Publishing

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        sender: str | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Publish from application code; returns the message's sequence number.

        With Redis, returns once Redis accepted it (while Redis is down it waits in the
        outage buffer; cancelling the wait does not withdraw it). Raises
        :class:`BrokerUnavailableError` when that buffer is full. Waits for subscribers of
        ``block`` channels whose outbox is full (at most ``block_timeout``; those still full
        then are disconnected with 1013). A publish repeating an ``idempotency_key`` seen on
        the channel within ``dedupe_ttl`` is not published again: it returns the first one's
        seq (the HTTP API's keys are the same keys).
        """
        published = await self.publishing.publish_message(
            channel, data, sender=sender, idempotency_key=idempotency_key
        )
        return published.seq

    async def publish_message(
        self,
        channel: str,
        data: Any,
        *,
        sender: str | None = None,
        idempotency_key: str | None = None,
    ) -> Published:
        """:meth:`publish`, answering with the channel's epoch as well as the seq."""
        return await self.publishing.publish_message(
            channel, data, sender=sender, idempotency_key=idempotency_key
        )

    async def publish_numbered(
        self,
        channel: str,
        data: Any,
        *,
        sender: str | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[Published, list[Subscriber]]:
        """:meth:`publish_message` up to the moment the publication has its number: returns
        it with the ``block`` subscribers that ran out of room, which the caller must pass to
        ``fanout.wait_for_blocked`` (the HTTP API answers first and waits in the background).
        Cancelled before it returns, the publication may still be published: it waits in the
        Redis outage buffer."""
        return await self.publishing.publish_numbered(
            channel, data, sender=sender, idempotency_key=idempotency_key
        )

    def publish_nowait(self, channel: str, data: Any, *, sender: str | None = None) -> int:
        """Like :meth:`publish`, but raises ``trio.WouldBlock`` (and publishes nothing) when a
        ``block`` subscriber has no room. In-process broker only: with Redis the seq is known
        once Redis answered, so it raises ``RuntimeError``."""
        return self.publishing.publish_nowait(channel, data, sender=sender)
