"""``triows.client``: a reconnecting Trio client for protocol v1.

    async with triows.client.connect("ws://127.0.0.1:8080/", token=token) as client:
        subscription = await client.subscribe("news")
        seq = await client.publish("news", {"headline": "hi"})
        async for event in subscription:
            match event:
                case triows.client.Message(data=data): ...
                case triows.client.Gap(first=first, last=last): ...

See docs/client.md for what survives a reconnect and what is guaranteed.
"""

from ._client.client import Client
from ._client.connect import connect
from ._client.errors import (
    ClientClosedError,
    ClientError,
    ClientState,
    ConnectionLostError,
    OfflineQueueFullError,
    PublishTimeoutError,
    RequestError,
    RequestTimeoutError,
    UnsubscribedError,
)
from ._client.pool import Pool, open_pool
from ._client.queries import HistoryPage
from ._client.subscription import Subscription
from ._core.tracking import Gap, Join, Leave, Message, Presence

__all__ = [
    "Client",
    "ClientClosedError",
    "ClientError",
    "ClientState",
    "ConnectionLostError",
    "Gap",
    "HistoryPage",
    "Join",
    "Leave",
    "Message",
    "OfflineQueueFullError",
    "Pool",
    "Presence",
    "PublishTimeoutError",
    "RequestError",
    "RequestTimeoutError",
    "Subscription",
    "UnsubscribedError",
    "connect",
    "open_pool",
]
