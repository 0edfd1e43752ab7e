"""A stream's request head: read it (within ``MAX_HEAD``), and who sent it (the TCP peer, or
the client a trusted proxy names)."""

from __future__ import annotations

import trio

from .._core.handshake import HttpRequest, head_end
from .._core.proxy import Network, client_address
from .websocket import RECEIVE_BUFFER


def peer_address(stream: trio.abc.Stream) -> tuple[str, int | None]:
    """The TCP peer's address and port; a memory stream's ``peer`` (``triows.testing``), or
    its repr, which makes every such stream an address of its own."""
    if isinstance(stream, trio.SocketStream):
        try:
            address, port = stream.socket.getpeername()[:2]
        except OSError:  # reset before we asked
            return "", None
        return str(address), int(port)
    peer = getattr(stream, "peer", None)
    return (peer if isinstance(peer, str) else repr(stream)), None


def client_of(
    peer: tuple[str, int | None], request: HttpRequest, trusted: tuple[Network, ...]
) -> tuple[str, str]:
    """``(host:port, host)`` of the client: the TCP peer's, or the address a trusted proxy
    forwarded (``host`` twice: its port is the proxy's business)."""
    address, port = peer
    client = client_address(address, request.headers.get("x-forwarded-for"), trusted)
    if client != address or port is None:
        return client, client
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}", address


async def read_head(stream: trio.abc.Stream) -> tuple[bytes, bytes] | None:
    """The request head and the bytes after it; None when the peer left first. 431 as soon
    as the head is over ``MAX_HEAD``, however it was split across reads."""
    # A TCP stream's head is usually there when its task starts: read the socket first and
    # wait only when it has nothing (``SocketStream.receive_some`` yields even when data was
    # there: one more scheduling round per handshake). The task's first step ends at the
    # connection's first wait for a frame, whatever this does.
    sock = stream.socket._sock if isinstance(stream, trio.SocketStream) else None  # type: ignore[attr-defined]
    buffer = b""
    while True:
        if sock is None:
            data = await stream.receive_some(RECEIVE_BUFFER)
        else:
            try:
                data = sock.recv(RECEIVE_BUFFER)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
        if not data:
            return None
        buffer += data
        end = head_end(buffer)
        if end >= 0:
            return buffer[:end], buffer[end:]
