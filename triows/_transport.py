"""The WebSocket transport: the one module that imports trio_websocket.

trio-websocket does the opening handshake, parses incoming frames, answers pings and runs the
closing handshake. Two things it does not do are done here:

- **A boundary per connection.** Its ``WebSocketServer`` lets an exception from one
  connection's tasks propagate into ``serve_listeners`` and stop the whole server, so this
  module runs each accepted stream itself and logs what escapes (``Cancelled`` always passes).
- **A direct write path.** Its ``send_message`` takes a lock, frames the message and awaits
  ``send_all`` for every message and every receiver. A broadcast here is framed once
  (:mod:`triows._core.frames`) and :meth:`WebSocket.write_nowait` hands the ready bytes straight
  to the socket when nobody else is sending; only what the socket refuses is queued for the
  connection's writer task. That is what makes fan-out several times faster.

The direct path relies on four internals of trio-websocket 0.12 and one of trio:
``WebSocketConnection._stream``, ``._stream_lock`` (held around every ``send_all`` it makes),
``._wsproto`` (its state says whether data frames may still be sent), the server-side
``._reader_task`` / ``._get_request`` pair, and ``trio.SocketStream.socket._sock`` (the
non-blocking stdlib socket). ``tests/test_transport_assumptions.py`` checks each of them, so a
dependency upgrade that moves one fails loudly instead of corrupting streams.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    WebSocketRequest,
    wrap_client_stream,
)
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState

from ._core.outbox import Outbox

__all__ = [
    "Closed",
    "ConnectionClosed",
    "ConnectionRejected",
    "HandshakeRequest",
    "WebSocket",
    "WebSocketConnection",
    "open_client",
    "serve_streams",
]

log = logging.getLogger("triows.transport")

#: Bytes read per ``receive_some``; also bounds what one read can add to memory.
RECEIVE_BUFFER = 16 * 1024
#: trio-websocket's own queue between its reader task and ours: small, because our reader
#: drains it at once into the connection's bounded inbox (it must: when this queue is full,
#: trio-websocket stops reading, and so stops answering pings and seeing pongs).
LIBRARY_QUEUE = 4


class Closed(Exception):
    """The WebSocket is closed (by either side) or its stream broke."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class _NowaitStream(Protocol):
    def send_some_nowait(self, data: bytes | memoryview) -> int: ...


def _direct_writer(stream: trio.abc.Stream) -> Callable[[bytes | memoryview], int] | None:
    """A synchronous "write what fits now" function for ``stream``, if it has one.

    TCP streams write into the kernel buffer through the non-blocking stdlib socket that trio
    wraps; ``triows.testing`` memory streams offer ``send_some_nowait``. TLS streams have no
    such path (encryption state cannot be advanced outside ``send_all``) and always queue.
    """
    if isinstance(stream, trio.SocketStream):
        send = stream.socket._sock.send  # type: ignore[attr-defined]

        def write(data: bytes | memoryview) -> int:
            try:
                return int(send(data))
            except OSError:
                # EAGAIN: the buffer is full. EPIPE/ECONNRESET: the writer task's send_all
                # will raise BrokenResourceError for the queued bytes and end the connection.
                return 0

        return write
    nowait = getattr(stream, "send_some_nowait", None)
    return nowait if callable(nowait) else None


class WebSocket:
    """The server side of one accepted WebSocket, as the connection sees it."""

    __slots__ = ("_broken", "_conn", "_direct", "_lock", "_stream", "_wsproto")

    def __init__(self, conn: WebSocketConnection) -> None:
        self._conn = conn
        self._stream: trio.abc.Stream = conn._stream
        self._lock: trio.StrictFIFOLock = conn._stream_lock
        self._wsproto: WSConnection = conn._wsproto
        self._direct = _direct_writer(self._stream)
        #: A send was cut short: part of a frame may be on the wire, so nothing more can be
        #: framed on this stream (not even a close frame).
        self._broken = False

    @property
    def is_open(self) -> bool:
        return not self._broken and self._wsproto.state is ConnectionState.OPEN

    def write_nowait(self, data: bytes | memoryview) -> int:
        """Write a ready frame (or its tail) without waiting; returns the bytes written.

        0 means nothing could be written now: another task is sending (its bytes must not be
        interleaved with ours), the socket is full, or data frames are no longer allowed. The
        caller queues what was not written; the writer task sends it in order.
        """
        if self._direct is None or self._lock.locked() or not self.is_open:
            return 0
        return self._direct(data)

    async def send_queued(self, outbox: Outbox, max_bytes: int) -> bool:
        """Send queued frames as one write, taking them only once the stream is ours.

        Taking inside the lock matters: while we hold it :meth:`write_nowait` writes nothing,
        so no frame can overtake the ones already queued. Returns False if nothing was queued.
        """
        async with self._lock:
            if not self.is_open:
                raise Closed(None, "closing")
            frames = outbox.take(max_bytes)
            if not frames:
                return False
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._broken = True
                raise Closed(1006, "stream broken") from exc
            except BaseException:
                self._broken = True  # cancelled mid-write
                raise
            outbox.written(frames)
            return True

    async def receive(self) -> str | bytes:
        try:
            return await self._conn.get_message()
        except ConnectionClosed as exc:
            reason = exc.reason
            raise Closed(
                reason.code if reason else None, reason.reason if reason else None
            ) from None

    async def ping(self, payload: bytes) -> None:
        try:
            await self._conn.ping(payload)
        except ConnectionClosed as exc:
            raise Closed(None, "closed") from exc

    @property
    def close_code(self) -> int | None:
        reason = self._conn.closed
        return reason.code if reason else None

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame and wait for the peer's; the caller bounds the wait."""
        if self._broken:
            await self.abort()
        else:
            await self._conn.aclose(code, reason)

    async def abort(self) -> None:
        await trio.aclose_forcefully(self._stream)


