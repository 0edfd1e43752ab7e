"""The WebSocket transport: TCP streams in, handshakes answered, bytes in and out.

The server side drives its own engine (see docs/design.md, "Connection engine"): the opening
handshake is parsed by :mod:`triows._core.handshake`, frames by
:mod:`triows._core.frame_parser`, and what the server sends is framed by
:mod:`triows._core.frames`. This module is the I/O around them: it accepts streams, bounds the
wait for a request head, answers it, and gives :class:`triows._connection.Connection` a
:class:`WebSocket` with exactly two ways to send bytes, :meth:`WebSocket.write_nowait` and
:meth:`WebSocket.write`, which the connection uses from one ordered path.

trio-websocket stays on the client side (``triows.client``, ``triows.testing``), through
:func:`open_client`: that is the one place that imports it.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from ._core.frame_parser import FrameParser
from ._core.handshake import (
    MAX_HEAD,
    HandshakeError,
    HttpRequest,
    accept_response,
    head_end,
    http_response,
    parse_request,
    upgrade_key,
    wants_upgrade,
)
from ._core.proxy import Network, client_address

__all__ = [
    "Closed",
    "ConnectionClosed",
    "ConnectionRejected",
    "HandshakeRequest",
    "PendingHandshake",
    "WebSocket",
    "WebSocketConnection",
    "open_client",
    "serve_streams",
]

log = logging.getLogger("triows.transport")

#: Bytes read per ``receive_some``; also bounds what one read can add to memory.
RECEIVE_BUFFER = 16 * 1024


class Closed(Exception):
    """The stream broke or was closed under us: nothing more can be sent on it."""


class WebSocket:
    """The server side of one accepted WebSocket: its stream and its frame parser.

    Two ways to send, never both at once: :meth:`write_nowait` while no :meth:`write` is in
    progress, and :meth:`write`. A ``write`` cut short (cancelled, or the peer gone) may leave
    part of a frame on the wire; the socket is then ``broken`` and takes nothing more, not
    even a close frame.

    For TCP both :meth:`write_nowait` and :meth:`receive` use the non-blocking stdlib socket
    that trio wraps (``SocketStream.socket._sock``): a write goes straight into the kernel
    buffer with no task switch, and a read waits for readability first and then calls ``recv``
    once, where ``SocketStream.receive_some`` tries a ``recv`` before every wait (an
    ``EAGAIN`` system call per message on a request→reply connection). Memory streams
    (``triows.testing``) offer ``send_some_nowait``; TLS streams have no synchronous path
    (encryption state advances only in ``send_all``) and always queue. Methods, not closures:
    an idle connection should hold as few objects as possible.
    """

    __slots__ = ("_sock", "broken", "leftover", "parser", "stream", "writing")

    def __init__(self, stream: trio.abc.Stream, parser: FrameParser, leftover: bytes) -> None:
        self.stream = stream
        self.parser = parser
        #: Bytes the client sent right after its request head: its first frames.
        self.leftover = leftover
        self._sock: socket.socket | None = (
            stream.socket._sock  # type: ignore[attr-defined]
            if isinstance(stream, trio.SocketStream)
            else None
        )
        self.writing = False
        self.broken = False

    def write_nowait(self, data: bytes | memoryview) -> int:
        """Write what the socket takes now (0 while a :meth:`write` is in progress)."""
        if self.writing or self.broken:
            return 0
        sock = self._sock
        if sock is not None:
            try:
                return sock.send(data)
            except OSError:
                # EAGAIN: the buffer is full. EPIPE/ECONNRESET: the writer task's send_all
                # will raise for the queued bytes and end the connection.
                return 0
        nowait = getattr(self.stream, "send_some_nowait", None)
        return int(nowait(data)) if nowait is not None else 0

    async def write(self, data: bytes | memoryview) -> None:
        if self.broken:
            raise Closed
        self.writing = True
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.broken = True
            raise Closed from exc
        except BaseException:
            self.broken = True  # cancelled mid-write
            raise
        finally:
            self.writing = False

    async def receive(self) -> bytes:
        """The next bytes from the peer; ``b""`` at end of stream or when it broke.

        Always a checkpoint (it waits for readability first), as ``receive_some`` is, so a
        flooding client cannot starve the other tasks.
        """
        sock = self._sock
        try:
            if sock is None:
                return bytes(await self.stream.receive_some(RECEIVE_BUFFER))
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    return sock.recv(RECEIVE_BUFFER)
                except BlockingIOError:
                    continue
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            return b""  # reset, or closed under us

    def close_now(self) -> None:
        """Close a TCP socket at once (the closing handshake is done). Other streams are
        closed by the transport when the connection's task returns."""
        if self._sock is not None:
            self.stream.socket.close()  # type: ignore[attr-defined]


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

    def __init__(
        self,
        stream: trio.abc.Stream,
        request: HttpRequest,
        leftover: bytes,
        *,
        remote: str,
        ip: str,
        max_message_size: int,
        write_timeout: float,
    ) -> None:
        self._stream = stream
        self._key = upgrade_key(request)
        self._leftover = leftover
        self._max_message_size = max_message_size
        self._write_timeout = write_timeout
        target = urlsplit(request.target)
        self.info = HandshakeRequest(
            path=target.path or "/",
            query=dict(reversed(parse_qsl(target.query, keep_blank_values=True))),
            headers=request.headers,
            remote=remote,
            ip=ip,
        )

    async def accept(self) -> WebSocket:
        ws = WebSocket(self._stream, FrameParser(self._max_message_size), self._leftover)
        response = accept_response(self._key)
        written = ws.write_nowait(response)  # an empty socket takes it whole: no wait, no scope
        if written < len(response):
            with trio.fail_after(self._write_timeout):
                await self._stream.send_all(response[written:])
        else:
            await trio.lowlevel.checkpoint()  # a checkpoint either way, as send_all is
        return ws

    async def reject(self, status: int, message: str) -> None:
        await _refuse(self._stream, status, message, (), self._write_timeout)


