"""What the channels' Redis streams keep: the history size is the clients' resume window; a
node that lost its link catches up from the stream whatever the history size, for
``redis_retention`` seconds. Real Redis, real time, every wait bounded."""

from __future__ import annotations

import pytest
import redis
import trio

from triows import Server
from triows._core import redis_format as fmt

from .redisserver import RedisServer
from .test_redis_cluster import channel_name, open_node, publish
from .test_redis_outage import collect, go_silent_once

pytestmark = pytest.mark.real_socket


def stream_seqs(url: str, channel: str) -> list[int]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        entries = client.xrange(fmt.stream_key(channel)) or []
        return [int(str(entry_id).split("-")[0]) for entry_id, _ in entries]
    finally:
        client.close()


async def wait_until_trimming(server: Server) -> None:
    """Until the node's publications trim streams again (``redis_retention`` after it
    connected, seen by its watchdog)."""
    for _ in range(200):  # bounded: 10 s
        if server.broker._link.may_trim:  # type: ignore[attr-defined]
            return
        await trio.sleep(0.05)
    raise AssertionError("the node never started trimming")


async def test_a_node_cut_off_catches_up_far_more_than_the_history_size(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node A's pub/sub link goes silent while B publishes 60 messages, with a history of 5:
    once A notices and reconnects, it reads all 60 from the stream."""
    channel = channel_name("cutoff")
    async with (
        open_node(redis_url, redis_timeout=0.2, history_size=5) as a,
        open_node(redis_url, redis_timeout=0.2, history_size=5) as b,
        a.connect() as reader,
        b.connect() as writer,
    ):
        await reader.request({"type": "subscribe", "channel": channel, "id": "s"})
        await publish(writer, channel, 0, 0)
        assert (await reader.receive_type("message"))["seq"] == 1
        go_silent_once(monkeypatch)
        a.server.broker._waker.wake()  # type: ignore[attr-defined]
        with trio.fail_after(10):
            for n in range(1, 61):
                await b.server.publish(channel, n)
            seqs = await collect(reader, 61)
        assert seqs == list(range(2, 62))  # nothing skipped
        assert a.server.statistics().broker.repairs == 1


async def test_streams_keep_the_history_size_once_older_than_the_retention(
    redis_url: str,
) -> None:
    channel = channel_name("trim")
    options = {"redis_timeout": 0.1, "redis_retention": 0.3, "history_size": 5}
    async with open_node(redis_url, **options) as node:
        await wait_until_trimming(node.server)
        for n in range(64):
            await node.server.publish(channel, n)
        # All younger than the retention: all kept, though beyond the history size.
        assert stream_seqs(redis_url, channel) == list(range(1, 65))
        await trio.sleep(0.4)
        for n in range(64, 128):
            await node.server.publish(channel, n)
        kept = stream_seqs(redis_url, channel)
        assert kept == list(range(kept[0], 129))
        assert kept[0] > 64  # the old ones went (trimmed every 16 seqs, 32 at most each)
        async with node.connect() as late:
            # Clients still resume from the history size only, however much the stream holds.
            reply = await late.request(
                {"type": "subscribe", "channel": channel, "id": 1, "since": 100, "epoch": "?"}
            )
            epoch = reply["epoch"]
            reply = await late.request(
                {"type": "subscribe", "channel": channel, "id": 2, "since": 100, "epoch": epoch}
            )
            assert (reply["recovered"], reply["gap"]) == (False, [101, 123])
            replayed = [(await late.receive_type("message"))["seq"] for _ in range(5)]
            assert replayed == list(range(124, 129))


async def test_history_size_zero_still_lets_a_node_catch_up(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No history for clients at all, yet a node that missed messages reads them back."""
    channel = channel_name("nohistory")
    async with (
        open_node(redis_url, redis_timeout=0.2, history_size=0) as a,
        a.connect() as reader,
    ):
        await reader.request({"type": "subscribe", "channel": channel, "id": "s"})
        go_silent_once(monkeypatch)
        a.server.broker._waker.wake()  # type: ignore[attr-defined]
        with trio.fail_after(10):
            for n in range(20):
                await a.server.publish(channel, n)
            assert await collect(reader, 20) == list(range(1, 21))


async def test_a_node_back_from_an_outage_trims_nothing_for_the_retention(
    own_redis: RedisServer,
) -> None:
    """What it flushes after an outage must not push out what other nodes, still
    reconnecting, have to read: however long the outage was."""
    channel = channel_name("grace")
    options = {"redis_timeout": 0.1, "redis_retention": 0.5, "history_size": 5}
    async with open_node(own_redis.url, **options) as node:
        await wait_until_trimming(node.server)
        own_redis.kill()
        with trio.fail_after(10):
            await node.server.broker.up.wait_value(False)
        async with trio.open_nursery() as nursery:
            for n in range(64):
                nursery.start_soon(node.server.publish, channel, n)
            await trio.sleep(0.6)  # longer than the retention: all are "old" by then
            own_redis.start()
        assert stream_seqs(own_redis.url, channel) == list(range(1, 65))
        await wait_until_trimming(node.server)
        for n in range(64, 96):
            await node.server.publish(channel, n)
        assert stream_seqs(own_redis.url, channel)[0] > 5  # trimming again