@attrs.frozen(kw_only=True)
class HandshakeRequest:
    """What the client asked for in its HTTP upgrade request; given to ``authenticate``.

    Header names are lower-case. ``query`` holds the first value of each parameter. Its repr
    shows header names and query keys, never their values: an application that logs a request
    must not leak the token it carries.
    """

    path: str
    query: dict[str, str] = attrs.field(repr=lambda query: f"<keys {sorted(query)}>")
    headers: dict[str, str] = attrs.field(repr=lambda headers: f"<names {sorted(headers)}>")
    remote: str
    #: The client's address without its port (what per-address limits count).
    ip: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class PendingHandshake:
    """A handshake the server has yet to accept or reject."""

    def __init__(self, request: WebSocketRequest) -> None:
        self._request = request
        target = urlsplit(request.path)
        headers: dict[str, str] = {}
        for name, value in request.headers:
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        self.info = HandshakeRequest(
            path=target.path or "/",
            query=dict(reversed(parse_qsl(target.query, keep_blank_values=True))),
            headers=headers,
            remote=_host_port(request.remote),
            ip=str(getattr(request.remote, "address", request.remote)),
        )

    async def accept(self) -> WebSocket:
        return WebSocket(await self._request.accept())

    async def reject(self, status: int, message: str) -> None:
        await self._request.reject(
            status,
            extra_headers=[(b"Content-Type", b"text/plain; charset=utf-8")],
            body=message.encode() + b"\n",
        )


def _host_port(remote: object) -> str:
    """``host:port`` of a TCP peer (``[v6]:port``), else what the stream says it is."""
    address, port = getattr(remote, "address", None), getattr(remote, "port", None)
    if address is None:
        return str(remote)
    host = f"[{address}]" if ":" in str(address) else str(address)
    return f"{host}:{port}"


class WaitingStreams:
    """Streams accepted whose HTTP request has not arrived yet: counted against the
    connection limit, and at most ``limit`` of them (more are closed at once)."""

    __slots__ = ("count", "limit", "refused")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.refused = 0

    def admit(self) -> bool:
        if self.count >= self.limit:
            self.refused += 1
            return False
        self.count += 1
        return True

    def release(self) -> None:
        self.count -= 1


HandshakeHandler = Callable[[PendingHandshake], Awaitable[None]]


async def _serve_stream(
    stream: trio.abc.Stream,
    handler: HandshakeHandler,
    *,
    max_message_size: int,
    handshake_timeout: float,
    waiting: WaitingStreams,
) -> None:
    """Everything about one TCP stream, behind a boundary no exception crosses."""
    if not waiting.admit():
        # Already as many streams that never finished their request as connections allowed:
        # only the fd limit would cap a flood of half-open handshakes otherwise.
        await trio.aclose_forcefully(stream)
        return
    try:
        async with trio.open_nursery() as nursery:
            conn = WebSocketConnection(
                stream,
                WSConnection(ConnectionType.SERVER),
                message_queue_size=LIBRARY_QUEUE,
                max_message_size=max_message_size,
                receive_buffer_size=RECEIVE_BUFFER,
            )
            nursery.start_soon(conn._reader_task)
            request: WebSocketRequest | None = None
            try:
                with trio.move_on_after(handshake_timeout):
                    request = await conn._get_request()
            finally:
                waiting.release()
            if request is None:
                # A slowloris or a client that never finished its request.
                nursery.cancel_scope.cancel()
                await trio.aclose_forcefully(stream)
                return
            try:
                pending = PendingHandshake(request)
            except OSError as exc:  # getpeername() after the peer reset: it is gone
                log.debug("peer left before its handshake was answered: %r", exc)
                nursery.cancel_scope.cancel()
                return
            try:
                await handler(pending)
            finally:
                # The handler owns the goodbye (a close frame within its deadline); all that
                # is left here is to stop trio-websocket's reader.
                nursery.cancel_scope.cancel()
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as gone:
        # The peer went away mid-handshake (a reset, a scanner): not our failure.
        log.debug("peer left during the handshake: %r", gone.exceptions[0])
    except* Exception as group:
        log.error("connection task failed", exc_info=group)
    finally:
        await trio.aclose_forcefully(stream)


async def serve_streams(
    handler: HandshakeHandler,
    listeners: list[trio.abc.Listener[Any]],
    *,
    handler_nursery: trio.Nursery,
    max_message_size: int,
    handshake_timeout: float,
    waiting: WaitingStreams,
    task_status: trio.TaskStatus[list[trio.abc.Listener[Any]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    async def serve_one(stream: trio.abc.Stream) -> None:
        await _serve_stream(
            stream,
            handler,
            max_message_size=max_message_size,
            handshake_timeout=handshake_timeout,
            waiting=waiting,
        )

    await trio.serve_listeners(
        serve_one, listeners, handler_nursery=handler_nursery, task_status=task_status
    )


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
