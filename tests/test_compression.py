"""permessage-deflate through the server, in virtual time: who gets the compressed frame, that
a broadcast is compressed at most once, and that nothing of zlib stays with a connection."""

from __future__ import annotations

import gc
import json
import os
import tracemalloc
from typing import Any

import trio
from wsproto.events import TextMessage
from wsproto.extensions import PerMessageDeflate

from triows._core.deflate import compress
from triows._core.frames import TEXT
from triows.testing import open_test_server

from .rawclient import RawClient
from .wireclient import encode_frame

#: ~1 KiB of JSON as applications publish it.
DATA = {
    "orders": [
        {"id": 1000 + n, "symbol": "ABCD", "price": 100.25 + n, "qty": 10 * n, "side": "buy"}
        for n in range(14)
    ]
}


async def subscribed(listener: Any, *, deflate: bool, channel: str = "c") -> RawClient:
    client = await RawClient.connect(listener, deflate=deflate)
    await client.subscribe(channel)
    return client


async def test_a_broadcast_is_compressed_once_for_every_deflate_subscriber(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as harness:
        deflaters = [await subscribed(harness.listener, deflate=True) for _ in range(3)]
        plain = [await subscribed(harness.listener, deflate=False) for _ in range(2)]
        assert all(isinstance(c.extensions[0], PerMessageDeflate) for c in deflaters)
        assert all(not c.extensions for c in plain)
        before = {id(c): c.received for c in deflaters + plain}
        await harness.server.publish("c", DATA)
        for client in deflaters + plain:
            await client.read_until(lambda c: bool(c.of_type("message")))
            assert client.of_type("message")[0]["data"] == DATA
        fanout = harness.server.fanout
        assert (fanout.compressed, fanout.compressed_deliveries) == (1, 3)
        sizes = {id(c): c.received - before[id(c)] for c in deflaters + plain}
        compressed, uncompressed = sizes[id(deflaters[0])], sizes[id(plain[0])]
        assert uncompressed > 1000
        assert compressed <= 0.45 * uncompressed, (compressed, uncompressed)


async def test_small_frames_and_replies_go_uncompressed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as harness:
        client = await subscribed(harness.listener, deflate=True)
        await harness.server.publish("c", {"n": 1})  # under the 256-byte threshold
        await client.read_until(lambda c: bool(c.of_type("message")))
        assert harness.server.fanout.compressed == 0


async def test_nobody_to_take_it_means_nothing_compressed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as harness:
        client = await subscribed(harness.listener, deflate=False)
        for _ in range(3):
            await harness.server.publish("c", DATA)
        await client.read_until(lambda c: len(c.of_type("message")) == 3)
        assert harness.server.fanout.compressed == 0


async def test_the_threshold_is_configurable(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(compression_threshold=4096) as harness:
        client = await subscribed(harness.listener, deflate=True)
        await harness.server.publish("c", DATA)  # ~1 KiB: under 4 KiB
        await harness.server.publish("c", {"big": "x" * 5000})
        await client.read_until(lambda c: len(c.of_type("message")) == 2)
        assert harness.server.fanout.compressed == 1


async def test_compression_off_declines_the_offer(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(compression=False) as harness:
        client = await subscribed(harness.listener, deflate=True)
        assert client.extensions == []
        await harness.server.publish("c", DATA)
        await client.read_until(lambda c: bool(c.of_type("message")))
        assert harness.server.fanout.compressed == 0


async def test_compressed_publishes_are_inflated(autojump_clock: trio.testing.MockClock) -> None:
    """wsproto compresses what it sends once the extension is on: the server reads it."""
    async with open_test_server() as harness:
        publisher = await RawClient.connect(harness.listener, deflate=True)
        reader = await subscribed(harness.listener, deflate=False)
        await publisher.send({"type": "publish", "channel": "c", "data": DATA, "id": 1})
        await publisher.read_until(lambda c: bool(c.of_type("ack")))
        await reader.read_until(lambda c: bool(c.of_type("message")))
        assert reader.of_type("message")[0]["data"] == DATA


async def test_a_compressed_message_over_the_limit_closes_1009(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(max_message_size=4096) as harness:
        client = await RawClient.connect(harness.listener, deflate=True)
        await client.send({"type": "publish", "channel": "c", "data": "a" * 100_000})
        assert await client.read_until_closed() == 1009


async def test_a_read_of_many_small_compressed_frames_is_served_in_steps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """~140 compressed pings of 64 KiB each in one 16 KiB write: the reader inflates them a
    step at a time (never ~9 MiB at once) and answers every one, in order, with no more bytes
    sent; another connection is served meanwhile."""
    async with open_test_server() as harness:
        client = await RawClient.connect(harness.listener, deflate=True)
        other = await RawClient.connect(harness.listener)
        pad = "a" * (64 * 1024 - 60)
        frames, count = b"", 0
        while True:
            ping = json.dumps({"type": "ping", "id": count, "pad": pad})
            one = client.ws.send(TextMessage(data=ping))
            if len(frames) + len(one) > 16 * 1024:
                break
            frames, count = frames + one, count + 1
        assert count > 100
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.stream.send_all, frames)
            await other.send({"type": "ping", "id": "other"})
            await other.read_until(lambda c: bool(c.of_type("pong")))
        await client.read_until(lambda c: len(c.of_type("pong")) == count)
        assert [m["id"] for m in client.of_type("pong")] == list(range(count))


async def test_after_a_1009_compressed_frames_still_reach_the_peers_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After failing a connection the server reads on until the peer's close frame, with a
    fresh parser: a compressed message the peer sent meanwhile is skipped, not taken for a
    protocol error that ends the wait (and the TCP connection under the peer's close)."""
    async with open_test_server(max_message_size=4096) as harness:
        client = await RawClient.connect(harness.listener, deflate=True)
        await client.send({"type": "publish", "channel": "c", "data": "a" * 100_000})
        assert await client.read_until_closed() == 1009
        late = compress(json.dumps({"type": "ping"}).encode())
        await client.stream.send_all(encode_frame(TEXT, late, rsv=4))
        with trio.move_on_after(1):
            await client.read_some()
            raise AssertionError("the server ended the connection before the peer's close")
        await client.stream.send_all(encode_frame(0x8, (1000).to_bytes(2, "big")))
        with trio.fail_after(5):
            assert await client.stream.receive_some(100) == b""


def server_bytes(snapshot: tracemalloc.Snapshot) -> int:
    """What the server's own code holds (the clients' wsproto and zlib objects excluded)."""
    mine = snapshot.filter_traces([tracemalloc.Filter(True, "*/triows/_*")])
    return sum(stat.size for stat in mine.statistics("filename"))


async def held_per_connection(deflate: bool, connections: int = 20) -> float:
    """Server memory per idle connection once each has received a compressed broadcast and
    sent a compressed publish."""
    async with open_test_server() as harness:
        gc.collect()
        before = server_bytes(tracemalloc.take_snapshot())
        clients = [await subscribed(harness.listener, deflate=deflate) for _ in range(connections)]
        await harness.server.publish("c", DATA)
        for n, client in enumerate(clients):
            await client.send({"type": "publish", "channel": "other", "data": DATA, "id": n})
            await client.read_until(lambda c: bool(c.of_type("ack")))
        await trio.sleep(1)
        gc.collect()
        held = server_bytes(tracemalloc.take_snapshot()) - before
        del clients
        return held / connections


async def test_idle_connections_hold_no_compression_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tracemalloc.start(1)
    try:
        plain = await held_per_connection(deflate=False)
        deflate = await held_per_connection(deflate=True)
    finally:
        tracemalloc.stop()
    # A zlib context alone would be ~10-260 KiB; the same figure within noise means none.
    assert deflate < plain + 256, (plain, deflate)


class Member:
    """A subscriber as fan-out sees it: what it was handed."""

    def __init__(self, client_id: str, deflate_limit: int) -> None:
        self.client_id = client_id
        self.deflate_limit = deflate_limit
        self.frames: list[bytes] = []

    def deliver(self, frame: bytes, *args: Any) -> bool:
        self.frames.append(frame)
        return True


def fan_out(payload: bytes, limits: list[int]) -> tuple[Any, list[Member]]:
    from triows._brokers.fanout import FanOut
    from triows._brokers.memory import MemoryBroker
    from triows._config import Config
    from triows._core.frames import BINARY, frame

    fanout = FanOut(1.0, compression_threshold=256)
    hub = MemoryBroker(Config(), fanout, epoch_prefix="t").hub
    members = [Member(f"m{n}", limit) for n, limit in enumerate(limits)]
    for member in members:
        state = hub.subscribe(member, "c")  # type: ignore[arg-type]
    fanout.deliver(state, frame(BINARY, payload), None)
    return fanout, members


def test_one_compressed_object_within_each_window() -> None:
    """Every deflate subscriber gets the same object; a window too small for it gets the plain
    frame, as does a subscriber without deflate."""
    payload = json.dumps(DATA).encode()
    assert 1024 < len(payload) <= 2048
    fanout, members = fan_out(payload, [1 << 62, 0, 1 << 62, 1024, 2048])
    unlimited, plain, also, small_window, enough = (m.frames[0] for m in members)
    assert unlimited is also is enough
    assert unlimited[0] == 0xC2  # FIN, RSV1, binary
    assert plain is small_window
    assert plain[0] == 0x82
    assert (fanout.compressed, fanout.compressed_deliveries) == (1, 3)


def test_what_does_not_shrink_goes_plain_to_everyone() -> None:
    fanout, members = fan_out(os.urandom(2000), [1 << 62, 1 << 62, 0])
    assert all(m.frames[0][0] == 0x82 for m in members)
    assert (fanout.compressed, fanout.compressed_deliveries) == (0, 0)
