"""What triows._net.streams relies on inside trio, and how its two write paths stay apart.

If a dependency upgrade breaks one of these, this file fails loudly, before a server could
interleave bytes into a stream or send frames it must not.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing
import trio_websocket

from triows._core.frame_parser import FrameParser
from triows._net.websocket import WebSocket
from triows.testing import memory_stream_pair

pytestmark = pytest.mark.real_socket


async def test_trio_socket_wraps_a_nonblocking_stdlib_socket() -> None:
    a, b = socket.socketpair()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    raw = stream.socket._sock  # type: ignore[attr-defined]
    assert isinstance(raw, socket.socket)
    assert raw.getblocking() is False
    write = WebSocket(stream, FrameParser(1024), b"").write_nowait
    assert write(b"hello") == 5
    assert b.recv(5) == b"hello"
    # A full kernel buffer means 0 bytes written, never an exception.
    big = b"x" * (1 << 20)
    while write(big):
        pass
    assert write(b"more") == 0
    b.close()
    await stream.aclose()


async def test_direct_write_steps_aside_while_a_write_is_in_progress() -> None:
    """write_nowait() writes nothing while write() holds the stream, nor once it broke."""
    server_end, client_end = memory_stream_pair(buffer_size=4)
    ws = WebSocket(server_end, FrameParser(1 << 20), b"")
    assert ws.write_nowait(b"abc") == 3
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.write, b"defgh")  # waits: only one byte of room
        await trio.testing.wait_all_tasks_blocked()
        assert ws.writing
        assert ws.write_nowait(b"xyz") == 0
        nursery.cancel_scope.cancel()
    assert ws.broken  # cut mid-write: part of a frame may be on the wire
    assert ws.write_nowait(b"xyz") == 0
    assert await client_end.receive_some() == b"abcd"


@pytest.mark.parametrize(
    ("compression", "answer"),
    [
        (True, b"permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        (False, None),
    ],
)
async def test_deflate_is_only_ever_negotiated_without_context_takeover(
    compression: bool, answer: bytes | None
) -> None:
    """Frames are built (and compressed) once for every subscriber: that is only right when no
    side keeps a compression context between messages."""
    import triows
    from triows.testing import MemoryListener

    listener = MemoryListener()
    config = triows.Config(compression=compression)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: triows.serve(config, listeners=[listener], task_status=task_status)
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
        head = response.split(b"\r\n\r\n")[0]
        assert head.startswith(b"HTTP/1.1 101")
        lines = [
            line for line in head.split(b"\r\n") if line.lower().startswith(b"sec-websocket-ext")
        ]
        assert lines == ([] if answer is None else [b"Sec-WebSocket-Extensions: " + answer])
        await stream.aclose()
        await server.aclose()


def test_pinned_versions_are_the_tested_ones() -> None:
    """The client side (triows.client, triows.testing) is what uses trio-websocket now."""
    assert trio_websocket.__version__.startswith("0.12.")
