"""What triows._transport relies on inside trio-websocket, wsproto and trio.

If a dependency upgrade breaks one of these, this file fails loudly, before a server could
interleave bytes into a stream or send frames it must not.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio_websocket
import wsproto
from trio_websocket import WebSocketConnection
from wsproto import ConnectionType, WSConnection

from triows._transport import WebSocket, _direct_writer
from triows.testing import memory_stream_pair

pytestmark = pytest.mark.real_socket


def make_connection(stream: trio.abc.Stream) -> WebSocketConnection:
    return WebSocketConnection(stream, WSConnection(ConnectionType.SERVER))


async def test_trio_websocket_internals_exist() -> None:
    server_end, _client_end = memory_stream_pair()
    conn = make_connection(server_end)
    assert conn._stream is server_end
    assert isinstance(conn._stream_lock, trio.StrictFIFOLock)
    assert isinstance(conn._wsproto, WSConnection)
    assert callable(conn._reader_task)
    assert callable(conn._get_request)


async def test_trio_websocket_sends_only_under_its_lock() -> None:
    """Every byte trio-websocket writes goes through _send, which holds _stream_lock."""
    import inspect

    source = inspect.getsource(WebSocketConnection)
    assert source.count("send_all(") == 1
    send = inspect.getsource(WebSocketConnection._send)
    assert "async with self._stream_lock" in send
    assert "send_all(" in send


async def test_trio_socket_wraps_a_nonblocking_stdlib_socket() -> None:
    a, b = socket.socketpair()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    raw = stream.socket._sock  # type: ignore[attr-defined]
    assert isinstance(raw, socket.socket)
    assert raw.getblocking() is False
    write = _direct_writer(stream)
    assert write is not None
    assert write(b"hello") == 5
    assert b.recv(5) == b"hello"
    # A full kernel buffer means 0 bytes written, never an exception.
    big = b"x" * (1 << 20)
    while write(big):
        pass
    assert write(b"more") == 0
    b.close()
    await stream.aclose()


async def test_direct_write_steps_aside_while_the_lock_is_held() -> None:
    server_end, client_end = memory_stream_pair()
    conn = make_connection(server_end)
    conn._wsproto.receive_data(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    request = next(conn._wsproto.events())
    conn._wsproto.send(wsproto.events.AcceptConnection())
    assert isinstance(request, wsproto.events.Request)
    ws = WebSocket(conn)
    assert ws.is_open
    assert ws.write_nowait(b"abc") == 3
    async with conn._stream_lock:
        assert ws.write_nowait(b"abc") == 0
    conn._wsproto.send(wsproto.events.CloseConnection(code=1000))
    assert not ws.is_open
    assert ws.write_nowait(b"abc") == 0
    assert await client_end.receive_some() == b"abc"  # only the one allowed write


async def test_no_extension_is_ever_negotiated() -> None:
    """Frames are built once for every subscriber: that is only right without compression."""
    import triows
    from triows.testing import MemoryListener

    listener = MemoryListener()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: triows.serve(listeners=[listener], task_status=task_status)
        )
        stream = await listener.connect()
        await stream.send_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        )
        response = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in response:
                response += await stream.receive_some()
        head = response.split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 101")
        assert b"sec-websocket-extensions" not in head
        await stream.aclose()
        await server.aclose()


def test_pinned_versions_are_the_tested_ones() -> None:
    assert trio_websocket.__version__.startswith("0.12.")
