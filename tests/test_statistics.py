"""statistics(): frozen snapshots of server, channel and connection figures."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

from triows.testing import open_test_server


async def test_counters_and_rates(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as harness:
        async with harness.connect() as a, harness.connect() as b, harness.connect() as c:
            for client in (a, b):
                await client.request({"type": "subscribe", "channel": "room"})
            for n in range(5):
                await c.request({"type": "publish", "channel": "room", "data": n, "id": n})
            await trio.sleep(1.5)
            stats = harness.server.statistics()
            assert stats.connections == 3
            assert stats.connections_total == 3
            assert (stats.channels, stats.subscriptions) == (1, 2)
            assert (stats.published, stats.delivered, stats.dropped) == (5, 10, 0)
            assert stats.delivery_rate == 10.0
            assert stats.publish_rate == 5.0
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                stats.connections = 0  # type: ignore[misc]
            (room,) = harness.server.channel_statistics()
            assert (room.name, room.seq, room.subscribers, room.published, room.delivered) == (
                "room",
                5,
                2,
                5,
                10,
            )
            per_client = {s.client_id: s for s in harness.server.connection_statistics()}
            assert per_client[a.client_id].subscriptions == ("room",)
            assert per_client[c.client_id].frames_in == 5
            assert per_client[a.client_id].frames_out >= 6  # welcome, subscribed, 5 messages
            await trio.sleep(2)
            assert harness.server.statistics().delivery_rate == 0.0


class _NoScan(dict):  # type: ignore[type-arg]
    """A registry of connections that refuses to be walked."""

    def __iter__(self) -> Any:
        raise AssertionError("statistics walked every connection")

    def values(self) -> Any:
        raise AssertionError("statistics walked every connection")


async def test_statistics_cost_the_same_at_any_number_of_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(outbox_size=2, buffer_size=1024) as harness:
        server = harness.server
        async with harness.connect() as a, harness.connect() as b:
            await a.request({"type": "subscribe", "channel": "room"})
            for n in range(3):
                await b.request({"type": "publish", "channel": "room", "data": n, "id": n})
            expected = (server.statistics(), server.frame_totals())
            server._connections = _NoScan(server._connections)
            try:
                stats = server.statistics()
                assert (stats, server.frame_totals()) == expected
                assert (stats.connections, stats.subscriptions) == (2, 1)
                assert server.frame_totals()[0] == 3 + 1  # 3 publishes, 1 subscribe
            finally:
                server._connections = dict(server._connections)


async def test_an_anonymous_connection_takes_its_dedupe_window_when_it_goes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as harness:
        for n in range(20):
            async with harness.connect() as client:
                await client.request({"type": "publish", "channel": "c", "data": n, "id": "x"})
                assert harness.server.statistics().dedupe_principals >= 1
        await trio.sleep(0.1)
        stats = harness.server.statistics()
        assert (stats.connections, stats.dedupe_principals, stats.dedupe_entries) == (0, 0, 0)


async def test_presence_requests_are_rate_limited_like_subscribes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(presence=["room"], subscribe_rate=1) as harness:
        async with harness.connect() as client:
            kinds = [
                (await client.request({"type": "presence", "channel": "room", "id": n}))["type"]
                for n in range(4)
            ]
            assert kinds == ["presence", "presence", "error", "error"]
            assert harness.server.statistics().rate_limited == {"subscribe": 2}
