"""Connections come and go without leaks; heartbeats, idle sweeps and shutdown behave."""

from __future__ import annotations

import pytest
import trio

from triows._server.connection import Connection
from triows.testing import open_test_server

from .rawclient import RawClient
from .tasktree import all_tasks


async def test_task_count_returns_to_baseline(autojump_clock: trio.testing.MockClock) -> None:
    # With no idle channel kept, a channel's state must go with its last member. (Idle
    # channels are kept otherwise, with their numbering, up to max_idle_channels.)
    async with open_test_server(history_size=0, max_idle_channels=0) as harness:
        await trio.sleep(1)
        baseline = len(all_tasks())
        for _round in range(3):
            async with harness.connect() as polite:
                await polite.request({"type": "subscribe", "channel": "a"})
                abrupt = await RawClient.connect(harness.listener)
                await abrupt.subscribe("a")
                await harness.server.publish("a", 1)
                await abrupt.abort()  # no close handshake: the TCP-reset case
                half_open = await harness.listener.connect()  # never finishes its handshake
                await half_open.send_all(b"GET / HTTP/1.1\r\n")
            await trio.sleep(harness.server.config.handshake_timeout + 1)
            await half_open.aclose()
            await trio.sleep(1)
            assert len(all_tasks()) == baseline
            stats = harness.server.statistics()
            assert (stats.connections, stats.channels, stats.subscriptions) == (0, 0, 0)


async def test_heartbeat_closes_unresponsive_peer_with_1011(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(heartbeat_interval=10, heartbeat_timeout=5) as harness:
        frozen = await RawClient.connect(harness.listener)
        await frozen.subscribe("a")
        start = trio.current_time()
        await trio.sleep(15.5)  # ping at 10 s, no pong by 15 s
        assert harness.server.statistics().closed_by_server == {1011: 1}
        await trio.sleep(harness.server.config.close_timeout)  # its goodbye is bounded
        assert harness.server.statistics().connections == 0
        assert await frozen.read_until_closed() == 1011
        assert trio.current_time() - start < 21


async def test_heartbeat_keeps_responsive_peer(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(heartbeat_interval=10, heartbeat_timeout=5) as harness:
        async with harness.connect() as client:
            await client.request({"type": "subscribe", "channel": "a"})
            await trio.sleep(100)  # the client library answers pings in the background
            assert (await client.request({"type": "ping"}))["type"] == "pong"
            assert harness.server.statistics().closed_by_server == {}


async def test_idle_connections_without_subscriptions_are_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(idle_timeout=60) as harness:
        async with harness.connect(receive_timeout=100) as idle, harness.connect() as listener:
            await listener.request({"type": "subscribe", "channel": "a"})
            start = trio.current_time()
            code, reason = await idle.wait_closed()
            assert (code, reason) == (1000, "Idle timeout")
            assert 60 <= trio.current_time() - start <= 76
            await trio.sleep(200)
            assert (await listener.request({"type": "ping"}))["type"] == "pong"


async def test_graceful_shutdown_drains_then_closes_1001(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(buffer_size=1024) as harness:
        client = await RawClient.connect(harness.listener)
        await client.subscribe("a")
        for n in range(20):  # more than the stream buffer holds: some wait in the outbox
            await harness.server.publish("a", {"n": n, "pad": "x" * 100})
        assert harness.server.statistics().queued_frames > 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(harness.server.aclose)
            await client.read_until_closed()
        assert client.close_code == 1001
        assert [m["data"]["n"] for m in client.of_type("message")] == list(range(20))
        with pytest.raises(ConnectionRefusedError):
            await harness.listener.connect()


async def test_shutdown_is_bounded_when_clients_do_not_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(shutdown_timeout=3, buffer_size=1024) as harness:
        stuck = await RawClient.connect(harness.listener)
        await stuck.subscribe("a")
        for n in range(30):
            await harness.server.publish("a", {"n": n, "pad": "x" * 100})
        start = trio.current_time()
        await harness.server.aclose()
        assert trio.current_time() - start <= 3.01


async def test_connection_bug_is_contained(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_heartbeat(self: Connection) -> None:
        raise RuntimeError("bug in a connection task")

    async with open_test_server() as harness:
        async with harness.connect() as healthy:
            monkeypatch.setattr(Connection, "_heartbeat", broken_heartbeat)
            async with harness.connect() as victim:
                code, _ = await victim.wait_closed()
                assert code == 1011
            monkeypatch.undo()
            assert (await healthy.request({"type": "ping"}))["type"] == "pong"
            async with harness.connect() as later:
                assert (await later.request({"type": "ping"}))["type"] == "pong"


async def test_request_bug_is_error_500_and_connection_survives(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_subscribe(*args: object) -> None:
        raise RuntimeError("bug")

    async with open_test_server() as harness:
        async with harness.connect() as client:
            monkeypatch.setattr(harness.server.hub, "subscribe", broken_subscribe)
            reply = await client.request({"type": "subscribe", "channel": "a", "id": 5})
            assert (reply["type"], reply["code"], reply["id"]) == ("error", 500, 5)
            assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_cancelling_serve_still_stops_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    import triows
    from triows.testing import MemoryListener

    listener = MemoryListener()
    baseline = len(all_tasks())
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: triows.serve(listeners=[listener], task_status=task_status)
            )
            for _ in range(3):
                nursery.start_soon(RawClient.connect, listener)
            await trio.sleep_forever()
    assert len(all_tasks()) == baseline
