"""The ``Server`` methods an application calls: publishing, and its hands on connections and
channels (disconnect, unsubscribe, subscribe, revoke; history, channel state, presence).

A mixin of :class:`triows._server.server.Server`, kept apart so that the server module stays
about running; what they do is :mod:`triows._server.publishing` and
:mod:`triows._server.control`.
"""

from __future__ import annotations

from typing import Any

from .._brokers.fanout import Subscriber
from .._brokers.seam import Published
from .._core.close_codes import DISCONNECTED
from .._core.history import DEFAULT_HISTORY_LIMIT
from .._ops.view import ChannelInfo, HistoryResult
from .control import Control
from .publishing import Publishing


class PublicMethods:
    publishing: Publishing
    control: Control

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

    # -- control: with Redis each acts on the whole cluster ------------------------------------

    async def disconnect(
        self,
        *,
        user: str | None = None,
        client: str | None = None,
        code: int = DISCONNECTED,
        reason: str = "disconnected by the server",
    ) -> int:
        """Close the connections of ``user`` (or the one ``client``) with ``code``: 4600 by
        default ("do not reconnect"), 4000-4399 to let the client connect again, 4550-4999 to
        stop it. Returns how many were closed. ``ValueError`` for bad arguments."""
        return await self.control.disconnect(user=user, client=client, code=code, reason=reason)

    async def unsubscribe(
        self,
        channel: str,
        *,
        user: str | None = None,
        client: str | None = None,
        reason: str = "unsubscribed by the server",
    ) -> int:
        """Drop the subscriptions to ``channel`` of ``user`` (or ``client``); each client gets
        ``{"type":"unsubscribed","channel":C,"reason":...}``. Returns how many."""
        return await self.control.unsubscribe(channel, user=user, client=client, reason=reason)

    async def subscribe(
        self, channel: str, *, user: str | None = None, client: str | None = None
    ) -> int:
        """Subscribe the connections of ``user`` (or ``client``) to ``channel``, whatever
        their token allows: each gets ``subscribed`` (with ``"server": true``) and then the
        channel's messages. Returns how many new subscriptions were made."""
        return await self.control.subscribe(channel, user=user, client=client)

    async def revoke(self, user: str, before: float | None = None) -> int:
        """Refuse ``user``'s tokens issued (``iat``) before ``before`` (unix seconds; default
        now) at the handshake and on ``refresh``, and close their live connections with 4601
        ("do not reconnect"). Lasts ``jwt_max_age`` (else 24 hours). Returns how many
        connections were closed."""
        return await self.control.revoke(user, before)

    async def history(
        self,
        channel: str,
        *,
        limit: int = DEFAULT_HISTORY_LIMIT,
        since: int | None = None,
        reverse: bool = False,
    ) -> HistoryResult:
        """A page of ``channel``'s history (the ``history`` frame's rule)."""
        return await self.control.history(channel, limit=limit, since=since, reverse=reverse)

    async def channel(self, channel: str) -> ChannelInfo:
        """``channel``'s epoch, last seq and subscribers (every node's, with Redis)."""
        return await self.control.channel(channel)

    async def channel_presence(self, channel: str) -> dict[str, Any]:
        """``{"channel", "count", "members"}`` of a presence channel (members with their
        ``info``; ``members`` None on a counts-only channel)."""
        return await self.control.presence(channel)

    async def channels(self) -> list[dict[str, Any]]:
        """Every channel of every node: ``{"channel", "subscribers", "seq", "epoch"}``."""
        return await self.control.channels()
