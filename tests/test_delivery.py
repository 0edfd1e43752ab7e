"""History, resume with replay, and publish dedupe, through the real server."""

from __future__ import annotations

from typing import Any

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from triows.testing import TestClient, open_test_server

from .conftest import SECRET, make_token


async def messages(client: TestClient, count: int) -> list[int]:
    return [(await client.receive_type("message"))["seq"] for _ in range(count)]


async def test_resume_replays_missed_messages_before_live_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as harness:
        server = harness.server
        async with harness.connect() as first:
            subscribed = await first.request({"type": "subscribe", "channel": "c"})
            for n in range(2):
                await server.publish("c", n)
            assert await messages(first, 2) == [1, 2]
        for n in range(2, 6):
            await server.publish("c", n)  # missed while away
        async with harness.connect() as again:
            reply = await again.request(
                {
                    "type": "subscribe",
                    "channel": "c",
                    "since": 2,
                    "epoch": subscribed["epoch"],
                    "id": "r",
                }
            )
            assert reply == {
                "type": "subscribed",
                "channel": "c",
                "seq": 6,
                "epoch": subscribed["epoch"],
                "recovered": True,
                "id": "r",
            }
            await server.publish("c", 6)
            frames = [await again.receive() for _ in range(5)]
            assert [f["seq"] for f in frames] == [3, 4, 5, 6, 7]
            assert [f["data"] for f in frames] == [2, 3, 4, 5, 6]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 6), st.integers(1, 8))
async def test_publish_racing_a_resume_arrives_exactly_once(
    yields_before: int, racing: int
) -> None:
    """Publishes interleaved with a resume at any point: each seq exactly once, in order."""
    async with open_test_server() as harness:
        server = harness.server
        for n in range(5):
            await server.publish("c", n)
        epoch = server.channel_statistics()[0].epoch
        async with harness.connect() as client, trio.open_nursery() as nursery:

            async def publisher() -> None:
                for _ in range(yields_before):
                    await trio.lowlevel.checkpoint()
                for n in range(racing):
                    await server.publish("c", 100 + n)

            nursery.start_soon(publisher)
            reply = await client.request(
                {"type": "subscribe", "channel": "c", "since": 2, "epoch": epoch}
            )
            assert reply["recovered"] is True
            seqs = await messages(client, 3 + racing)
            assert seqs == list(range(3, 6 + racing))


