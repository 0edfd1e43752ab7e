"""The HTTP API's hands on connections and channels (/api/disconnect, unsubscribe, subscribe,
revoke, history, channel, presence, channels) through a real HTTP client on real sockets: in
one process, and across two nodes sharing a real Redis (asked on one node, acting on the
other's connections)."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

import triows

from .conftest import SECRET, make_token
from .rediscluster import RedisClusterNodes

pytestmark = pytest.mark.real_socket

KEY = "test-api-key-0123456789"
_names = itertools.count()


def channel_name(prefix: str = "ctl") -> str:
    """A channel no other test of the session uses (they may share one Redis)."""
    return f"{prefix}-{time.time():.0f}-{next(_names)}"


@asynccontextmanager
async def nodes(count: int, **overrides: Any) -> AsyncIterator[list[triows.Server]]:
    async with trio.open_nursery() as nursery:
        servers: list[triows.Server] = []
        for _ in range(count):
            config = triows.Config(port=0, api_key=KEY, jwt_secret=SECRET, **overrides)
            servers.append(await nursery.start(triows.serve, config))
        for server in servers:
            with trio.fail_after(10):
                await server.broker.up.wait_value(True)
        with trio.fail_after(30):
            yield servers
        for server in servers:
            await server.aclose()


def api(server: triows.Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", headers={"X-API-Key": KEY})


class Ws:
    """A WebSocket client on a real socket, frames as dicts."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.client_id = ""

    async def receive(self) -> dict[str, Any]:
        with trio.fail_after(10):
            frame: dict[str, Any] = json.loads(await self.ws.get_message())
            return frame

    async def receive_type(self, kind: str) -> dict[str, Any]:
        while True:
            frame = await self.receive()
            if frame["type"] == kind:
                return frame

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        await self.ws.send_message(json.dumps(frame))
        while True:
            reply = await self.receive()
            if reply["type"] not in ("message", "join", "leave"):
                return reply

    async def closed(self) -> tuple[int, str]:
        with trio.fail_after(10):
            try:
                while True:
                    await self.ws.get_message()
            except ConnectionClosed as exc:
                assert exc.reason is not None
                return exc.reason.code, exc.reason.reason or ""


@asynccontextmanager
async def ws_client(server: triows.Server, user: str, **claims: Any) -> AsyncIterator[Ws]:
    url = f"ws://127.0.0.1:{server.port}/?token={make_token(user, **claims)}"
    async with open_websocket_url(url) as ws:
        client = Ws(ws)
        client.client_id = (await client.receive())["data"]["clientId"]
        yield client


async def post(http: httpx.AsyncClient, path: str, body: Any) -> tuple[int, Any]:
    # ASCII JSON (escapes): httpx's own encoder cannot write a lone surrogate.
    response = await http.post(path, content=json.dumps(body).encode())
    return response.status_code, response.json()


async def test_each_endpoint_in_process() -> None:
    channel = channel_name()
    async with nodes(1, presence=["ctl-*"]) as (server,), api(server) as http:
        async with ws_client(server, "alice", info={"name": "Alice"}) as alice:
            async with ws_client(server, "bob") as bob:
                await alice.request({"type": "subscribe", "channel": channel})
                for n in range(3):
                    status, _ = await post(http, "/api/publish", {"channel": channel, "data": n})
                    assert status == 200
                delivered = [await alice.receive_type("message") for _ in range(3)]
                status, page = await post(
                    http, "/api/history", {"channel": channel, "limit": 2, "reverse": True}
                )
                assert status == 200
                assert page["messages"] == delivered[:0:-1]
                assert page["seq"] == 3
                status, state = await post(http, "/api/channel", {"channel": channel})
                assert (status, state["seq"], state["subscribers"]) == (200, 3, 1)
                assert state["epoch"] == page["epoch"]
                status, found = await post(http, "/api/presence", {"channel": channel})
                assert status == 200
                assert found["members"] == [
                    {"clientId": alice.client_id, "userId": "alice", "info": {"name": "Alice"}}
                ]
                listed = (await http.get("/api/channels")).json()
                assert {c["channel"]: c["subscribers"] for c in listed["channels"]} == {channel: 1}
                status, body = await post(
                    http, "/api/subscribe", {"client": bob.client_id, "channel": channel}
                )
                assert (status, body) == (200, {"subscribed": 1})
                reply = await bob.receive()
                assert (reply["type"], reply["channel"], reply["server"]) == (
                    "subscribed",
                    channel,
                    True,
                )
                status, body = await post(
                    http, "/api/unsubscribe", {"user": "bob", "channel": channel, "reason": "r"}
                )
                assert (status, body) == (200, {"unsubscribed": 1})
                assert await bob.receive() == {
                    "type": "unsubscribed",
                    "channel": channel,
                    "reason": "r",
                }
                status, body = await post(
                    http, "/api/disconnect", {"user": "bob", "code": 4000, "reason": "again"}
                )
                assert (status, body) == (200, {"disconnected": 1})
                assert await bob.closed() == (4000, "again")
            status, body = await post(http, "/api/revoke", {"user": "alice"})
            assert (status, body) == (200, {"disconnected": 1})
            assert await alice.closed() == (4601, "token revoked")


