"""Heartbeat liveness: anything that arrives keeps a peer alive, and a server that runs late
gives its peers the time it lost (issue 24: a saturated box closed live clients with 1011)."""

from __future__ import annotations

import pytest
import trio

from triows._core.frame_parser import FrameParser
from triows._net.websocket import WebSocket
from triows._server.connection import MAX_STRETCH
from triows.testing import open_test_server

from .rawclient import RawClient


async def test_a_peer_that_sends_frames_but_never_pongs_stays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(heartbeat_interval=10, heartbeat_timeout=5) as harness:
        talker = await RawClient.connect(harness.listener)
        await talker.subscribe("a")
        # From now on it never reads (so never answers a ping), but it keeps publishing.
        for n in range(30):
            await talker.send({"type": "publish", "channel": "b", "data": n})
            await trio.sleep(4)
        assert harness.server.statistics().closed_by_server == {}
        assert harness.server.statistics().connections == 1
        # Once it falls silent, the next ping unanswered for 5 s closes it.
        await trio.sleep(10 + 5 + 0.5)
        assert harness.server.statistics().closed_by_server == {1011: 1}
        await talker.read_until_closed()
        assert talker.close_code == 1011


async def test_the_deadline_moves_by_the_loop_lag_the_monitor_measured(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_test_server(heartbeat_interval=10, heartbeat_timeout=5) as harness:
        server = harness.server
        lag = [3.0]  # as if the monitor measured a loop 3 s late, and kept doing so
        monkeypatch.setattr(server, "loop_lag", lambda: lag[0])
        frozen = await RawClient.connect(harness.listener)
        await frozen.subscribe("a")
        # Ping at 10 s; the deadline at 15 s moves by 3 s at a time while that lag lasts.
        await trio.sleep(30)
        assert server.statistics().closed_by_server == {}
        lag[0] = 0.0  # the loop caught up: the next deadline holds
        await trio.sleep(3 + 0.5)  # the deadline then was at most 3 s away
        assert server.statistics().closed_by_server == {1011: 1}
        await frozen.read_until_closed()
        assert frozen.close_code == 1011


async def test_a_stall_of_the_server_itself_is_not_the_peers_fault(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(heartbeat_interval=10, heartbeat_timeout=5) as harness:
        server = harness.server
        frozen = await RawClient.connect(harness.listener)
        await frozen.subscribe("a")
        start = trio.current_time()
        await trio.sleep(14.5)  # pinged at 10 s, deadline at 15 s
        autojump_clock.jump(3)  # the process stalls 3 s: every task wakes late
        await trio.sleep(0.5)
        assert trio.current_time() - start >= 17.5  # past the deadline, but the server was late
        assert server.statistics().closed_by_server == {}
        # The lag counts while the monitor's samples of the last heartbeat_timeout (5 s) show
        # it; then, nothing heard: 1011 at the next deadline (at most the 2.5 s lag away).
        await trio.sleep(5 + 2.5 + 1)
        assert server.statistics().closed_by_server == {1011: 1}
        await frozen.read_until_closed()
        assert frozen.close_code == 1011


async def test_bytes_waiting_in_the_kernel_count_as_heard() -> None:
    # A saturated loop runs readers late: at a deadline, bytes the reader has not taken yet
    # are still a sign of life.
    left, right = trio.socket.socketpair()
    with left, right:
        ws = WebSocket(trio.SocketStream(left), FrameParser(1024), b"")
        assert not ws.has_unread_bytes()
        await right.send(b"\\x8a\\x80")
        await trio.lowlevel.wait_readable(left)
        assert ws.has_unread_bytes()
        assert await ws.receive() == b"\\x8a\\x80"
        assert not ws.has_unread_bytes()


async def test_a_lag_that_just_ended_still_counts(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(heartbeat_timeout=5, monitor_interval=1) as harness:
        monitor = harness.server.monitor
        await trio.sleep(3.5)
        autojump_clock.jump(2)  # a 2 s stall, measured by the monitor's next tick
        await trio.sleep(1.1)
        assert monitor.loop_lag < 0.05 < monitor.recent_lag(5)  # over, but recent
        assert harness.server.loop_lag() >= 1
        await trio.sleep(6)
        assert harness.server.loop_lag() < 0.05  # out of the window


async def test_a_lag_that_never_ends_does_not_keep_a_silent_peer_for_ever(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A monitor that always reports lag (a server saturated for good, or a bug in the
    # measure) must not turn the heartbeat off: the stretch has a bound.
    async with open_test_server(heartbeat_interval=10, heartbeat_timeout=5) as harness:
        server = harness.server
        monkeypatch.setattr(server, "loop_lag", lambda: 3.0)
        frozen = await RawClient.connect(harness.listener)
        await frozen.subscribe("a")
        # Ping at 10 s, deadline at 15 s, moved by at most MAX_STRETCH timeouts.
        await trio.sleep(10 + 5 * (1 + MAX_STRETCH) + 3 + 0.5)
        assert server.statistics().closed_by_server == {1011: 1}
        await frozen.read_until_closed()
        assert frozen.close_code == 1011
