"""The server's WebSocket: one accepted socket, with exactly two ways to send bytes.

:class:`triows._server.connection.Connection` owns one and writes through one ordered path;
what is sent is framed by :mod:`triows._core.frames` and what arrives is parsed by
:mod:`triows._core.frame_parser`.
"""

from __future__ import annotations

import socket

import trio

from .._core.frame_parser import Close, Failure, FrameParser

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

    __slots__ = ("_sock", "broken", "deflate_limit", "leftover", "parser", "stream", "writing")

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
        #: Largest payload this peer may be sent compressed; 0 without permessage-deflate.
        self.deflate_limit = 0

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

    @property
    def writes_nowait(self) -> bool:
        """Whether :meth:`write_nowait` can write at all (a TLS stream cannot)."""
        return self._sock is not None or hasattr(self.stream, "send_some_nowait")

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

    def has_unread_bytes(self) -> bool:
        """Whether the peer sent bytes the reader has not taken yet (TCP only; a peek, for
        the rare moments a heartbeat deadline passes, never on the hot path)."""
        sock = self._sock
        if sock is None:
            return False
        try:
            return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:  # nothing there (EAGAIN), or the socket broke or was closed
            return False

    def close_now(self) -> None:
        """Close a TCP socket at once (the closing handshake is done). Other streams are
        closed by the transport when the connection's task returns."""
        if self._sock is not None:
            self.stream.socket.close()  # type: ignore[attr-defined]


async def wait_for_peer_close(ws: WebSocket) -> None:
    """Read (and ignore) until the peer's close frame or the end of the stream: what a
    connection that sent its close frame waits for (bounded by its caller)."""
    # After a protocol error the old parser is done; the peer's answer comes in a segment
    # of its own, so a fresh parser finds it (reading compressed frames too, if negotiated).
    old = ws.parser
    parser = FrameParser(old.max_message, inflate=old.inflate) if old.done else old
    while True:
        data = b"" if parser.pending else await ws.receive()
        if not data and not parser.pending:
            return
        for event in parser.feed(data):
            if isinstance(event, Close | Failure):
                return
        if parser.pending:
            await trio.lowlevel.checkpoint()  # what a read inflates, in steps
