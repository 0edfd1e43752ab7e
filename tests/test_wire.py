"""The bytes on the wire, over real TCP sockets (no autojump: the kernel moves the bytes).

Every byte the server sends is checked by ``WireClient``'s own strict frame parser.
"""

from __future__ import annotations

import random

import pytest
import trio

import triows
from triows._core.outbox import SlowConsumerPolicy

from .wireclient import CLOSE, PING, PONG, TEXT, WireClient

pytestmark = pytest.mark.real_socket


async def start_server(nursery: trio.Nursery, **overrides: object) -> triows.Server:
    config = triows.Config(port=0, host="127.0.0.1", **overrides)  # type: ignore[arg-type]
    server: triows.Server = await nursery.start(triows.serve, config)
    return server


async def test_frames_stay_whole_under_backpressure_with_pings_both_ways() -> None:
    """Clients with a tiny receive window that read in dribs: broadcasts are written in part
    and their tails queued, while server heartbeat pings and pongs to the clients' own pings
    must go out too. Not one byte of another frame may land inside a partly written one."""
    messages, clients = 100, 6
    async with trio.open_nursery() as nursery:
        server = await start_server(
            nursery,
            heartbeat_interval=0.02,
            heartbeat_timeout=60,
            outbox_size=100_000,
            outbox_max_bytes=1 << 30,
            slow_consumer=SlowConsumerPolicy.BLOCK,
            block_timeout=60,
        )

        async def publish() -> None:
            rng = random.Random(0)
            for n in range(messages):
                await server.publish("big", {"n": n, "pad": "x" * rng.randrange(100, 20_000)})
                if n % 3 == 2:  # bursts: each starts on a drained socket, written directly
                    await trio.sleep(0.01)

        async def stalling_client(seed: int, subscribed: trio.Event, done: trio.Event) -> None:
            rng = random.Random(seed)
            client = await WireClient.connect(server.port, receive_buffer=2048)
            await client.send_json({"type": "subscribe", "channel": "big"})
            await client.read_until(lambda c: any(t["type"] == "subscribed" for t in c.texts()))
            subscribed.set()
            pings = 0
            while not any(
                t.get("type") == "message" and t["data"]["n"] == messages - 1
                for t in client.texts()[-3:]
            ):
                await client.send_frame(PING, pings.to_bytes(4, "big"))
                pings += 1
                await client.read_some(rng.randrange(500, 8000))
                await trio.sleep(rng.choice((0, 0, 0.001)))
            await client.read_until(lambda c: len(c.of_opcode(PONG)) == pings)
            numbers = [t["data"]["n"] for t in client.texts() if t["type"] == "message"]
            assert numbers == list(range(messages))
            assert client.of_opcode(PONG) == [n.to_bytes(4, "big") for n in range(pings)]
            assert client.of_opcode(PING)  # the server's heartbeats got through too
            await client.aclose()
            done.set()

        with trio.fail_after(60):
            async with trio.open_nursery() as inner:
                finished = []
                for seed in range(clients):
                    subscribed, done = trio.Event(), trio.Event()
                    finished.append(done)
                    inner.start_soon(stalling_client, seed, subscribed, done)
                    await subscribed.wait()
                inner.start_soon(publish)
        assert all(done.is_set() for done in finished)
        await server.aclose()


async def test_graceful_close_is_a_clean_closing_handshake() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery)
        client = await WireClient.connect(server.port)
        nursery.start_soon(server.aclose)
        await client.read_until(lambda c: c.close is not None)
        assert client.close == (1001, "Server shutting down")
        await client.send_frame(CLOSE, (1001).to_bytes(2, "big"))
        await client.read_to_end()
        assert [op for op, _ in client.frames] == [TEXT, CLOSE]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param(dict(opcode=TEXT, payload=b"\xff\xfe"), 1007, id="invalid-utf8"),
        pytest.param(dict(opcode=CLOSE, payload=(999).to_bytes(2, "big")), 1002, id="close-999"),
        pytest.param(dict(opcode=CLOSE, payload=(1005).to_bytes(2, "big")), 1002, id="close-1005"),
        pytest.param(dict(opcode=TEXT, payload=b"{}", mask=False), 1002, id="unmasked"),
        pytest.param(dict(opcode=PING, payload=b"x" * 126), 1002, id="ping-126"),
        pytest.param(dict(opcode=TEXT, payload=b"{}", rsv=4), 1002, id="reserved-bit"),
        pytest.param(dict(opcode=0x3, payload=b""), 1002, id="reserved-opcode"),
        pytest.param(dict(opcode=0x0, payload=b"{}"), 1002, id="stray-continuation"),
        pytest.param(dict(opcode=TEXT, payload=b"x" * 5000), 1009, id="too-big"),
    ],
)
async def test_a_protocol_error_gets_its_close_code_then_a_closing_handshake(
    frame: dict[str, object], code: int
) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, max_message_size=4096)
        client = await WireClient.connect(server.port)
        await client.send_frame(**frame)  # type: ignore[arg-type]
        await client.read_until(lambda c: c.close is not None)
        close = client.close
        assert close is not None
        assert close[0] == code, close
        assert close[1]  # a reason a person can read
        if frame["opcode"] == CLOSE:
            # Our (invalid) close was our close: the server closes TCP without waiting.
            await client.read_to_end(timeout=5)
        else:
            # The server waits for our close before it closes TCP.
            with trio.move_on_after(0.2):
                await client.read_some()
            assert not client.eof
            await client.send_frame(CLOSE, code.to_bytes(2, "big"))
            await client.read_to_end(timeout=5)
        assert server.statistics().closed_by_server == {code: 1}
        await server.aclose()


