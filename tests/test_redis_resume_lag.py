"""A client that moves to a node whose feed is behind what it saw elsewhere: no duplicate, no
false gap (docs/delivery.md, "a node behind the client").

The lag is made for real: node B's channel has the ``block`` policy and one of its subscribers
stops reading, so B's feed stops while node A's clients go on. Real Redis, real time (threads
talk to it): every wait is bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from triows import client as wsclient
from triows._brokers.redis.clients import Clients
from triows._core import redis_format as fmt
from triows.testing import TestClient, TestServer

from .test_redis_cluster import channel_name, open_node, publish

pytestmark = pytest.mark.real_socket


@pytest.fixture
def redis_url(shared_redis_url: str) -> str:
    """One Redis, then a Redis Cluster (:func:`tests.conftest.shared_redis_url`)."""
    return shared_redis_url


def feed_seq(node: TestServer, channel: str) -> int:
    """How far node's feed of ``channel`` got (what its local subscribers were handed)."""
    return int(node.server.broker._feeds.channels[channel].feed.seq)  # type: ignore[attr-defined]


@asynccontextmanager
async def lagging_pair(
    redis_url: str, channel: str
) -> AsyncIterator[tuple[TestServer, TestServer]]:
    """Node A, and node B whose feed of ``channel`` is held back by a ``block`` subscriber that
    stopped reading (it is released by draining it, see :func:`drain`)."""
    async with (
        open_node(redis_url) as a,
        open_node(
            redis_url,
            buffer_size=2048,
            # What the staller's socket and outbox take, then the channel waits for it and holds
            # what comes next (at most outbox_size messages before the staller is dropped).
            outbox_size=10,
            block_timeout=30,
            channel_policies=[(channel, "block")],
        ) as b,
    ):
        yield a, b


async def drain(staller: TestClient, until_seq: int) -> None:
    """The stalled subscriber reads again: B's feed goes on."""
    while (await staller.receive_type("message"))["seq"] < until_seq:
        pass


async def stalled_feed(a: TestServer, b: TestServer, staller: TestClient, channel: str) -> int:
    """Publish on A until B's feed is stuck behind; returns the last seq published."""
    await staller.request({"type": "subscribe", "channel": channel, "id": 1})
    async with a.connect() as writer:
        seq = 0
        for n in range(25):
            seq = await publish(writer, channel, {"n": n, "pad": "x" * 100}, n)
        await trio.sleep(0.3)  # what B can take has arrived: the rest waits for the staller
        assert feed_seq(b, channel) < seq, "B's feed is not behind: the test needs a lag"
        stuck = feed_seq(b, channel)
        await trio.sleep(0.2)
        assert feed_seq(b, channel) == stuck
    return seq