BAD_BODIES = [
    ("/api/disconnect", {}, "exactly one of 'user' and 'client'"),
    ("/api/disconnect", {"user": "bob", "client": "x"}, "exactly one"),
    ("/api/disconnect", {"user": "bob", "extra": 1}, "unknown field 'extra'"),
    ("/api/disconnect", {"user": "bob", "code": 1000}, "code must be"),
    ("/api/disconnect", {"user": "bob", "code": 4501}, "code must be"),
    ("/api/disconnect", {"user": "bob", "reason": "x" * 500}, "reason"),
    ("/api/disconnect", {"user": 5}, "'user' must be a string"),
    ("/api/revoke", {"user": "bob\ud800"}, "lone surrogate"),  # no UTF-8 form: no Redis key
    ("/api/disconnect", {"client": "\udfff"}, "lone surrogate"),
    ("/api/disconnect", {"user": "bob", "reason": "\ud800"}, "reason"),
    ("/api/unsubscribe", {"user": "bob"}, "missing field 'channel'"),
    ("/api/unsubscribe", {"user": "bob", "channel": "a b"}, "channel name"),
    ("/api/subscribe", {"channel": "ok"}, "exactly one"),
    ("/api/subscribe", {"user": "bob", "channel": "*"}, "channel name"),
    ("/api/revoke", {}, "missing field 'user'"),
    ("/api/revoke", {"user": "bob", "before": "now"}, "unix seconds"),
    ("/api/revoke", {"user": "bob", "before": 1e10}, "seconds after now"),  # year 2286
    ("/api/history", {"channel": "ok", "limit": 1001}, "cap"),
    ("/api/history", {"channel": "ok", "reverse": "yes"}, "reverse"),
    ("/api/history", {"channel": "ok", "since": -1}, "since"),
    ("/api/channel", {"channel": "ok", "seq": 1}, "unknown field 'seq'"),
    ("/api/presence", {"channel": "ok"}, "presence is off"),
]


async def test_bad_input_is_400_with_the_reason_and_changes_nothing() -> None:
    async with nodes(1) as (server,), api(server) as http:
        async with ws_client(server, "bob") as bob:
            await bob.request({"type": "subscribe", "channel": "ok"})
            for path, body, reason in BAD_BODIES:
                status, answer = await post(http, path, body)
                assert status == 400, (path, body, answer)
                assert reason in answer["error"], (path, body, answer)
            # Not JSON, not an object.
            response = await http.post("/api/disconnect", content=b"[1]")
            assert response.status_code == 400
            # Nothing was applied: bob is still connected and subscribed, not revoked.
            assert (await bob.request({"type": "ping"}))["type"] == "pong"
            state = (await http.post("/api/channel", json={"channel": "ok"})).json()
            assert state["subscribers"] == 1
            assert len(server.access.revocations) == 0
        # Without the key: 401, nothing done.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as anonymous:
            response = await anonymous.post("/api/disconnect", json={"user": "bob"})
            assert response.status_code == 401


