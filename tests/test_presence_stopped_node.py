"""Presence must not lie when a node stops for longer than ``presence_ttl`` and comes back.

While node B is stopped (SIGSTOP: a GC pause, a saturated loop, a VM migration look the same
from outside), node A sweeps B's members out of Redis and everyone is told ``leave``. When B
resumes, its members are still connected: they must be announced again (``join``), to the
subscribers of the other nodes and of B itself, and be listed by ``presence`` again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from triows.testing import TestClient

from .redisserver import RedisServer, free_port
from .test_redis_cluster import channel_name, open_node
from .test_workers import Supervisor, kill_if_running

pytestmark = pytest.mark.real_socket

TTL = 0.9


async def next_presence_event(client: Any) -> dict[str, Any]:
    """The next ``join`` or ``leave`` a trio-websocket client receives."""
    while True:
        frame: dict[str, Any] = json.loads(await client.get_message())
        if frame["type"] in ("join", "leave"):
            return frame


async def test_a_node_swept_while_stopped_announces_its_members_again(
    redis_server: RedisServer,
) -> None:
    channel = channel_name("room")
    port = free_port()
    command = [sys.executable, "-m", "triows", "--port", str(port)]
    command += ["--redis-url", redis_server.url, "--presence", "room*"]
    command += ["--presence-ttl", str(TTL)]
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE)
    node_b = Supervisor(process)  # reads the process's log
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node_b.read_log)
            await node_b.wait_for("triows listening")
            url = f"ws://127.0.0.1:{port}/"
            async with (
                open_node(redis_server.url, presence=["room*"], presence_ttl=TTL) as a,
                a.connect() as watcher,
                open_websocket_url(url) as member,
                open_websocket_url(url) as local_watcher,
            ):
                welcome = json.loads(await member.get_message())
                member_id = welcome["data"]["clientId"]
                local_id = json.loads(await local_watcher.get_message())["data"]["clientId"]
                subscribe = {"type": "subscribe", "channel": channel}
                await local_watcher.send_message(json.dumps(subscribe))
                await local_watcher.get_message()  # subscribed
                await watcher.request({**subscribe, "id": 1})
                await member.send_message(json.dumps(subscribe))
                with trio.fail_after(10):
                    # (A join for local_watcher may come too: its write can be later.)
                    while (await watcher.receive_type("join"))["clientId"] != member_id:
                        pass
                    # (And local_watcher hears of watcher's join too, in any order.)
                    while (await next_presence_event(local_watcher))["clientId"] != member_id:
                        pass

                b_members = {member_id, local_id}
                os.kill(process.pid, signal.SIGSTOP)
                try:
                    with trio.fail_after(10):  # A sweeps B's members once they expired
                        left = await presence_events(watcher, "leave", b_members)
                    assert left == b_members
                    assert await count(watcher, channel) == 1
                finally:
                    os.kill(process.pid, signal.SIGCONT)

                with trio.fail_after(10):  # B notices and announces its members again
                    joined = await presence_events(watcher, "join", b_members)
                assert joined == b_members
                # B's own subscribers heard the sweep's leave too, then hear the join.
                events: list[tuple[str, str]] = []
                with trio.fail_after(10):
                    while len(events) < 2:
                        event = await next_presence_event(local_watcher)
                        if event["clientId"] != watcher.client_id:  # its join, maybe late
                            events.append((event["type"], event["clientId"]))
                assert events == [("leave", member_id), ("join", member_id)]
                assert await count(watcher, channel) == 3
                await trio.sleep(TTL)  # and it stays so: no other leave or join comes
                await watcher.send({"type": "ping", "id": "p"})
                assert (await watcher.receive())["type"] == "pong"
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                await process.wait()
            nursery.cancel_scope.cancel()
    finally:
        await kill_if_running(process)


async def presence_events(client: TestClient, kind: str, of: set[str]) -> set[str]:
    """Wait for a ``kind`` event for each of ``of``; any other presence event fails."""
    seen: set[str] = set()
    while seen != of:
        frame = await client.receive()
        if frame["type"] in ("join", "leave"):
            assert (frame["type"], frame["clientId"] in of) == (kind, True), frame
            seen.add(frame["clientId"])
    return seen


async def count(client: TestClient, channel: str) -> int:
    answer = await client.request({"type": "presence", "channel": channel, "id": "q"})
    return int(answer["count"])