async def test_a_node_behind_the_client_catches_up_before_answering(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B waits (bounded) for its feed to reach the client's ``since``, then answers
    ``recovered``: the client gets exactly what follows, with no duplicate on the wire."""
    from triows._brokers.redis import resume as _redis_resume

    # The wait is bounded by redis_timeout (2 s here): room for a busy test machine.
    monkeypatch.setattr(_redis_resume, "RESUME_LAG_WAIT", 5.0)
    channel = channel_name("lag")
    async with lagging_pair(redis_url, channel) as (a, b):
        async with a.connect() as seen_on_a:
            reply = await seen_on_a.request({"type": "subscribe", "channel": channel, "id": 1})
            epoch = reply["epoch"]
            async with b.connect(message_queue_size=1) as staller:
                last = await stalled_feed(a, b, staller, channel)
                seen = [(await seen_on_a.receive_type("message"))["seq"] for _ in range(last)]
                assert seen == list(range(1, last + 1))
                async with b.connect() as moved, trio.open_nursery() as nursery:

                    async def release_soon() -> None:
                        await trio.sleep(0.1)  # while B holds the subscribe
                        await drain(staller, last)

                    nursery.start_soon(release_soon)
                    reply = await moved.request(
                        {
                            "type": "subscribe",
                            "channel": channel,
                            "id": 2,
                            "since": last,
                            "epoch": epoch,
                        }
                    )
                    assert (reply["recovered"], reply["epoch"]) == (True, epoch), reply
                    assert "gap" not in reply
                    async with a.connect() as writer:
                        await publish(writer, channel, "after", "after")
                    nursery.start_soon(drain, staller, last + 1)
                    following = await moved.receive_type("message")
                    assert (following["seq"], following["data"]) == (last + 1, "after")


async def test_a_node_that_stays_behind_answers_recovered_once_redis_says_so(
    redis_url: str,
) -> None:
    """The feed is still behind when the wait ends: B asks Redis, which numbered ``since`` in
    this epoch, so nothing was missed: ``recovered``. What B hands over later up to ``since``
    are duplicates on the wire, which trackers drop (the next test)."""
    channel = channel_name("lag")
    async with lagging_pair(redis_url, channel) as (a, b):
        async with a.connect() as seen_on_a:
            reply = await seen_on_a.request({"type": "subscribe", "channel": channel, "id": 1})
            epoch = reply["epoch"]
            async with b.connect(message_queue_size=1) as staller:
                last = await stalled_feed(a, b, staller, channel)
                stuck = feed_seq(b, channel)
                async with b.connect() as moved:
                    reply = await moved.request(
                        {
                            "type": "subscribe",
                            "channel": channel,
                            "id": 2,
                            "since": last,
                            "epoch": epoch,
                        }
                    )
                    assert (reply["recovered"], reply["epoch"]) == (True, epoch), reply
                    assert reply["seq"] == stuck  # where B's live traffic resumes
                    assert feed_seq(b, channel) == stuck  # answered while still behind
                    # Since beyond what Redis ever numbered is not lag: not recovered.
                    bogus = await moved.request(
                        {
                            "type": "subscribe",
                            "channel": channel,
                            "id": 3,
                            "since": last + 1000,
                            "epoch": epoch,
                        }
                    )
                    assert bogus["recovered"] is False
                    assert "gap" not in bogus


class Mover:
    """Opens client streams to node A, later to node B, and can cut the current one."""

    def __init__(self, first: TestServer) -> None:
        self.node = first
        self.stream: trio.abc.Stream | None = None

    async def open(self) -> trio.abc.Stream:
        self.stream = await self.node.listener.connect()
        return self.stream

    async def move_to(self, node: TestServer) -> None:
        self.node = node
        assert self.stream is not None
        await trio.aclose_forcefully(self.stream)


async def test_a_client_moving_to_a_node_behind_it_sees_every_message_once(
    redis_url: str,
) -> None:
    """triows.client moves from A to B while B's feed is behind what it saw: no gap, and no
    message twice, also once B catches up."""
    channel = channel_name("lag")
    async with lagging_pair(redis_url, channel) as (a, b):
        async with b.connect(message_queue_size=1) as staller:
            mover = Mover(a)
            async with wsclient.connect(
                "ws://cluster.test/", open_stream=mover.open, backoff_base=0.01
            ) as client:
                with trio.fail_after(10):
                    await client.wait_open()
                subscription = await client.subscribe(channel)
                last = await stalled_feed(a, b, staller, channel)
                with trio.fail_after(10):
                    events: list[Any] = [await subscription.__anext__() for _ in range(last)]
                await mover.move_to(b)
                with trio.fail_after(10):
                    await client.state.wait_value(
                        lambda state: state is wsclient.ClientState.OPEN and client.connects == 2
                    )
                assert client.server_id == b.server.server_id
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(drain, staller, last + 1)
                    async with a.connect() as writer:
                        await publish(writer, channel, "after", "after")
                    with trio.fail_after(10):
                        events.append(await subscription.__anext__())
    seqs = [event.seq for event in events if isinstance(event, wsclient.Message)]
    assert seqs == list(range(1, last + 2))  # every message once, in order
    assert [e for e in events if isinstance(e, wsclient.Gap)] == []


async def drain_until(staller: TestClient, data: Any) -> None:
    """The stalled subscriber reads again, up to the message carrying ``data``."""
    while (await staller.receive_type("message"))["data"] != data:
        pass


def feed_epoch(node: TestServer, channel: str) -> str:
    return str(node.server.broker._feeds.channels[channel].feed.epoch)  # type: ignore[attr-defined]


async def restart_numbering(redis_url: str, channel: str) -> None:
    """Redis loses the channel (as a Redis restarted without persistence would): the next
    publication or join starts a new epoch."""

    def drop() -> None:
        connection = Clients(redis_url, 5).open()  # a cluster client on a cluster
        try:
            connection.delete(fmt.numbering_key(channel), fmt.stream_key(channel))
        finally:
            connection.close()

    await trio.to_thread.run_sync(drop)


async def test_a_node_behind_a_numbering_restart_answers_in_the_clients_epoch(
    redis_url: str,
) -> None:
    """The numbering restarted; the client saw the new epoch on A; B's feed is still in the old
    one. B asks Redis, which numbers the channel in the client's epoch: lag, ``recovered``, in
    the client's epoch (at 0, where B's traffic in it will start), never B's stale epoch."""
    channel = channel_name("lag")
    async with lagging_pair(redis_url, channel) as (a, b):
        async with b.connect(message_queue_size=1) as staller:
            await stalled_feed(a, b, staller, channel)
            old_epoch = feed_epoch(b, channel)
            await restart_numbering(redis_url, channel)
            async with a.connect() as seen_on_a:
                reply = await seen_on_a.request({"type": "subscribe", "channel": channel, "id": 1})
                new_epoch = reply["epoch"]
                assert (new_epoch != old_epoch, reply["seq"]) == (True, 0)
                async with a.connect() as writer:
                    for n in range(2):
                        await publish(writer, channel, n, f"new-{n}")
                for seq in (1, 2):
                    assert (await seen_on_a.receive_type("message"))["seq"] == seq
            assert feed_epoch(b, channel) == old_epoch, "B saw the restart: the test needs a lag"
            async with b.connect() as moved:
                resume = {"type": "subscribe", "channel": channel, "epoch": new_epoch}
                reply = await moved.request({**resume, "id": 2, "since": 2})
                assert reply == {
                    "type": "subscribed",
                    "channel": channel,
                    "seq": 0,
                    "epoch": new_epoch,
                    "recovered": True,
                    "id": 2,
                }
                # Numbers Redis never gave in that epoch are not lag: another epoch.
                bogus = await moved.request({**resume, "id": 3, "since": 50})
                assert (bogus["recovered"], bogus["epoch"]) == (False, old_epoch)