async def test_gap_when_history_no_longer_reaches(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(history_size=3) as harness:
        for n in range(10):
            await harness.server.publish("c", n)
        epoch = harness.server.channel_statistics()[0].epoch
        async with harness.connect() as client:
            reply = await client.request(
                {"type": "subscribe", "channel": "c", "since": 2, "epoch": epoch}
            )
            assert (reply["recovered"], reply["gap"]) == (False, [3, 7])
            assert await messages(client, 3) == [8, 9, 10]


async def test_history_expires_by_ttl(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(history_ttl=30) as harness:
        async with harness.connect() as holder:
            subscribed = await holder.request({"type": "subscribe", "channel": "c"})
            await harness.server.publish("c", 1)
            await trio.sleep(31)
            assert harness.server.statistics().history_messages == 0
            async with harness.connect() as late:
                reply = await late.request(
                    {"type": "subscribe", "channel": "c", "since": 0, "epoch": subscribed["epoch"]}
                )
                assert (reply["recovered"], reply["gap"]) == (False, [1, 1])


async def test_new_epoch_is_never_recovered(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(history_ttl=10, max_idle_channels=1) as harness:
        async with harness.connect() as client:
            first = await client.request({"type": "subscribe", "channel": "c"})
            await harness.server.publish("c", 1)
            await client.request({"type": "unsubscribe", "channel": "c"})
            await harness.server.publish("other", 1)  # one idle channel at most: "c" goes
            reply = await client.request(
                {"type": "subscribe", "channel": "c", "since": 1, "epoch": first["epoch"]}
            )
            assert reply["epoch"] != first["epoch"]
            assert reply["recovered"] is False
            assert "gap" not in reply


async def test_channel_published_without_subscribers_can_be_resumed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as harness:
        async with harness.connect() as pub:
            await pub.request({"type": "publish", "channel": "c", "data": "x", "id": 1})
        epoch = harness.server.channel_statistics()[0].epoch
        async with harness.connect() as late:
            reply = await late.request(
                {"type": "subscribe", "channel": "c", "since": 0, "epoch": epoch}
            )
            assert reply["recovered"] is True
            assert (await late.receive())["data"] == "x"


async def test_a_quiet_channel_is_recovered_after_its_only_subscriber_was_away(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Nothing was published while it was followed; its subscriber goes, five messages come,
    it comes back: recovered, and all five replayed (not "epoch changed")."""
    async with open_test_server() as harness:
        async with harness.connect() as client:
            first = await client.request({"type": "subscribe", "channel": "quiet"})
        for n in range(5):
            await harness.server.publish("quiet", n)
        async with harness.connect() as again:
            reply = await again.request(
                {"type": "subscribe", "channel": "quiet", "since": 0, "epoch": first["epoch"]}
            )
            assert (reply["epoch"], reply["recovered"]) == (first["epoch"], True)
            assert await messages(again, 5) == [1, 2, 3, 4, 5]


async def test_idle_channels_are_bounded(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(max_idle_channels=10) as harness:
        for n in range(100):
            await harness.server.publish(f"c{n}", n)
        stats = harness.server.statistics()
        assert stats.channels == 10
        assert stats.history_messages == 10


async def test_channel_history_rules(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(channel_history=[("live.*", 0, 0)]) as harness:
        await harness.server.publish("live.x", 1)
        await harness.server.publish("chat", 1)
        held = {c.name: c.history for c in harness.server.channel_statistics()}
        assert held == {"live.x": 0, "chat": 1}


async def dedupe_publish(client: TestClient, publish_id: Any) -> dict[str, Any]:
    return await client.request(
        {"type": "publish", "channel": "c", "data": "once", "id": publish_id}
    )


async def test_repeated_publish_id_is_acked_again_not_delivered_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(jwt_secret=SECRET) as harness:
        async with harness.connect(token=make_token("carol")) as sub:
            await sub.request({"type": "subscribe", "channel": "c"})
            async with harness.connect(token=make_token("alice")) as alice:
                assert (await dedupe_publish(alice, "k1"))["seq"] == 1
                assert (await dedupe_publish(alice, "k1"))["seq"] == 1
            # Same user after a reconnect: still the same publish.
            async with harness.connect(token=make_token("alice")) as alice_again:
                assert (await dedupe_publish(alice_again, "k1"))["seq"] == 1
            # Another user's "k1" is another message.
            async with harness.connect(token=make_token("bob")) as bob:
                assert (await dedupe_publish(bob, "k1"))["seq"] == 2
            assert await messages(sub, 2) == [1, 2]
            assert (await sub.request({"type": "ping"}))["type"] == "pong"
        stats = harness.server.statistics()
        assert stats.deduplicated == 2
        assert (stats.dedupe_principals, stats.dedupe_entries) == (2, 2)


async def test_anonymous_dedupe_is_per_connection(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as harness:
        async with harness.connect() as one:
            assert (await dedupe_publish(one, 5))["seq"] == 1
            assert (await dedupe_publish(one, 5))["seq"] == 1
        async with harness.connect() as two:
            assert (await dedupe_publish(two, 5))["seq"] == 2


async def test_dedupe_window_expires(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(dedupe_ttl=60) as harness:
        async with harness.connect() as client:
            assert (await dedupe_publish(client, "k"))["seq"] == 1
            await trio.sleep(61)
            assert (await dedupe_publish(client, "k"))["seq"] == 2


async def test_server_publish_is_a_checkpoint() -> None:
    async with open_test_server() as harness:
        with trio.testing.assert_checkpoints():
            await harness.server.publish("c", 1)


async def test_an_application_publish_loop_does_not_starve_subscribers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A tight loop of publishes with no other await: readers and writers still run, so a
    subscriber that reads keeps up and is not disconnected as a slow consumer."""
    async with open_test_server(outbox_size=8, heartbeat_interval=1) as harness:
        async with harness.connect(message_queue_size=1) as client:
            await client.request({"type": "subscribe", "channel": "c", "id": 1})
            received: list[int] = []

            async def read() -> None:
                while len(received) < 2000:
                    received.append((await client.receive_type("message"))["seq"])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                for n in range(2000):
                    await harness.server.publish("c", n)
            assert received == list(range(1, 2001))
            assert harness.server.statistics().slow_consumer_disconnects == 0