async def test_each_endpoint_acts_on_the_whole_cluster(shared_redis_url: str) -> None:
    """Asked on node B, acting on (and reading) what node A holds; on one Redis and on a
    Redis Cluster."""
    redis_url = shared_redis_url
    channel = channel_name()
    alice_name = channel_name("alice")  # its revocation stays in the session's Redis
    async with nodes(2, redis_url=redis_url, presence=["ctl-*"]) as (a, b), api(b) as http:
        async with ws_client(a, alice_name, info={"name": "Alice"}) as alice:
            await alice.request({"type": "subscribe", "channel": channel})
            async with ws_client(a, "carol") as carol:
                for n in range(3):
                    status, _ = await post(http, "/api/publish", {"channel": channel, "data": n})
                    assert status == 200
                delivered = [await alice.receive_type("message") for _ in range(3)]
                status, page = await post(http, "/api/history", {"channel": channel, "since": 1})
                assert (status, page["messages"]) == (200, delivered[1:])
                status, state = await post(http, "/api/channel", {"channel": channel})
                assert (status, state["seq"], state["subscribers"]) == (200, 3, 1)
                status, found = await post(http, "/api/presence", {"channel": channel})
                assert status == 200
                assert [m["info"] for m in found["members"]] == [{"name": "Alice"}]
                listed = (await http.get("/api/channels")).json()["channels"]
                assert {"channel": channel, "subscribers": 1, "seq": 3} in [
                    {k: c[k] for k in ("channel", "subscribers", "seq")} for c in listed
                ]
                status, body = await post(
                    http, "/api/subscribe", {"user": "carol", "channel": channel}
                )
                assert (status, body) == (200, {"subscribed": 1})
                reply = await carol.receive()
                assert (reply["type"], reply["server"]) == ("subscribed", True)
                status, body = await post(
                    http, "/api/unsubscribe", {"user": "carol", "channel": channel}
                )
                assert (status, body) == (200, {"unsubscribed": 1})
                assert (await carol.receive_type("unsubscribed"))["channel"] == channel
                status, body = await post(http, "/api/disconnect", {"client": carol.client_id})
                assert (status, body) == (200, {"disconnected": 1})
                assert (await carol.closed())[0] == 4600
            status, body = await post(http, "/api/revoke", {"user": alice_name})
            assert (status, body) == (200, {"disconnected": 1})
            assert await alice.closed() == (4601, "token revoked")
        # The revocation holds on every node: a's handshake refuses the old token...
        old = int(time.time()) - 5
        with pytest.raises(ConnectionRejected) as refused:
            async with ws_client(a, alice_name, iat=old):
                pass
        assert refused.value.status_code == 401
    # ... and on a node started after it (kept in Redis), which takes a newer token.
    async with nodes(1, redis_url=redis_url) as (late,):
        assert len(late.access.revocations) >= 1
        with pytest.raises(ConnectionRejected) as refused:
            async with ws_client(late, alice_name, iat=old):
                pass
        assert refused.value.status_code == 401
        async with ws_client(late, alice_name, iat=int(time.time()) + 5) as again:
            assert (await again.request({"type": "ping"}))["type"] == "pong"


