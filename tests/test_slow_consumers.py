"""Bounded outboxes: each policy, and that a stalled client never delays the others."""

from __future__ import annotations

from typing import Any

import trio

from triows import SlowConsumerPolicy
from triows.testing import open_test_server

from .rawclient import RawClient

# A small socket buffer and outbox make a stall visible after a few messages.
SMALL: dict[str, Any] = {"buffer_size": 2048, "outbox_size": 8}
PAYLOAD = "x" * 200  # each message frame is ~330 bytes: the buffer holds ~6


async def publish_many(harness: object, count: int, channel: str = "c") -> list[int]:
    server = harness.server  # type: ignore[attr-defined]
    return [await server.publish(channel, {"n": n, "p": PAYLOAD}) for n in range(count)]


async def test_stalled_client_is_disconnected_and_others_unaffected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(**SMALL) as harness:
        stalled = await RawClient.connect(harness.listener)
        await stalled.subscribe("c")
        # The fast client's library queue holds all 100 though the test reads them later.
        async with harness.connect(message_queue_size=200) as fast, harness.connect() as publisher:
            await fast.request({"type": "subscribe", "channel": "c"})
            start = trio.current_time()
            for n in range(100):
                ack = await publisher.request(
                    {"type": "publish", "channel": "c", "data": {"n": n, "p": PAYLOAD}, "id": n}
                )
                assert ack["seq"] == n + 1
            assert trio.current_time() - start < 0.01  # nobody waited on the stalled client
            received = [(await fast.receive())["seq"] for _ in range(100)]
            assert received == list(range(1, 101))
            stats = harness.server.statistics()
            assert stats.slow_consumer_disconnects == 1
            assert stats.closed_by_server == {1013: 1}
            # Its goodbye cannot be delivered either; it is bounded by close_timeout.
            await trio.sleep(harness.server.config.close_timeout + 1)
            assert harness.server.statistics().connections == 2


async def test_drop_oldest_keeps_the_latest(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(slow_consumer=SlowConsumerPolicy.DROP_OLDEST, **SMALL) as harness:
        client = await RawClient.connect(harness.listener)
        await client.subscribe("c")
        await publish_many(harness, 100)
        stats = harness.server.statistics()
        assert 0 < stats.queued_frames <= 8  # bounded while stalled
        assert stats.dropped > 0
        await client.read_until(lambda c: any(m.get("seq") == 100 for m in c.messages))
        seqs = [m["seq"] for m in client.of_type("message")]
        assert seqs == sorted(seqs)
        # The newest survived (frames the writer had taken before the stall, one of them half
        # written, had to finish, so fewer than the whole outbox are the newest).
        assert seqs[-5:] == list(range(96, 101))
        assert len(seqs) + harness.server.statistics().dropped == 100
        (channel,) = harness.server.channel_statistics()
        assert channel.dropped == harness.server.statistics().dropped


async def test_drop_newest_keeps_the_oldest(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(slow_consumer=SlowConsumerPolicy.DROP_NEWEST, **SMALL) as harness:
        client = await RawClient.connect(harness.listener)
        await client.subscribe("c")
        await publish_many(harness, 100)
        await client.send({"type": "ping", "id": "end"})
        await client.read_until(lambda c: c.of_type("pong"))
        seqs = [m["seq"] for m in client.of_type("message")]
        assert seqs == list(range(1, len(seqs) + 1))  # a prefix, no holes
        assert len(seqs) < 100
        assert harness.server.statistics().dropped == 100 - len(seqs)


async def test_block_waits_and_loses_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(
        slow_consumer=SlowConsumerPolicy.BLOCK, block_timeout=30, **SMALL
    ) as harness:
        client = await RawClient.connect(harness.listener)
        await client.subscribe("c")
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def publisher() -> None:
                await publish_many(harness, 100)
                done.set()

            nursery.start_soon(publisher)
            await trio.sleep(5)
            assert not done.is_set()  # held back by the stalled subscriber
            assert harness.server.statistics().queued_frames <= 9  # capacity + one waiting
            await client.read_until(lambda c: len(c.of_type("message")) == 100)
        assert [m["seq"] for m in client.of_type("message")] == list(range(1, 101))
        assert harness.server.statistics().dropped == 0


async def test_block_timeout_disconnects(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(
        slow_consumer=SlowConsumerPolicy.BLOCK, block_timeout=2, heartbeat_interval=1000, **SMALL
    ) as harness:
        client = await RawClient.connect(harness.listener)
        await client.subscribe("c")
        start = trio.current_time()
        await publish_many(harness, 50)
        assert 2 <= trio.current_time() - start < 3
        assert harness.server.statistics().slow_consumer_disconnects == 1


async def test_publish_nowait_refuses_when_block_subscriber_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(slow_consumer=SlowConsumerPolicy.BLOCK, **SMALL) as harness:
        client = await RawClient.connect(harness.listener)
        await client.subscribe("c")
        published = 0
        try:
            for n in range(100):
                harness.server.publish_nowait("c", {"n": n, "p": PAYLOAD})
                published += 1
        except trio.WouldBlock:
            pass
        assert 0 < published < 100
        assert harness.server.channel_statistics()[0].seq == published


async def test_channel_policy_patterns(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(channel_policies=[("ticker.*", "drop_oldest")], **SMALL) as harness:
        client = await RawClient.connect(harness.listener)
        await client.subscribe("ticker.eur", "orders")
        policies = {c.name: c.policy for c in harness.server.channel_statistics()}
        assert policies == {"ticker.eur": "drop_oldest", "orders": "disconnect"}
        await publish_many(harness, 50, channel="ticker.eur")
        assert harness.server.statistics().connections == 1  # dropped, not disconnected
        await publish_many(harness, 50, channel="orders")
        assert harness.server.statistics().slow_consumer_disconnects == 1
