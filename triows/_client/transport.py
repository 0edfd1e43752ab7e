"""The client side of a WebSocket: trio-websocket, for ``triows.client`` and ``triows.testing``.

The server drives its own engine (``triows._net.streams``); clients and the test kit use
trio-websocket, and this is the one module that imports it, so that a server that never opens
a client never loads it (nor wsproto). Its two reaches into trio-websocket's internals
(:func:`open_client`, :func:`say_goodbye`) are kept here too.
"""

from __future__ import annotations

import h11
import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
)
from wsproto import ConnectionType, WSConnection
from wsproto.utilities import RemoteProtocolError

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
    """Client side over an already open stream (``triows.client``, tests, ``triows.testing``).

    A rejected handshake raises ``ConnectionRejected`` out of ``nursery`` (where
    trio-websocket's reader task runs), or out of this call when the refusal's body ends with
    the stream (no ``Content-Length``, HTTP/1.0, cut short: trio-websocket never hands that
    end to wsproto). A stream that ends or breaks before the server's answer (a server that
    died, a listener closed with the connection in its queue) raises :class:`ConnectionClosed`
    (1006) here at once, and an answer that is no WebSocket handshake (not HTTP, a wrong
    ``Sec-WebSocket-Accept``) :class:`ConnectionClosed` (1002).

    This is trio-websocket's ``wrap_client_stream`` but for that last point: its reader task
    ends quietly on such a stream without waking the handshake's waiter, which then waited
    for the caller's deadline (a client's ``connect_timeout``, 10 s by default) before it
    could try again. A worker killed while a client reconnects does that: the kernel closes
    the worker's connections before its listening socket, and a client quick to reconnect can
    land in that socket's queue just before it is reset.
    """
    connection = WebSocketConnection(
        stream,
        WSConnection(ConnectionType.CLIENT),
        host=host,
        path=path,
        client_extra_headers=headers,
        message_queue_size=message_queue_size,
        max_message_size=max_message_size,
    )

    opened = connection._open_handshake
    ended_unanswered = False
    bad_answer = False

    async def read() -> None:
        nonlocal ended_unanswered, bad_answer
        try:
            await connection._reader_task()
        except h11.LocalProtocolError as exc:
            # An answer wsproto refused (not HTTP, a wrong Sec-WebSocket-Accept): trio-websocket
            # then tries to send a refusal as the client, which h11 refuses. A bad peer, not a
            # bug of ours: the attempt fails like a lost connection.
            if opened.is_set() or not _answer_refused(exc):
                raise  # ours (a path or header h11 will not send), or after the handshake
            bad_answer = True
        # The stream is done (a refusal raises instead). Before the server's answer: the
        # handshake's waiter learns it now instead of at its deadline.
        if not opened.is_set():
            ended_unanswered = True
            opened.set()

    nursery.start_soon(read)
    await opened.wait()
    if ended_unanswered:
        # trio-websocket's reader does not close the stream when it raised first (an answer
        # wsproto refused): whatever ended the attempt, its socket goes with it.
        await trio.aclose_forcefully(stream)
        if connection._reject_status:
            # A refusal whose body ends with the stream (no Content-Length, HTTP/1.0) or is
            # cut short: trio-websocket never hands the EOF to wsproto, so the refusal was
            # never raised. It is still a refusal (a 403 stops the client), not a lost link.
            raise ConnectionRejected(
                connection._reject_status,
                connection._reject_headers,
                body=connection._reject_body or None,
            )
        if bad_answer:
            raise ConnectionClosed(CloseReason(1002, "invalid handshake answer"))
        raise ConnectionClosed(connection.closed or CloseReason(1006, None))
    return connection


def _answer_refused(exc: BaseException) -> bool:
    """h11 refused the refusal trio-websocket tried to send for an answer wsproto refused."""
    cause = exc.__context__
    while cause is not None:
        if isinstance(cause, RemoteProtocolError):
            return True
        cause = cause.__context__
    return False


async def say_goodbye(ws: WebSocketConnection, *, wait: bool) -> None:
    """Close with 1000. With ``wait``, until the peer's close frame arrives (trio-websocket's
    reader task receives it). Without (the client is being cancelled, and that reader with
    it), the close frame is sent and the stream closed at once: ``aclose`` waits for an event
    only that reader sets, so it is set here first."""
    if not wait:
        ws._close_handshake.set()
    await ws.aclose()
