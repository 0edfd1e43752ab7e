"""The monitor: a bounded history of samples, and one warning per crossing, in virtual time."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from triows.testing import open_test_server


async def test_samples_are_kept_in_a_bounded_ring(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(monitor_interval=1, monitor_history=5) as harness:
        monitor = harness.server.monitor
        async with harness.connect() as client:
            await trio.sleep(2.5)
            for n in range(4):
                await client.request({"type": "publish", "channel": "c", "data": n, "id": n})
            await trio.sleep(1)
            sample = monitor.samples[-1]
            assert sample.connections == 1
            assert sample.publish_rate == pytest.approx(4, rel=0.01)
            # In process the ack is written in the same step: the first bucket.
            assert (sample.ack_p50, sample.ack_p99) == (0.0005, 0.0005)
            assert sample.lag_p50 is None  # nothing crossed Redis
            await trio.sleep(10)
        assert len(monitor.samples) == 5
        times = [s.time for s in monitor.samples]
        assert times == sorted(times)
        assert monitor.samples[-1].ack_p50 is None  # no publish in the last interval


async def test_loop_lag_warns_once_and_once_more_when_it_recovers(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="triows.monitor")
    async with open_test_server(monitor_interval=1, warn_loop_lag=0.5) as harness:
        for _ in range(2):
            await trio.sleep(3.5)
            autojump_clock.jump(2)  # the monitor's timer fires over 1 s late
            await trio.sleep(0.1)
            assert harness.server.monitor.loop_lag > 1
            await trio.sleep(5)
            assert harness.server.monitor.loop_lag == 0
    lines = [r.getMessage() for r in caplog.records]
    assert len([line for line in lines if "is over 0.500s" in line]) == 2
    assert len([line for line in lines if "back to" in line]) == 2


async def test_memory_warning_is_one_line_not_one_per_sample(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="triows.monitor")
    async with open_test_server(monitor_interval=1, warn_memory=1):
        await trio.sleep(30)
    lines = [r.getMessage() for r in caplog.records if "warning level" in r.getMessage()]
    assert len(lines) == 1


async def test_a_bug_in_a_supervisor_task_restarts_it_instead_of_ending_the_server(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with open_test_server(monitor_interval=1) as harness:
        server = harness.server
        calls = 0
        real = server.monitor._warn

        def failing_once(sample: object) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise RuntimeError("a bug in the monitor")
            real(sample)  # type: ignore[arg-type]

        monkeypatch.setattr(server.monitor, "_warn", failing_once)
        async with harness.connect() as client:
            await trio.sleep(5)
            assert (await client.request({"type": "ping", "id": 1}))["type"] == "pong"
        assert calls > 3  # it kept sampling after the failure
        assert server.statistics().task_failures == 1
    assert "background task 'monitor' failed; restarting it" in caplog.text


async def test_sharing_figures_with_other_workers_does_not_block_the_event_loop(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from triows._ops import shared_stats as _shared_stats

    disk = threading.Event()  # a disk that does not answer until told to
    stuck: list[bool] = []
    real_write = _shared_stats.write

    def slow_write(*args: Any) -> None:
        if not disk.wait(5):  # nobody could tell it: the writer blocked the event loop
            stuck.append(True)
        real_write(*args)

    monkeypatch.setattr(_shared_stats, "write", slow_write)
    options: dict[str, Any] = {"monitor_interval": 1, "shared_stats_dir": str(tmp_path)}
    async with open_test_server(**options) as harness:
        async with harness.connect() as client:
            await trio.sleep(1.5)  # the first write is stuck in the disk
            for n in range(3):  # the loop still serves clients meanwhile
                assert (await client.request({"type": "ping", "id": n}))["type"] == "pong"
            disk.set()

            def written() -> bool:
                for _ in range(1000):  # real time: the write happens in a thread
                    if list(tmp_path.glob("*.json")):
                        return True
                    time.sleep(0.01)
                return False

            assert await trio.to_thread.run_sync(written)
    assert not stuck