async def test_a_node_that_does_not_answer_is_left_out_in_bounded_time(
    shared_redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A node that got the control request (it holds the control channel) but never answers
    costs the request half of handshake_timeout, not the request: the others' total comes.
    On one Redis and on a cluster (where the mute one listens on the first master)."""
    redis_url = shared_redis_url
    import redis

    from triows._brokers.redis.control import CONTROL_CHANNEL

    mute = redis.Redis.from_url(redis_url)
    listener = mute.pubsub()
    listener.subscribe(CONTROL_CHANNEL)  # a "node" that hears requests and never answers
    try:
        async with (
            nodes(1, redis_url=redis_url, handshake_timeout=2) as (server,),
            api(server) as http,
        ):
            async with ws_client(server, channel_name("dora")) as dora:
                user = "nobody-" + channel_name()
                status, body = await post(http, "/api/disconnect", {"client": dora.client_id})
                assert (status, body) == (200, {"disconnected": 1})
                assert await dora.closed() == (4600, "disconnected by the server")
                # It waited for the mute node (half of handshake_timeout), and said so.
                assert "disconnect: 1 of 2 nodes answered in 1s" in caplog.text
                status, body = await post(http, "/api/disconnect", {"user": user})
                assert (status, body) == (200, {"disconnected": 0})
    finally:
        listener.close()
        mute.close()


async def test_a_revoke_refused_as_full_is_kept_nowhere(redis_url: str) -> None:
    """503 "nothing revoked" when the revocations are full: it was stored in Redis before
    the nodes were asked, so a node started later (and the other nodes) refused the user's
    tokens after all."""
    import redis

    from triows._brokers.redis.control import REVOKED_PREFIX

    users = [channel_name("full") for _ in range(3)]
    async with nodes(2, redis_url=redis_url) as (a, b), api(b) as http:
        for server in (a, b):
            revocations = server.access.revocations
            revocations.max_entries = len(revocations) + 2
        for user in users[:2]:
            assert (await post(http, "/api/revoke", {"user": user}))[0] == 200
        status, body = await post(http, "/api/revoke", {"user": users[2]})
        assert status == 503
        assert "revoked already" in body["error"]
        assert not a.access.revocations.revoked(users[2], {}, time.time())
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.exists(REVOKED_PREFIX + users[0])
        assert not client.exists(REVOKED_PREFIX + users[2])
    finally:
        client.close()


async def test_a_pattern_subscriber_watching_redis_is_not_waited_for(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator watching every channel (``redis-cli psubscribe '*'``) gets each control
    request too, and PUBLISH counts it as a receiver: every request waited half of
    handshake_timeout for an answer that never comes."""
    import redis

    watcher = redis.Redis.from_url(redis_url).pubsub()
    watcher.psubscribe("*")
    try:
        async with (
            nodes(2, redis_url=redis_url, handshake_timeout=2) as (a, b),
            api(a) as http,
        ):
            async with ws_client(b, channel_name("erin")) as erin:
                status, body = await post(http, "/api/disconnect", {"client": erin.client_id})
                assert (status, body) == (200, {"disconnected": 1})
        assert "nodes answered" not in caplog.text
    finally:
        watcher.close()


async def test_on_a_cluster_every_node_is_waited_for_whichever_redis_node_it_talks_to(
    tmp_path: Path,
) -> None:
    """On a Redis Cluster PUBLISH counts only the subscribers of the Redis node that ran it
    (the cluster bus carries the message to the others). With four masters the control
    channel's slot (5416) is not on the node the listeners hold their classic connection to
    (the first master, slot 0's): the asking node must still wait for every node's answer."""
    cluster = RedisClusterNodes(tmp_path, masters=4)
    try:
        await trio.to_thread.run_sync(cluster.start)
        channel = channel_name()
        async with nodes(2, redis_url=cluster.url) as (a, b), api(b) as http:
            async with ws_client(a, channel_name("erin")) as erin:
                await erin.request({"type": "subscribe", "channel": channel})
                status, body = await post(http, "/api/disconnect", {"client": erin.client_id})
                assert (status, body) == (200, {"disconnected": 1})
                assert (await erin.closed())[0] == 4600
    finally:
        cluster.stop()


async def test_a_control_request_whose_publish_timed_out_is_unknown_not_unreachable(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis ran the PUBLISH of a control request but its answer timed out: every node got
    it and acted (the user was disconnected). It was answered "Redis is unreachable"."""
    import redis

    from triows._brokers.redis import control

    ask = control._ask

    def slow_ask(data: bytes, client: redis.Redis) -> int:
        ask(data, client)
        raise redis.TimeoutError("Timeout reading from socket")

    async with nodes(1, redis_url=redis_url) as (server,):
        user = channel_name("zed")
        async with ws_client(server, user) as zed:
            monkeypatch.setattr(control, "_ask", slow_ask)
            with pytest.raises(triows.OutcomeUnknownError):
                await server.disconnect(user=user)
            assert await zed.closed() == (4600, "disconnected by the server")  # it happened
