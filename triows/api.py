"""A typed client of triows' HTTP API, for Python backends: ``pip install triows[api]``.

::

    from triows.api import Client

    with Client("http://127.0.0.1:8080", api_key="...") as api:
        published = api.publish("orders.7", {"id": 42}, idempotency_key="order-42")
        print(published.seq)

:class:`Client` for synchronous code (Django, Celery), :class:`AsyncClient` for async code
(FastAPI, on asyncio or Trio). Every call is retried on no answer, 5xx, 429 and 202 "unknown",
a publish with the same ``idempotency_key`` each time (see docs/http.md). Built on httpx, which
``import triows`` never loads: only ``import triows.api`` does.
"""

from ._api.asynchronous import AsyncClient
from ._api.errors import ApiError, RequestError, UnavailableError, UnknownOutcomeError
from ._api.results import (
    BroadcastResult,
    ChannelInfo,
    ChannelList,
    HistoryPage,
    MalformedReplyError,
    Member,
    Presence,
    PublishResult,
)
from ._api.sync import Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "BroadcastResult",
    "ChannelInfo",
    "ChannelList",
    "Client",
    "HistoryPage",
    "MalformedReplyError",
    "Member",
    "Presence",
    "PublishResult",
    "RequestError",
    "UnavailableError",
    "UnknownOutcomeError",
]