async def _refuse(
    stream: trio.abc.Stream,
    status: int,
    reason: str,
    headers: tuple[tuple[str, str], ...],
    write_bound: float,
) -> None:
    """Answer with an HTTP error (the connection then ends); a peer that does not read it
    gets ``write_bound`` seconds at most."""
    with trio.move_on_after(write_bound):
        await stream.send_all(http_response(status, reason.encode() + b"\n", headers=headers))


def _peer(
    stream: trio.abc.Stream, request: HttpRequest, trusted: tuple[Network, ...]
) -> tuple[str, str]:
    """``(host:port, host)`` of the client: the TCP peer's, or the address a trusted proxy
    forwarded (``host`` twice: its port is the proxy's business). Other streams are named by
    their repr."""
    if not isinstance(stream, trio.SocketStream):
        return repr(stream), repr(stream)
    address, port = stream.socket.getpeername()[:2]
    address = str(address)
    client = client_address(address, request.headers.get("x-forwarded-for"), trusted)
    if client != address:
        return client, client
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}", address


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
#: ``(stream, request, bytes after the head, client address)``: answers a plain HTTP request.
HttpHandler = Callable[[trio.abc.Stream, HttpRequest, bytes, str], Awaitable[None]]


async def _read_head(stream: trio.abc.Stream) -> tuple[bytes, bytes] | None:
    """The request head and the bytes after it; None when the peer left first."""
    buffer = b""
    while True:
        data = await stream.receive_some(RECEIVE_BUFFER)
        if not data:
            return None
        buffer += data
        end = head_end(buffer)
        if end >= 0:
            return buffer[:end], buffer[end:]
        if len(buffer) > MAX_HEAD:
            raise HandshakeError(431, "request head too large")


async def _serve_stream(
    stream: trio.abc.Stream,
    handler: HandshakeHandler,
    *,
    http_handler: HttpHandler,
    trusted_proxies: tuple[Network, ...],
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
        try:
            head = None
            with trio.move_on_after(handshake_timeout):
                head = await _read_head(stream)
        finally:
            waiting.release()
        if head is None:  # a slowloris, or a client that left before its request
            return
        request = parse_request(head[0])
        remote, ip = _peer(stream, request, trusted_proxies)
        if not wants_upgrade(request):
            return await http_handler(stream, request, head[1], remote)
        pending = [
            PendingHandshake(
                stream,
                request,
                head[1],
                remote=remote,
                ip=ip,
                max_message_size=max_message_size,
                write_timeout=handshake_timeout,
            )
        ]
        del head, request
        # Handed over, not kept: the handler drops the request once it has answered it, and
        # nothing in this frame holds its headers for the connection's lifetime.
        await handler(pending.pop())
    except HandshakeError as refused:
        log.debug("refused a request: %d %s", refused.status, refused.reason)
        await _refuse(stream, refused.status, refused.reason, refused.headers, handshake_timeout)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, trio.TooSlowError) as gone:
        # The peer went away or stalled mid-handshake (a reset, a scanner): not our failure.
        log.debug("peer left during the handshake: %r", gone)
    except Exception:
        log.exception("connection task failed")
    # trio.serve_listeners closes the stream when this returns, whatever happened.


async def serve_streams(
    handler: HandshakeHandler,
    listeners: list[trio.abc.Listener[Any]],
    *,
    handler_nursery: trio.Nursery,
    http_handler: HttpHandler,
    trusted_proxies: tuple[Network, ...],
    max_message_size: int,
    handshake_timeout: float,
    waiting: WaitingStreams,
    task_status: trio.TaskStatus[list[trio.abc.Listener[Any]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    # A partial, not a wrapper coroutine: one frame less held by every connection.
    serve_one = functools.partial(
        _serve_stream,
        handler=handler,
        http_handler=http_handler,
        trusted_proxies=trusted_proxies,
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
