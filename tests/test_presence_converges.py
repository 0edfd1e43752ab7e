"""Presence must not lie after what pub/sub loses: subscribers' member lists converge on the
truth (the hashes in Redis and the members here), and never hear a change twice.

Joins and leaves are announced on pub/sub, which drops what is published while a link is down
(a Redis restart, a pub/sub connection killed, a node stopped while the others announce). Each
node checks what its subscribers were told against the hashes: when the announcements are
followed again, and at every refresh. Real Redis, real time, every wait bounded; a "remote
node" is played by the test, writing entries in the hash without announcing them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
import trio

from triows._core import presence as core
from triows.testing import TestClient

from .redisserver import RedisServer
from .test_redis_cluster import channel_name, open_node

pytestmark = pytest.mark.real_socket

TTL = 0.9  # a refresh every 0.3 s


def put_unannounced(url: str, channel: str, client: str, expires_ms: int) -> None:
    """A member of another node whose join announcement was lost."""
    with redis.Redis.from_url(url) as raw:
        raw.hset(core.key(channel), client, core.encode_entry(expires_ms, "elsewhere", "u"))


async def presence_frames(
    client: TestClient, seconds: float, until: tuple[str, str] | None = None
) -> list[tuple[str, str]]:
    """Every join or leave ``client`` hears for ``seconds``, or until it hears ``until``."""
    heard: list[tuple[str, str]] = []
    with trio.move_on_after(seconds):
        while until not in heard:
            frame = await client.receive()
            if frame["type"] in ("join", "leave"):
                heard.append((frame["type"], frame["clientId"]))
    return heard


async def test_a_member_whose_join_was_lost_is_announced_and_a_member_gone_unannounced_leaves(
    redis_url: str,
) -> None:
    channel = channel_name("room")
    async with open_node(redis_url, presence=["room*"], presence_ttl=TTL) as node:
        async with node.connect() as watcher:
            await watcher.request({"type": "subscribe", "channel": channel, "id": 1})
            await trio.sleep(TTL)  # settled: what the watcher knows is the starting point
            put_unannounced(redis_url, channel, "lost-join", node.server.now_ms() + 600_000)
            heard = await presence_frames(watcher, 5, until=("join", "lost-join"))
            assert heard == [("join", "lost-join")]
            with redis.Redis.from_url(redis_url) as raw:
                raw.hdel(core.key(channel), "lost-join")  # gone; its leave was lost too
            heard = await presence_frames(watcher, 5, until=("leave", "lost-join"))
            assert heard == [("leave", "lost-join")]


async def test_announcements_followed_again_are_checked_at_once(redis_url: str) -> None:
    """A long ttl (refreshes 10 s apart): only the check made when the pub/sub link is back
    can tell the subscriber in time."""
    channel = channel_name("room")
    async with open_node(redis_url, presence=["room*"], presence_ttl=30) as node:
        async with node.connect() as watcher:
            await watcher.request({"type": "subscribe", "channel": channel, "id": 1})
            await trio.sleep(0.5)  # settled
            put_unannounced(redis_url, channel, "lost-join", node.server.now_ms() + 600_000)
            with redis.Redis.from_url(redis_url) as raw:
                raw.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            with trio.fail_after(8):
                frame = await watcher.receive_type("join")
            assert frame["clientId"] == "lost-join"


async def test_members_written_back_after_redis_lost_them_are_not_announced_twice(
    redis_url: str,
) -> None:
    """The hash gone (a Redis that restarted empty, a key that expired): each node writes its
    members back and their joins are announced again; a subscriber that knows them must not
    hear them join a second time."""
    channel = channel_name("room")
    options: dict[str, Any] = {"presence": ["room*"], "presence_ttl": TTL}
    async with open_node(redis_url, **options) as a, open_node(redis_url, **options) as b:
        async with a.connect() as member, b.connect() as watcher:
            await watcher.request({"type": "subscribe", "channel": channel, "id": 1})
            await member.request({"type": "subscribe", "channel": channel, "id": 1})
            with trio.fail_after(5):
                assert (await watcher.receive_type("join"))["clientId"] == member.client_id
            await trio.sleep(TTL)  # settled (until then events pass as they come)
            with redis.Redis.from_url(redis_url) as raw:
                raw.delete(core.key(channel))
                for _ in range(100):  # until the refreshes wrote them back
                    if raw.hlen(core.key(channel)) == 2:
                        break
                    await trio.sleep(0.05)
                assert raw.hlen(core.key(channel)) == 2
            assert await presence_frames(watcher, 3 * TTL) == []


async def test_a_leave_during_an_outage_of_a_redis_without_persistence_is_heard(
    tmp_path: Path,
) -> None:
    """The member leaves while Redis is down; Redis comes back empty. Its leave could not be
    written, and the hash it would have been removed from is gone: nothing would ever announce
    it (other nodes' subscribers kept the member for good)."""
    server = RedisServer(tmp_path, persistent=False)
    server.start()
    try:
        channel = channel_name("room")
        options: dict[str, Any] = {"presence": ["room*"], "presence_ttl": TTL}
        options["redis_timeout"] = 0.3
        async with open_node(server.url, **options) as a, open_node(server.url, **options) as b:
            async with b.connect() as watcher, b.connect() as stays:
                for client in (watcher, stays):
                    await client.request({"type": "subscribe", "channel": channel, "id": 1})
                async with a.connect() as leaving:
                    await leaving.request({"type": "subscribe", "channel": channel, "id": 1})
                    with trio.fail_after(5):
                        while (await watcher.receive_type("join"))["clientId"] != leaving.client_id:
                            pass
                    server.kill()
                    with trio.fail_after(5):
                        await a.server.broker.up.wait_value(False)
                    await leaving.request({"type": "unsubscribe", "channel": channel, "id": 2})
                server.start()
                heard = await presence_frames(watcher, 10, until=("leave", leaving.client_id))
                assert ("leave", leaving.client_id) in heard
                assert ("join", stays.client_id) not in heard  # never left: not announced
    finally:
        server.stop()


async def test_a_presence_request_while_redis_is_down_is_503(own_redis: RedisServer) -> None:
    channel = channel_name("room")
    async with open_node(own_redis.url, presence=["room*"], redis_timeout=0.3) as node:
        async with node.connect() as client:
            await client.request({"type": "subscribe", "channel": channel, "id": 1})
            own_redis.kill()
            with trio.fail_after(10):
                answer = await client.request({"type": "presence", "channel": channel, "id": 2})
            assert (answer["type"], answer["code"]) == ("error", 503), answer


async def test_a_leave_that_could_not_be_written_is_written_when_redis_is_back(
    own_redis: RedisServer,
) -> None:
    """Redis (persistent) away while a member leaves: its leave is written once Redis is
    back, not dropped (the member would stay in the hash, listed by every node, until its
    entry expired, ``presence_ttl`` later). Other nodes' subscribers hear it from the event,
    or, if their own link was not back yet, from their next reads of the hash."""
    channel = channel_name("room")
    options: dict[str, Any] = {"presence": ["room*"], "presence_ttl": 30, "redis_timeout": 0.3}
    async with open_node(own_redis.url, **options) as a:
        async with a.connect() as leaving:
            await leaving.request({"type": "subscribe", "channel": channel, "id": 1})
            raw = redis.Redis.from_url(own_redis.url)
            with trio.fail_after(5):
                while not raw.hexists(core.key(channel), leaving.client_id):  # noqa: ASYNC110
                    await trio.sleep(0.02)
            own_redis.kill()
            with trio.fail_after(5):
                await a.server.broker.up.wait_value(False)
            await leaving.request({"type": "unsubscribe", "channel": channel, "id": 2})
            await trio.sleep(0.5)  # its write fails meanwhile
            own_redis.start()
            with trio.fail_after(5):
                while raw.hexists(core.key(channel), leaving.client_id):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            raw.close()
