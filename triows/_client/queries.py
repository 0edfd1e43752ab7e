"""What a client may ask the server about channels: presence and history; and the
subscriptions the server made for it. A mixin of :class:`triows._client.client.Client`."""

from __future__ import annotations

from typing import Any

import attrs

from .._core.tracking import Message, Presence
from .subscription import Offered, Subscription


@attrs.frozen(kw_only=True)
class HistoryPage:
    """A page of a channel's history (:meth:`Client.history`): its ``messages`` in the order
    asked, and the channel's ``epoch`` (None: never numbered) and last ``seq`` when read. The
    next page: ``since`` = the last message's seq."""

    channel: str
    epoch: str | None
    seq: int
    messages: tuple[Message, ...]


class Queries:
    _offered: Offered
    _subscriptions: dict[str, Subscription]

    def _check_open(self) -> None:
        raise NotImplementedError  # the client's

    async def _request(self, frame: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError  # the client's

    async def presence(self, channel: str) -> Presence:
        """Who is subscribed to a presence channel now (every node's clients, with Redis),
        with their ``info``. Raises :class:`RequestError` (400) when the server has no
        presence for it, and :class:`ConnectionLostError` while offline. Joins and leaves of
        a channel this client follows arrive on its :class:`Subscription` as :class:`Join` /
        :class:`Leave`."""
        self._check_open()
        reply = await self._request({"type": "presence", "channel": channel})
        members = reply.get("members")
        return Presence(
            channel=channel,
            count=reply["count"],
            members=None
            if members is None
            else tuple((m["clientId"], m.get("userId")) for m in members),
            info={m["clientId"]: m["info"] for m in members or () if m.get("info") is not None},
        )

    async def history(
        self,
        channel: str,
        *,
        limit: int = 100,
        since: int | None = None,
        reverse: bool = False,
    ) -> HistoryPage:
        """A page of ``channel``'s history (the token must allow subscribing to it): the
        messages after ``since`` oldest first, or with ``reverse`` those before ``since``
        newest first ("load older"); at most ``limit`` (1 to 1000). Raises
        :class:`RequestError` (400, 403) and :class:`ConnectionLostError` while offline."""
        self._check_open()
        frame: dict[str, Any] = {"type": "history", "channel": channel, "limit": limit}
        if since is not None:
            frame["since"] = since
        if reverse:
            frame["reverse"] = True
        reply = await self._request(frame)
        return HistoryPage(
            channel=channel,
            epoch=reply.get("epoch"),
            seq=reply.get("seq", 0),
            messages=tuple(
                Message(
                    channel=channel,
                    data=m.get("data"),
                    seq=m["seq"],
                    id=m.get("id"),
                    sender=m.get("from"),
                    timestamp=m.get("timestamp", 0),
                )
                for m in reply.get("messages", ())
            ),
        )

    async def server_subscription(self) -> Subscription:
        """The next subscription the server made for this client (``Server.subscribe``, the
        HTTP API's ``/api/subscribe``): followed like the application's own from then on."""
        return await self._offered.take()

    def subscription(self, channel: str) -> Subscription | None:
        """The subscription to ``channel``, if this client follows it."""
        return self._subscriptions.get(channel)
