"""statistics(): frozen snapshots of server, channel and connection figures."""

from __future__ import annotations

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
