"""``python -m triows top``, drawn headless: into a string instead of a terminal."""

from __future__ import annotations

import io

import pytest
import trio
from rich.console import Console

import triows
from triows._ops import top as _top


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=120, force_terminal=False, color_system=None), out


@pytest.mark.real_socket
async def test_one_frame_of_a_running_server() -> None:
    async with trio.open_nursery() as nursery:
        server: triows.Server = await nursery.start(
            triows.serve, triows.Config(port=0, monitor_interval=0.05)
        )
        await server.publish("headlines", "x")
        while not server.monitor.samples:  # noqa: ASYNC110 - samples have no event
            await trio.sleep(0.05)
        console, out = _console()
        url = f"http://127.0.0.1:{server.port}"
        code = await trio.to_thread.run_sync(
            lambda: _top.run(url, once=True, interval=1, console=console)
        )
        await server.aclose()
    text = out.getvalue()
    assert code == 0
    assert f"triows {url}" in text
    assert "broker memory up" in text
    assert "publish→ack" in text
    assert "connections 0" in text


def test_workers_and_channels_are_shown() -> None:
    summary = {
        "connections": 3,
        "subscriptions": 4,
        "publish_rate": 10.0,
        "delivery_rate": 40.0,
        "cpu": 0.5,
        "rss": 2**27,
        "loop_lag": 0.002,
        "dropped": 0,
        "slow_consumer_disconnects": 0,
        "ack_p50": 0.001,
        "ack_p95": 0.005,
        "ack_p99": 0.01,
        "lag_p50": None,
        "lag_p95": None,
        "lag_p99": None,
        "broker": "redis",
        "broker_state": "down",
        "broker_buffered": 7,
        "top_channels": [["room.1", 3, 12]],
    }
    stats = {
        "server": {"uptime": 3725},
        "total": {**summary, "workers": 2},
        "workers": [{**summary, "worker": "0", "pid": 11}, {**summary, "worker": "1", "pid": 12}],
    }
    console, out = _console()
    console.print(_top.render(stats, "http://h:1"))
    text = out.getvalue()
    assert "up 1h02m05s" in text
    assert "redis down (7 buffered)" in text
    assert "room.1" in text
    assert "10.0" in text  # p99 publish→ack, ms
    assert "workers" in text
    assert "11" in text
    assert "12" in text


def test_an_unreachable_server_is_said_so() -> None:
    console, out = _console()
    assert _top.run("http://127.0.0.1:9", once=True, interval=1, console=console) == 1
    assert "does not answer" in out.getvalue()
