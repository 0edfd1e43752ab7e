"""The TCP path: real sockets on loopback, real clock (no autojump: the kernel moves bytes)."""

from __future__ import annotations

import json
import logging
import socket
import struct

import pytest
import trio
import trio_websocket
from trio_websocket import open_websocket_url

import triows

pytestmark = pytest.mark.real_socket


async def start_server(nursery: trio.Nursery, **overrides: object) -> triows.Server:
    config = triows.Config(port=0, **overrides)  # type: ignore[arg-type]
    server: triows.Server = await nursery.start(triows.serve, config)
    return server


async def test_fan_out_over_tcp_in_order() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery)
        url = f"ws://127.0.0.1:{server.port}/"
        received: dict[int, list[int]] = {}

        async def subscriber(index: int, ready: trio.Event) -> None:
            async with open_websocket_url(url, message_queue_size=1000) as ws:
                await ws.get_message()  # welcome
                await ws.send_message(json.dumps({"type": "subscribe", "channel": "t"}))
                await ws.get_message()
                ready.set()
                seqs = received.setdefault(index, [])
                while len(seqs) < 300:
                    seqs.append(json.loads(await ws.get_message())["seq"])

        with trio.fail_after(30):
            async with trio.open_nursery() as clients:
                for index in range(20):
                    ready = trio.Event()
                    clients.start_soon(subscriber, index, ready)
                    await ready.wait()
                async with open_websocket_url(url) as publisher:
                    await publisher.get_message()
                    for n in range(300):
                        await publisher.send_message(
                            json.dumps({"type": "publish", "channel": "t", "data": n, "id": n})
                        )
                    acks = [json.loads(await publisher.get_message()) for _ in range(300)]
                    assert [a["seq"] for a in acks] == list(range(1, 301))
        assert all(seqs == list(range(1, 301)) for seqs in received.values())
        assert server.statistics().delivered == 20 * 300
        await server.aclose()


async def test_partial_writes_keep_frames_whole_and_ordered() -> None:
    """Publish far more than the kernel buffer holds before the client reads anything."""
    async with trio.open_nursery() as nursery:
        server = await start_server(
            nursery, outbox_size=4096, outbox_max_bytes=64 << 20, max_message_size=1 << 20
        )
        url = f"ws://127.0.0.1:{server.port}/"
        with trio.fail_after(30):
            async with open_websocket_url(
                url, message_queue_size=4096, max_message_size=1 << 20
            ) as ws:
                await ws.get_message()
                await ws.send_message(json.dumps({"type": "subscribe", "channel": "big"}))
                await ws.get_message()
                sizes = [10, 50_000, 3, 200_000, 70_000, 1] * 20
                for n, size in enumerate(sizes):
                    await server.publish("big", {"n": n, "pad": "y" * size})
                assert server.statistics().queued_frames > 0  # the socket pushed back
                for n, size in enumerate(sizes):
                    message = json.loads(await ws.get_message())
                    assert message["seq"] == n + 1
                    assert message["data"] == {"n": n, "pad": "y" * size}
        await server.aclose()


async def test_graceful_shutdown_over_tcp() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery)
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as ws:
            await ws.get_message()
            with trio.fail_after(10):
                await server.aclose()
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await ws.get_message()
            reason = info.value.reason
            assert reason is not None
            assert (reason.code, reason.reason) == (1001, "Server shutting down")


async def test_connections_from_one_address_are_limited() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, max_connections_per_ip=2)
        url = f"ws://127.0.0.1:{server.port}/"
        async with open_websocket_url(url), open_websocket_url(url):
            with pytest.raises(trio_websocket.ConnectionRejected) as info:
                async with open_websocket_url(url):
                    pass
            assert info.value.status_code == 429
        await server.aclose()


async def test_a_peer_that_resets_during_the_handshake_is_one_debug_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    request = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    caplog.set_level(logging.DEBUG, logger="triows")
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery)
        for sent in (b"", request[:20], request):
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", server.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if sent:
                await sock.send(sent)
            sock.close()  # with linger 0: a reset
            await trio.sleep(0.2)
        await server.aclose()
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_taken_port_is_one_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="triows")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BaseExceptionGroup) as info:
            async with trio.open_nursery() as nursery:
                await nursery.start(triows.serve, triows.Config(port=port))
    # The caller's own nursery groups it, as trio does; inside, one OSError, not a tree.
    (error,) = info.value.exceptions
    assert isinstance(error, OSError)
    assert not isinstance(error, BaseExceptionGroup)
    assert str(error) == f"[Errno 98] cannot listen on 127.0.0.1:{port}: Address already in use"
    assert "stopped" not in caplog.text  # it never started


async def test_a_head_in_pieces_over_tcp_is_read_whole() -> None:
    # The head is read from the socket directly: what is there at once, then a wait for the
    # rest (a head split across segments, as a slow client sends it).
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        head = (
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        with trio.fail_after(10):
            for start in range(0, len(head), 40):
                await stream.send_all(head[start : start + 40])
                await trio.sleep(0.01)  # separate segments, read one by one
            answer = b""
            while b'"welcome"' not in answer:
                answer += await stream.receive_some(4096)
        assert answer.startswith(b"HTTP/1.1 101 ")
        await stream.aclose()
        await server.aclose()
