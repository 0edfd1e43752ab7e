"""Redis going away and coming back: clients stay, acked messages are never lost.

Each test runs its own persistent Redis (``appendfsync always``: an acknowledged write is on
disk), which it kills with SIGKILL and starts again on the same port and data.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from triows import client as wsclient
from triows._brokers.redis.bridge import PubSubListener
from triows._server.channels import MAX_UNACKED
from triows.testing import TestClient

from .redisserver import RedisServer
from .test_client_real import gather
from .test_redis_cluster import channel_name, open_node, publish

pytestmark = pytest.mark.real_socket


async def collect(client: TestClient, upto: int) -> list[int]:
    """Message seqs until ``upto`` was seen."""
    seqs: list[int] = []
    while not seqs or seqs[-1] < upto:
        seqs.append((await client.receive_type("message"))["seq"])
    return seqs


async def test_redis_killed_and_restarted_loses_no_acked_message(own_redis: RedisServer) -> None:
    channel = channel_name("outage")
    url = own_redis.url
    acked: list[int] = []
    refused: list[dict[str, Any]] = []
    async with (
        open_node(url, redis_timeout=0.5) as a,
        open_node(url, redis_timeout=0.5, redis_buffer_size=10) as b,
        a.connect() as on_a,
        b.connect() as on_b,
        a.connect() as steady,
        b.connect() as burst,
    ):
        for client in (on_a, on_b):
            await client.request({"type": "subscribe", "channel": channel, "id": "s"})
        outage = trio.Event()

        async def publish_steadily() -> None:
            for n in range(120):
                acked.append(await publish(steady, channel, n, f"steady-{n}"))
                if n == 40:
                    outage.set()
                await trio.sleep(0.005)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_steadily)
            await outage.wait()
            own_redis.kill()
            with trio.fail_after(10):
                await b.server.broker.up.wait_value(False)
            # A burst while Redis is away: ten fit in node B's buffer, the rest get 503.
            for n in range(30):
                await burst.send(
                    {"type": "publish", "channel": channel, "data": n, "id": f"burst-{n}"}
                )
            with trio.fail_after(10):
                while len(refused) < 20:
                    frame = await burst.receive()
                    assert frame["type"] == "error", frame
                    refused.append(frame)
            assert {f["code"] for f in refused} == {503}
            assert b.server.statistics().broker.state == "down"
            assert a.server.statistics().connections == 2  # clients stayed
            async with a.connect() as late:
                # A channel this node follows can be joined; a new one cannot be, for now.
                joined = await late.request({"type": "subscribe", "channel": channel, "id": 1})
                assert joined["type"] == "subscribed", joined
                new = {"type": "subscribe", "channel": channel + "-new", "id": 2}
                assert (await late.request(new))["code"] == 503
            await trio.sleep(1)
            own_redis.start()
        burst_acks = [await burst.receive_type("ack") for _ in range(10)]
        top = max([*acked, *(ack["seq"] for ack in burst_acks)])
        assert top == 130
        for client in (on_a, on_b):
            with trio.fail_after(20):
                seqs = await collect(client, top)
            assert seqs == list(range(1, top + 1))  # complete, in order, once
        stats = a.server.statistics().broker
        assert (stats.state, stats.reconnects) == ("up", 1)
        assert b.server.statistics().broker.refused == 20


def go_silent_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the pub/sub link go silent the way a broken proxy would: Redis forgets the node's
    subscriptions while the node still wants them and sees no error."""
    original = PubSubListener._apply_requests
    armed = [True]

    def apply_requests(self: PubSubListener, session: Any) -> None:
        if armed[0]:
            armed[0] = False
            session._pubsub.unsubscribe()  # every channel, unknown to the listener
        original(self, session)

    monkeypatch.setattr(PubSubListener, "_apply_requests", apply_requests)


async def test_a_silent_pubsub_link_is_detected_and_repaired(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = channel_name("silent")
    async with (
        open_node(redis_url, redis_timeout=0.2) as a,
        open_node(redis_url) as b,
        a.connect() as reader,
        b.connect() as writer,
    ):
        await reader.request({"type": "subscribe", "channel": channel, "id": "s"})
        await publish(writer, channel, 0, 0)
        assert (await reader.receive_type("message"))["seq"] == 1
        go_silent_once(monkeypatch)
        a.server.broker._waker.wake()  # type: ignore[attr-defined]
        with trio.fail_after(10):
            for n in range(1, 10):
                await publish(writer, channel, n, n)
            seqs = await collect(reader, 10)
        assert seqs == list(range(2, 11))
        assert a.server.statistics().broker.repairs == 1


async def test_a_client_that_moves_during_the_outage_resumes_once_redis_is_back(
    own_redis: RedisServer,
) -> None:
    """Node B cannot join the channel while Redis is away (503): the client keeps retrying
    with backoff instead of giving the subscription up, and then resumes without loss."""
    channel = channel_name("move")
    url = own_redis.url
    async with (
        open_node(url, redis_timeout=0.3) as a,
        open_node(url, redis_timeout=0.3) as b,
        a.connect() as writer,
    ):
        nodes = iter([a.listener, *[b.listener] * 100])
        cutter: list[trio.abc.Stream] = []

        async def open_stream() -> trio.abc.Stream:
            stream = await next(nodes).connect()
            cutter.append(stream)
            return stream

        async with wsclient.connect(
            "ws://node/", open_stream=open_stream, backoff_base=0.05, backoff_cap=0.3
        ) as reader:
            await reader.wait_open()
            subscription = await reader.subscribe(channel)
            for n in range(5):
                await publish(writer, channel, n, n)
            own_redis.kill()
            with trio.fail_after(10):
                await b.server.broker.up.wait_value(False)
            await trio.aclose_forcefully(cutter[-1])  # off to node B, which cannot join now
            with trio.fail_after(10):
                while reader.connects < 3:  # refused at least once, still trying
                    await reader.state.wait_value(wsclient.ClientState.RECONNECTING)
                    await reader.state.wait_value(wsclient.ClientState.OPEN)
            own_redis.start()
            for n in range(5, 10):
                await publish(writer, channel, n, n)
            events = await gather(subscription, lambda e: len(e) == 10, 30)
        assert [e.data for e in events] == list(range(10))


async def test_one_client_cannot_take_the_whole_outage_buffer(own_redis: RedisServer) -> None:
    channel = channel_name("greedy")
    async with open_node(own_redis.url, redis_timeout=0.3) as a, a.connect() as greedy:
        own_redis.kill()
        with trio.fail_after(10):
            await a.server.broker.up.wait_value(False)
        for n in range(MAX_UNACKED + 5):
            await greedy.send({"type": "publish", "channel": channel, "data": n, "id": n})
        errors = [await greedy.receive_type("error") for _ in range(5)]
        assert {(e["code"], e["id"]) for e in errors} == {
            (429, n) for n in range(MAX_UNACKED, MAX_UNACKED + 5)
        }
        assert a.server.statistics().broker.buffered == MAX_UNACKED
        own_redis.start()
        with trio.fail_after(20):
            acks = [await greedy.receive_type("ack") for _ in range(MAX_UNACKED)]
        assert [ack["seq"] for ack in acks] == list(range(1, MAX_UNACKED + 1))
