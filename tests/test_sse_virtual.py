"""SSE streams in virtual time (in-memory streams, autojump clock): keep-alive comments on
their interval, token expiry, a client that sends what it should not, and shutdown with a
stream that does not read."""

from __future__ import annotations

import time

import trio
import trio.testing

from triows.testing import open_test_server

from .conftest import SECRET, make_token

REQUEST = b"GET /sse?channel=a%s HTTP/1.1\r\nHost: t\r\n\r\n"


async def read_until(stream: trio.abc.Stream, marker: bytes, count: int = 1) -> bytes:
    """What arrives until ``marker`` was seen ``count`` times (or the end); a test that waits
    for what never comes fails after 10 virtual minutes instead of hanging."""
    buffer = b""
    with trio.fail_after(600):
        while buffer.count(marker) < count:
            data = await stream.receive_some(65536)
            if not data:
                break
            buffer += data
    return buffer


async def test_keep_alive_comments_on_their_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(sse_keepalive=15) as harness:
        stream = await harness.listener.connect()
        await stream.send_all(REQUEST % b"")
        await read_until(stream, b"event: subscribed")
        started = trio.current_time()
        await read_until(stream, b":\n\n", count=4)
        # Four comments in a minute of quiet, none sooner.
        assert 60 <= trio.current_time() - started < 75
        await harness.server.publish("a", "x")
        assert b'"data":"x"' in await read_until(stream, b'"data":"x"')
        await stream.aclose()


async def test_the_token_expiry_ends_the_stream(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(jwt_secret=SECRET) as harness:
        token = make_token("ann", exp=int(time.time()) + 120).encode()
        stream = await harness.listener.connect()
        await stream.send_all(REQUEST % (b"&token=" + token))
        await read_until(stream, b"event: subscribed")
        started = trio.current_time()
        tail = await read_until(stream, b"event: close")
        assert b'data: {"code":1008,"reason":"Token expired"}' in tail
        assert 110 < trio.current_time() - started <= 121
        await stream.aclose()


async def test_a_client_that_sends_a_body_is_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as harness:
        stream = await harness.listener.connect()
        await stream.send_all(REQUEST % b"")
        await read_until(stream, b"event: subscribed")
        try:
            for _ in range(100):
                await stream.send_all(b"x" * 4096)
        except trio.BrokenResourceError:
            pass  # the server closed it
        tail = await read_until(stream, b"event: close")
        assert b"an event stream takes no request body" in tail
        await stream.aclose()


async def test_shutdown_is_bounded_by_a_stream_that_does_not_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(shutdown_timeout=5, buffer_size=1024) as harness:
        stream = await harness.listener.connect()
        await stream.send_all(REQUEST % b"")
        await read_until(stream, b"event: subscribed")
        for _ in range(20):  # more than the stream's buffer takes
            harness.server.publish_nowait("a", "y" * 500)
        started = trio.current_time()
        await harness.server.aclose()
        assert trio.current_time() - started <= 5.5
        assert harness.server.statistics().connections == 0
