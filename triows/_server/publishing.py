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
        #: Largest ``data`` (encoded) a publication may carry.
        self.max_data = max_message_size - ENVELOPE_ALLOWANCE
        self._now_ms = now_ms

    def publication(self, channel: str, data: Any, sender_id: str | None) -> Publication:
        data_json = protocol.encode_value(data)
        if len(data_json) > self.max_data:
            raise DataTooLargeError(f"data is larger than {self.max_data} bytes")
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
        pub = self.client_publication(sender_id, dedupe_key, channel, data, request_id, echo)
        pub.numbered, pub.failed = numbered, failed
        return self.hand_over(pub, request_id)

    def client_publication(
        self,
        sender_id: str,
        dedupe_key: object,
        channel: str,
        data: Any,
        request_id: protocol.RequestId | None,
        echo: bool,
    ) -> Publication:
        """A client's publication: ``data`` as parsed from its frame (so encoded without the
        search for cycles), a dedupe entry only when the client gave an ``id``."""
        pub = Publication(channel, self._encoded(data, request_id), sender_id, self._now_ms())
        if request_id is not None:
            pub.dedupe = (dedupe_key, request_id)
        pub.echo = echo
        return pub

    def _encoded(self, data: Any, request_id: protocol.RequestId | None) -> bytes:
        """A client's ``data`` as parsed from its frame, encoded (without the search for
        cycles) and held to the size limit."""
        data_json = protocol.encode_parsed(data)
        if len(data_json) > self.max_data:
            raise self.data_too_large(request_id)
        return data_json

    def data_too_large(self, request_id: protocol.RequestId | None) -> ProtocolError:
        """The client's error for a ``data`` over :attr:`max_data` (413); a connection's
        publish served in the reader's step applies the same rule inline."""
        return ProtocolError(
            protocol.TOO_LARGE, f"data is larger than {self.max_data} bytes", request_id
        )

    def hand_over(
        self, pub: Publication, request_id: protocol.RequestId | None
    ) -> list[Subscriber]:
        """Give a client's publication to the broker; returns the subscribers a ``block``
        publisher must wait for. A broker that numbers at once has set ``pub.seq``."""
        try:
            return self._broker.publish(pub)
        except BrokerUnavailableError as exc:
            raise ProtocolError(protocol.UNAVAILABLE, str(exc), request_id) from None


def _checked_channel(channel: str) -> str:
    try:
        return validate_channel(channel)
    except ChannelNameError as exc:
        raise ValueError(str(exc)) from None