async def test_a_client_moving_to_a_node_behind_a_numbering_restart_sees_every_message_once(
    redis_url: str,
) -> None:
    """triows.client follows the channel only after its numbering restarted (it never saw the
    old epoch) and moves to B, whose feed is still in the old one: no false gap, nothing twice
    once B catches up, and none of the old epoch's messages delivered as the new one's."""
    channel = channel_name("lag")
    async with lagging_pair(redis_url, channel) as (a, b):
        async with b.connect(message_queue_size=1) as staller:
            await stalled_feed(a, b, staller, channel)
            old_epoch = feed_epoch(b, channel)
            await restart_numbering(redis_url, channel)
            mover = Mover(a)
            async with wsclient.connect(
                "ws://cluster.test/", open_stream=mover.open, backoff_base=0.01
            ) as client:
                with trio.fail_after(10):
                    await client.wait_open()
                subscription = await client.subscribe(channel)
                async with a.connect() as writer:
                    for n in range(2):
                        await publish(writer, channel, n, f"new-{n}")
                with trio.fail_after(10):
                    events: list[Any] = [await subscription.__anext__() for _ in range(2)]
                assert feed_epoch(b, channel) == old_epoch, "B saw the restart: no lag to test"
                await mover.move_to(b)
                with trio.fail_after(10):
                    await client.state.wait_value(
                        lambda state: state is wsclient.ClientState.OPEN and client.connects == 2
                    )
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(drain_until, staller, "after")  # old epoch, then new
                    async with a.connect() as writer:
                        await publish(writer, channel, "after", "after")
                    with trio.fail_after(10):
                        events.append(await subscription.__anext__())
                    nursery.cancel_scope.cancel()
    assert [(type(e).__name__, getattr(e, "seq", None)) for e in events] == [
        ("Message", 1),
        ("Message", 2),
        ("Message", 3),
    ]
    assert events[-1].data == "after"