async def test_a_failed_connection_is_closed_even_if_the_peer_never_answers() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, close_timeout=0.3)
        client = await WireClient.connect(server.port)
        await client.send_frame(TEXT, b"\xff")
        with trio.fail_after(5):
            await client.read_to_end()
        assert client.close is not None
        assert client.close[0] == 1007
        await server.aclose()


async def test_a_client_close_is_answered_with_its_code_and_not_counted_as_the_servers() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery)
        client = await WireClient.connect(server.port)
        await client.send_frame(CLOSE, (1009).to_bytes(2, "big") + b"bye")
        await client.read_to_end(timeout=5)
        assert client.close == (1009, "")
        with trio.fail_after(5):
            while server.statistics().connections:  # noqa: ASYNC110 - no event to wait on
                await trio.sleep(0.01)
        assert server.statistics().closed_by_server == {}
        await server.aclose()


async def test_a_close_without_a_code_is_answered_without_one() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery)
        client = await WireClient.connect(server.port)
        await client.send_frame(CLOSE, b"")
        await client.read_to_end(timeout=5)
        assert client.close == (None, "")
        await server.aclose()


async def test_a_message_in_fragments_with_pings_between_is_served() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery)
        client = await WireClient.connect(server.port)
        body = b'{"type": "ping", "id": "\xc3\xa9t\xc3\xa9"}'
        await client.send_frame(TEXT, body[:25], fin=False)  # splits the UTF-8 of "é"
        await client.send_frame(PING, b"between")
        await client.send_frame(0x0, body[25:30], fin=False)
        await client.send_frame(0x0, body[30:])
        await client.read_until(lambda c: any(t["type"] == "pong" for t in c.texts()))
        assert client.of_opcode(PONG) == [b"between"]
        assert [t["id"] for t in client.texts() if t["type"] == "pong"] == ["été"]
        await client.aclose()
        await server.aclose()


async def test_pings_are_answered_while_a_request_waits_for_an_async_hook() -> None:
    """A request that waits (here an ``authorize`` hook) does not hold up the reader: pings
    are answered and later requests are read (and queued behind it, in order)."""
    gate = trio.Event()

    async def slow_authorize(*args: object) -> bool:
        await gate.wait()
        return True

    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, authorize=slow_authorize)
        client = await WireClient.connect(server.port)
        await client.send_json({"type": "subscribe", "channel": "a", "id": 1})
        await client.send_json({"type": "ping", "id": 2})
        await client.send_frame(PING, b"still there?")
        await client.read_until(lambda c: c.of_opcode(PONG))
        assert client.of_opcode(PONG) == [b"still there?"]
        assert [t["type"] for t in client.texts()] == ["welcome"]
        gate.set()
        await client.read_until(lambda c: len(c.texts()) == 3)
        assert [t.get("id") for t in client.texts()[1:]] == [1, 2]
        await client.aclose()
        await server.aclose()


async def test_the_conformance_echo_server_echoes_on_the_same_engine() -> None:
    """tests/conformance/echo_server.py is what Autobahn checks: it must stay runnable."""
    from .conformance.echo_server import serve_echo

    async with trio.open_nursery() as nursery:
        server: triows.Server = await nursery.start(serve_echo, 0)
        client = await WireClient.connect(server.port, welcome=False)
        await client.send_frame(TEXT, b'"hi"')
        await client.send_frame(0x2, b"\x00\x01")
        await client.read_until(lambda c: len(c.frames) == 2)
        assert client.frames == [(TEXT, b'"hi"'), (0x2, b"\x00\x01")]
        await client.aclose()
        await server.aclose()
