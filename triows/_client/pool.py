"""``open_pool()``: several clients behind one ``publish()``, for publish-heavy producers.

One connection's publishes are written in order by one sender task; spreading them over N
connections lets N of them be on their way at once.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from .client import Client
from .connect import connect


class Pool:
    """N reconnecting clients for publish-heavy producers; publishes go round-robin."""

    def __init__(self, clients: list[Client]) -> None:
        self.clients = clients
        self._next = itertools.cycle(clients)

    async def publish(self, channel: str, data: Any) -> int:
        return await next(self._next).publish(channel, data)


@asynccontextmanager
async def open_pool(url: str, size: int = 4, **options: Any) -> AsyncIterator[Pool]:
    """``size`` clients, each as from :func:`connect` with ``options``."""
    if size < 1:
        raise ValueError("a pool needs at least one connection")
    async with _open_many(url, size, options) as clients:
        yield Pool(clients)


@asynccontextmanager
async def _open_many(url: str, size: int, options: dict[str, Any]) -> AsyncIterator[list[Client]]:
    """``size`` clients, each in its own ``connect()`` block, nested (closed in reverse)."""
    if size == 0:
        yield []
        return
    async with connect(url, **options) as first, _open_many(url, size - 1, options) as rest:
        yield [first, *rest]
