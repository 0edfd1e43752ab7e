"""The client side of a WebSocket: trio-websocket, for ``triows.client`` and ``triows.testing``.

The server drives its own engine (``triows._net.streams``); clients and the test kit use
trio-websocket, and this is the one module that imports it, so that a server that never opens
a client never loads it (nor wsproto).
"""

from __future__ import annotations

import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

__all__ = [
    "CloseReason",
    "ConnectionClosed",
    "ConnectionRejected",
    "WebSocketConnection",
    "open_client",
    "say_goodbye",
]


async def open_client(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    *,
    host: str,
    path: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    message_queue_size: int = 64,
    max_message_size: int = 16 * 1024 * 1024,
) -> WebSocketConnection:
    """Client side over an already open stream (tests and ``triows.testing``).

    A rejected handshake raises ``ConnectionRejected`` out of ``nursery`` (where
    trio-websocket's reader task runs), not out of this call.
    """
    return await wrap_client_stream(
        nursery,
        stream,  # type: ignore[arg-type]
        host,
        path,
        extra_headers=headers,
        message_queue_size=message_queue_size,
        max_message_size=max_message_size,
    )


async def say_goodbye(ws: WebSocketConnection, *, wait: bool) -> None:
    """Close with 1000. With ``wait``, until the peer's close frame arrives (trio-websocket's
    reader task receives it). Without (the client is being cancelled, and that reader with
    it), the close frame is sent and the stream closed at once: ``aclose`` waits for an event
    only that reader sets, so it is set here first. (The one reach into trio-websocket's
    internals, kept in the one module that imports it.)"""
    if not wait:
        ws._close_handshake.set()
    await ws.aclose()
