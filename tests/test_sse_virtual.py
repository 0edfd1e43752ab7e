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


async def test_streams_share_the_events_of_a_broadcast_only_where_they_stand_alike(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from triows._core import sse

    lists = [["a", "b"], ["b", "a"], ["a"], ["a", "b"]]
    async with open_test_server() as harness:
        streams = []
        for channels in lists:
            stream = await harness.listener.connect()
            query = "&".join(f"channel={c}" for c in channels).encode()
            await stream.send_all(b"GET /sse?" + query + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            await read_until(stream, b"event: subscribed", count=len(channels))
            streams.append(stream)
        harness.server.publish_nowait("b", "first")
        for n in range(3):
            harness.server.publish_nowait("a", n)
        hub = harness.server.hub
        epochs = {name: hub.channel(name).epoch for name in "ab"}  # type: ignore[union-attr]
        for stream, channels in zip(streams, lists, strict=True):
            text = await read_until(stream, b'"data":2,', count=1)
            ids = [line[4:] for line in text.decode().splitlines() if line.startswith("id: ")]
            want = {"a": 3, "b": 1}
            assert sse.decode_id(ids[-1], channels) == [(epochs[c], want[c]) for c in channels]
            await stream.aclose()


async def test_a_stream_at_another_position_makes_its_own_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Same channel list, other positions: a stream whose id is ahead of the channel (a node
    behind it, as the tracker's rule reads it) drops what it has, the one before it does not."""
    from triows._core import sse

    async with open_test_server() as harness:
        behind = await harness.listener.connect()
        await behind.send_all(REQUEST % b"")
        await read_until(behind, b"event: subscribed")
        epoch = harness.server.hub.channel("a").epoch  # type: ignore[union-attr]
        ahead = await harness.listener.connect()
        last_id = sse.encode_id(["a"], [(epoch, 3)])
        header = b"\r\nLast-Event-ID: " + last_id.encode() + b"\r\n\r\n"
        await ahead.send_all((REQUEST % b"").replace(b"\r\n\r\n", header))
        await read_until(ahead, b"event: subscribed")
        for n in range(1, 5):
            harness.server.publish_nowait("a", n)
        seen_behind = await read_until(behind, b'"data":4,')
        seen_ahead = await read_until(ahead, b'"data":4,')
        assert [f'"data":{n},'.encode() in seen_behind for n in range(1, 5)] == [True] * 4
        assert [f'"data":{n},'.encode() in seen_ahead for n in range(1, 5)] == [False] * 3 + [True]
        await behind.aclose()
        await ahead.aclose()


async def test_a_message_published_while_a_stream_subscribes_is_neither_lost_nor_a_gap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stream's channels are joined one by one, letting others run between them; a message
    published to a channel just joined must come after that channel's ``subscribed``, as a
    message (it was dropped as 'not subscribed yet', and told as a gap with the next one)."""
    channels = [f"c{n}" for n in range(12)]
    query = "".join(f"&channel={c}" for c in channels).encode()
    async with open_test_server() as harness:
        server = harness.server
        stream = await harness.listener.connect()
        subscribed = trio.Event()

        async def publish_every_step() -> None:
            n = 0
            while not subscribed.is_set():
                n += 1
                for channel in channels:
                    if server.hub.channel(channel) is not None:
                        server.publish_nowait(channel, n)
                await trio.lowlevel.checkpoint()
            for channel in channels:  # one more each, after everything
                server.publish_nowait(channel, "last")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_every_step)
            await stream.send_all(REQUEST % query)
            seen = await read_until(stream, b'"type":"subscribed","channel":"c11"')
            subscribed.set()
        seen += await read_until(stream, b'"data":"last"', count=len(channels))
        assert b"event: gap" not in seen
        await stream.aclose()


async def test_a_stream_of_a_user_revoked_while_its_channels_were_authorized_does_not_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The revocation was checked once, before the ``authorize`` hook's await; a revoke
    served meanwhile found no stream of the user to close, and the stream then opened."""
    import triows

    async def authorize(principal: triows.Principal, action: triows.Action, channel: str) -> bool:
        await trio.sleep(1)
        return True

    async with open_test_server(jwt_secret=SECRET, authorize=authorize) as harness:
        token = make_token("mallory", iat=int(time.time()) - 60).encode()
        stream = await harness.listener.connect()
        await stream.send_all(REQUEST % (b"&token=" + token))
        await trio.sleep(0.5)  # the hook is deciding
        assert await harness.server.revoke("mallory") == 0  # no stream of hers yet
        seen = await read_until(stream, b"\n\n")
        assert b"event: subscribed" not in seen
        assert seen.startswith(b"HTTP/1.1 401")
        await stream.aclose()
