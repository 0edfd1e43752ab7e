"""``connect()``: a reconnecting client for the duration of an ``async with`` block.

The client's tasks need a nursery that outlives every call the application makes, and the
block is the natural owner: leaving it closes the client (with 1000) and ends its tasks.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .client import Client
from .endpoint import StreamOpener, TokenSource
from .groups import raise_single


@asynccontextmanager
async def connect(
    url: str,
    *,
    token: TokenSource | None = None,
    open_stream: StreamOpener | None = None,
    backoff_base: float = 0.5,
    backoff_cap: float = 30.0,
    max_attempts: int | None = None,
    publish_timeout: float = 10.0,
    offline_queue_size: int = 1000,
    publish_window: int = 16,
    ping_min: float = 5.0,
    ping_max: float = 30.0,
    ping_timeout: float = 10.0,
    connect_timeout: float = 10.0,
    subscription_buffer: int = 1000,
    subscription_buffer_bytes: int = 8 * 1024 * 1024,
) -> AsyncIterator[Client]:
    """A reconnecting client for the block's duration.

    Returns at once: the first connection is made in the background (``client.state``).
    ``token`` is sent as the ``token`` query parameter; pass a function (sync or async) to
    get a fresh one at every reconnect, e.g. after the server closed with 1008 at expiry.
    ``open_stream`` replaces the TCP connection (tests pass ``MemoryListener.connect``).
    """
    client = Client(
        url,
        token=token,
        open_stream=open_stream,
        backoff_base=backoff_base,
        backoff_cap=backoff_cap,
        max_attempts=max_attempts,
        publish_timeout=publish_timeout,
        offline_queue_size=offline_queue_size,
        publish_window=publish_window,
        ping_min=ping_min,
        ping_max=ping_max,
        ping_timeout=ping_timeout,
        connect_timeout=connect_timeout,
        subscription_buffer=subscription_buffer,
        subscription_buffer_bytes=subscription_buffer_bytes,
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client._supervise)
            try:
                yield client
            finally:
                # Cancelled (the caller's deadline passed): the client's reader is cancelled
                # too, so the server's close frame could not be read. Say goodbye without
                # waiting for it, rather than overrun the caller's deadline.
                cancelled = trio.current_effective_deadline() == -math.inf
                with trio.CancelScope(shield=True):
                    await client.aclose(wait=not cancelled)
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery is ours, not the caller's: what the block raised (ClientClosedError
        # after a 401, say) comes out as it is, as trio's own context managers do. More than
        # one exception (Cancelled included) stays a group: nothing is dropped.
        raise_single(group)
