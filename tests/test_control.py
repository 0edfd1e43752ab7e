"""Issue 22 in process, as clients see it: rewind, history, connection info in presence, and
the application's hands on connections (Server.disconnect, unsubscribe, subscribe, revoke,
history, channel, channel_presence), in virtual time."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected

from triows import Principal
from triows.testing import TestClient, open_test_server

SECRET = "s" * 32


def token(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")


async def publish(client: TestClient, channel: str, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        ack = await client.request({"type": "publish", "channel": channel, "data": n, "id": n})
        assert ack["type"] == "ack"


# -- rewind -------------------------------------------------------------------------------------


async def test_rewind_replays_the_last_n_in_order_then_live(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(history_size=50) as harness:
        async with harness.connect() as pub, harness.connect() as late:
            await publish(pub, "chat", 30)
            reply = await late.request(
                {"type": "subscribe", "channel": "chat", "rewind": 20, "id": "s"}
            )
            assert reply["type"] == "subscribed"
            assert (reply["seq"], reply["rewound"]) == (30, 20)
            assert "recovered" not in reply
            rewound = [await late.receive() for _ in range(20)]
            assert [m["seq"] for m in rewound] == list(range(11, 31))
            assert [m["data"] for m in rewound] == list(range(10, 30))
            await publish(pub, "chat", 1, start=30)
            live = await late.receive()
            assert (live["seq"], live["data"]) == (31, 30)


async def test_rewind_is_bounded_by_history_and_since_wins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(history_size=5) as harness:
        async with harness.connect() as pub, harness.connect() as a, harness.connect() as b:
            await publish(pub, "chat", 8)
            reply = await a.request({"type": "subscribe", "channel": "chat", "rewind": 100})
            assert reply["rewound"] == 5
            assert [(await a.receive())["seq"] for _ in range(5)] == [4, 5, 6, 7, 8]
            # With since, the resume wins: no "rewound", the resume's fields.
            reply = await b.request(
                {
                    "type": "subscribe",
                    "channel": "chat",
                    "rewind": 100,
                    "since": 7,
                    "epoch": reply["epoch"],
                }
            )
            assert reply["recovered"] is True
            assert "rewound" not in reply
            assert (await b.receive())["seq"] == 8
            # rewind 0 on a quiet channel: nothing rewound, said so.
            reply = await b.request({"type": "subscribe", "channel": "quiet", "rewind": 0})
            assert reply["rewound"] == 0
            bad = await b.request({"type": "subscribe", "channel": "x", "rewind": -1, "id": 1})
            assert bad["code"] == 400
            assert "rewind" in bad["message"]


# -- history ------------------------------------------------------------------------------------


async def test_history_pages_both_ways_with_messages_as_delivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(history_size=50) as harness:
        async with harness.connect() as pub, harness.connect() as sub, harness.connect() as c:
            await sub.request({"type": "subscribe", "channel": "room"})
            await publish(pub, "room", 10)
            delivered = [await sub.receive() for _ in range(10)]
            page = await c.request({"type": "history", "channel": "room", "limit": 4, "id": "h"})
            assert page["type"] == "history"
            assert page["id"] == "h"
            assert (page["seq"], page["epoch"]) == (10, delivered[0]["id"].split(":")[0])
            assert page["messages"] == delivered[:4]
            page = await c.request({"type": "history", "channel": "room", "limit": 4, "since": 4})
            assert page["messages"] == delivered[4:8]
            older = await c.request(
                {"type": "history", "channel": "room", "limit": 3, "reverse": True}
            )
            assert [m["seq"] for m in older["messages"]] == [10, 9, 8]
            older = await c.request(
                {"type": "history", "channel": "room", "limit": 3, "reverse": True, "since": 8}
            )
            assert older["messages"] == delivered[6:3:-1]
            empty = await c.request({"type": "history", "channel": "never"})
            assert empty == {
                "type": "history",
                "channel": "never",
                "epoch": None,
                "seq": 0,
                "messages": [],
            }
            for bad in ({"limit": 1001}, {"limit": 0}, {"reverse": 1}, {"since": -1}):
                error = await c.request({"type": "history", "channel": "room", **bad, "id": 9})
                assert (error["type"], error["code"]) == ("error", 400), bad
            assert (
                "cap"
                in (await c.request({"type": "history", "channel": "room", "limit": 5000}))[
                    "message"
                ]
            )


async def test_history_needs_subscribe_permission(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(jwt_secret=SECRET) as harness:
        async with harness.connect(token=token("u", channels=["public.*"])) as client:
            refused = await client.request({"type": "history", "channel": "secret", "id": 1})
            assert (refused["type"], refused["code"]) == ("error", 403)
            allowed = await client.request({"type": "history", "channel": "public.a"})
            assert allowed["type"] == "history"


# -- info in presence ---------------------------------------------------------------------------


async def test_info_from_the_token_is_in_presence_and_joins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(jwt_secret=SECRET, presence=["room"]) as harness:
        alice_token = token("alice", info={"name": "Alice"})
        async with harness.connect(token=alice_token) as alice:
            await alice.request({"type": "subscribe", "channel": "room"})
            async with harness.connect(token=token("bob")) as bob:
                await bob.request({"type": "subscribe", "channel": "room"})
                join = await alice.receive_type("join")
                assert join["userId"] == "bob"
                assert "info" not in join
                answer = await bob.request({"type": "presence", "channel": "room"})
                by_user = {m["userId"]: m for m in answer["members"]}
                assert by_user["alice"]["info"] == {"name": "Alice"}
                async with harness.connect(token=token("carol", info={"name": "C"})) as carol:
                    await carol.request({"type": "subscribe", "channel": "room"})
                    join = await bob.receive_type("join")
                    assert join["info"] == {"name": "C"}
                leave = await bob.receive_type("leave")
                assert leave["info"] == {"name": "C"}
        with pytest.raises(ConnectionRejected) as refused:
            async with harness.connect(token=token("x", info=["not", "an", "object"])):
                pass
        assert refused.value.status_code == 401
        with pytest.raises(ConnectionRejected):
            async with harness.connect(token=token("x", info={"name": "x" * 2000})):
                pass
        stats = harness.server.statistics()
        assert stats.rejected == {401: 2}


def test_a_principals_info_is_checked() -> None:
    assert Principal(user_id="u", info={"name": "n"}).info == {"name": "n"}
    with pytest.raises(ValueError, match="JSON object"):
        Principal(info="alice")
    with pytest.raises(ValueError, match="1024"):
        Principal(info={"a": "b" * 1100})


# -- the server's hands on connections ----------------------------------------------------------


async def test_disconnect_by_user_and_by_client(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(jwt_secret=SECRET) as harness:
        server = harness.server
        async with (
            harness.connect(token=token("alice")) as a1,
            harness.connect(token=token("alice")) as a2,
            harness.connect(token=token("bob")) as bob,
        ):
            assert await server.disconnect(user="alice", reason="logged out") == 2
            assert await a1.wait_closed() == (4600, "logged out")
            assert await a2.wait_closed() == (4600, "logged out")
            assert await server.disconnect(user="alice") == 0
            n = await server.disconnect(client=bob.client_id, code=4000, reason="role changed")
            assert n == 1
            assert await bob.wait_closed() == (4000, "role changed")
            for bad in (
                {},
                {"user": "a", "client": "b"},
                {"user": ""},
                {"user": "a", "code": 4429},
                {"user": "a", "code": 1000},
                {"user": "a", "reason": "r" * 200},
            ):
                with pytest.raises(ValueError, match=r"user|client|code|reason"):
                    await server.disconnect(**bad)


async def test_server_side_unsubscribe_and_subscribe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(jwt_secret=SECRET, history_size=10) as harness:
        server = harness.server
        async with (
            harness.connect(token=token("alice", channels=["own"])) as alice,
            harness.connect(token=token("pub")) as pub,
        ):
            await alice.request({"type": "subscribe", "channel": "own"})
            # A channel the token does not allow: the application may still subscribe her.
            assert await server.subscribe("news", user="alice") == 1
            reply = await alice.receive()
            assert reply["type"] == "subscribed"
            assert reply["server"] is True
            assert reply["channel"] == "news"
            assert "id" not in reply
            assert await server.subscribe("news", user="alice") == 0  # already
            await publish(pub, "news", 1)
            assert (await alice.receive())["data"] == 0
            n = await server.unsubscribe("news", user="alice", reason="plan expired")
            assert n == 1
            assert await alice.receive() == {
                "type": "unsubscribed",
                "channel": "news",
                "reason": "plan expired",
            }
            assert await server.unsubscribe("news", client=alice.client_id) == 0
            await publish(pub, "news", 1, start=1)
            await publish(pub, "own", 1)
            assert (await alice.receive())["channel"] == "own"  # nothing more of news
            with pytest.raises(ValueError, match="channel name"):
                await server.subscribe("bad name!", user="alice")


async def test_revoke_closes_and_refuses_older_tokens(
    autojump_clock: trio.testing.MockClock,
) -> None:
    now = time.time()
    async with open_test_server(jwt_secret=SECRET) as harness:
        server = harness.server
        old = token("alice", iat=int(now) - 60)
        async with harness.connect(token=old) as alice, harness.connect(token=token("bob")) as bob:
            assert await server.revoke("alice") == 1
            assert await alice.wait_closed() == (4601, "token revoked")
            with pytest.raises(ConnectionRejected) as refused:
                async with harness.connect(token=old):
                    pass
            assert refused.value.status_code == 401
            # A token issued after the revocation is good.
            async with harness.connect(token=token("alice", iat=int(now) + 5)) as again:
                refreshed = await again.request({"type": "refresh", "token": old, "id": 1})
                assert (refreshed["code"], refreshed["message"]) == (401, "token revoked")
                assert (await again.request({"type": "ping"}))["type"] == "pong"
            assert (await bob.request({"type": "ping"}))["type"] == "pong"
        with pytest.raises(ValueError, match="unix seconds"):
            await server.revoke("alice", before="yesterday")  # type: ignore[arg-type]


async def test_channel_state_history_and_presence_from_the_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(presence=["room"], history_size=10) as harness:
        server = harness.server
        async with harness.connect() as sub, harness.connect() as pub:
            await sub.request({"type": "subscribe", "channel": "room"})
            await publish(pub, "room", 3)
            state = await server.channel("room")
            assert (state.seq, state.subscribers) == (3, 1)
            assert state.epoch is not None
            page = await server.history("room", limit=2, reverse=True)
            assert [m["data"] for m in page.messages] == [2, 1]
            assert (page.seq, page.epoch) == (3, state.epoch)
            found = await server.channel_presence("room")
            assert found["count"] == 1
            assert found["members"][0]["clientId"] == sub.client_id
            listed = await server.channels()
            assert {c["channel"]: c["subscribers"] for c in listed} == {"room": 1}
            with pytest.raises(ValueError, match="presence is off"):
                await server.channel_presence("elsewhere")
            with pytest.raises(ValueError, match="cap"):
                await server.history("room", limit=100_000)


async def test_listing_many_channels_lets_the_others_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as harness:
        server = harness.server
        for n in range(5000):
            server.publish_nowait(f"c{n}", n)
        with trio.testing.assert_checkpoints():
            listed = await server.control.serve({"op": "channels"})
        assert len(listed["channels"]) == 5000


async def test_a_revoke_during_the_last_step_of_a_handshake_still_closes_it(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The handshake checks the revocations, then awaits (writing the 101), then registers the
    # connection: a revoke served in that await found no connection to close, and the token
    # checked just before it lived on.
    from triows._net.streams import PendingHandshake

    now = time.time()
    async with open_test_server(jwt_secret=SECRET) as harness:
        server = harness.server
        write_101 = PendingHandshake.accept
        answers = []

        async def revoked_meanwhile(self: PendingHandshake, greeting: Any = None) -> Any:
            answers.append(await server.revoke("alice"))
            return await write_101(self, greeting)

        monkeypatch.setattr(PendingHandshake, "accept", revoked_meanwhile)
        with pytest.raises(ConnectionClosed) as closed:
            async with harness.connect(token=token("alice", iat=int(now) - 60)):
                pass
        assert answers == [0]  # it was not registered yet
        leaf = closed.value
        assert leaf.reason is not None
        assert (leaf.reason.code, leaf.reason.reason) == (4601, "token revoked")
        assert server.statistics().connections == 0


async def test_merging_many_nodes_channels_lets_the_others_run(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each node's listing checkpoints, but the asking node merged every node's answer
    # (300,000 entries: a third of a second) in one step.
    async with open_test_server() as harness:
        control = harness.server.control
        answers = [{"channels": [[f"c{n}", 1, n, "e.1"] for n in range(5000)]} for _ in range(3)]

        async def every_node(request: dict[str, Any], answer_within: float) -> Any:
            return answers  # as a cluster answers: no checkpoint of its own

        monkeypatch.setattr(control._broker, "control", every_node)
        ticks = 0

        async def others() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(others)
            await trio.lowlevel.checkpoint()
            before = ticks
            listed = await control.channels()
            nursery.cancel_scope.cancel()
        assert {c["subscribers"] for c in listed} == {3}
        assert len(listed) == 5000
        assert ticks - before >= 15000 // 2000 - 1


async def test_a_server_subscribe_counts_what_it_queued_even_if_refused_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """docs/http.md: ``/api/subscribe``'s count is of subscriptions queued, not made; one
    refused when served (here at --max-subscriptions) is counted, and its client gets the
    error."""
    async with open_test_server(jwt_secret=SECRET, max_subscriptions=1) as harness:
        server = harness.server
        async with harness.connect(token=token("alice")) as alice:
            await alice.request({"type": "subscribe", "channel": "own"})
            assert await server.subscribe("news", user="alice") == 1
            refused = await alice.receive()
            assert (refused["type"], refused["code"]) == ("error", 429)
            assert (await server.channel("news")).subscribers == 0
