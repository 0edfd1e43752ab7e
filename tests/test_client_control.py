"""triows.client and issue 22: rewind, history, info in presence, and what the server does to
a client (unsubscribe, subscribe, disconnect with a code), in virtual time on in-memory
streams."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from triows import client as wsclient
from triows.testing import open_test_server

from .conftest import SECRET, make_token

URL = "ws://triows.test/"


async def test_rewind_history_and_presence_info(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(jwt_secret=SECRET, presence=["room"]) as harness:
        connect = harness.listener.connect
        alice_token = make_token("alice", info={"name": "Alice"})
        async with (
            wsclient.connect(URL, token=alice_token, open_stream=connect) as alice,
            wsclient.connect(URL, token=make_token("bob"), open_stream=connect) as bob,
        ):
            for n in range(5):
                await alice.publish("room", n)
            subscription = await bob.subscribe("room", rewind=3)
            got = [await subscription.__anext__() for _ in range(3)]
            assert [(e.seq, e.data) for e in got] == [(3, 2), (4, 3), (5, 4)]  # type: ignore[union-attr]
            await alice.publish("room", "live")
            live = await subscription.__anext__()
            assert isinstance(live, wsclient.Message)
            assert (live.seq, live.data) == (6, "live")
            page = await bob.history("room", limit=2, reverse=True, since=5)
            assert [m.seq for m in page.messages] == [4, 3]
            assert page.seq == 6
            assert page.epoch == live.id.split(":")[0]  # type: ignore[union-attr]
            with pytest.raises(wsclient.RequestError) as refused:
                await bob.history("room", limit=5000)
            assert refused.value.code == 400
            await alice.subscribe("room")
            joined = await subscription.__anext__()
            assert isinstance(joined, wsclient.Join)
            assert (joined.user_id, joined.info) == ("alice", {"name": "Alice"})
            found = await bob.presence("room")
            assert found.info == {alice.client_id: {"name": "Alice"}}


async def test_what_the_server_does_to_a_client(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(jwt_secret=SECRET) as harness:
        server = harness.server
        connect = harness.listener.connect
        async with wsclient.connect(URL, token=make_token("bob"), open_stream=connect) as bob:
            await bob.wait_open()
            assert await server.subscribe("news", user="bob") == 1
            offered = await bob.server_subscription()
            assert offered.channel == "news"
            assert bob.subscription("news") is offered
            await server.publish("news", "hello")
            message = await offered.__anext__()
            assert isinstance(message, wsclient.Message)
            assert message.data == "hello"
            assert await server.unsubscribe("news", user="bob", reason="plan expired") == 1
            with pytest.raises(wsclient.UnsubscribedError) as ended:
                await offered.__anext__()
            assert ended.value.reason == "plan expired"
            # 4000-4499: the client connects again.
            connects = bob.connects
            assert await server.disconnect(user="bob", code=4000, reason="come back") == 1
            with trio.fail_after(30):
                await bob.state.wait_value(lambda v: v is not wsclient.ClientState.OPEN)
                await bob.wait_open()
            assert bob.connects == connects + 1
            assert (bob.close_code, bob.close_reason) == (4000, "come back")
            # 4500-4999: it stops, and says why.
            assert await server.disconnect(user="bob", reason="banned") == 1
            with trio.fail_after(30):
                await bob.state.wait_value(wsclient.ClientState.CLOSED)
            assert (bob.close_code, bob.close_reason) == (4600, "banned")
            with pytest.raises(wsclient.ClientClosedError, match="4600"):
                await bob.publish("news", 1)


async def test_a_disconnect_before_the_welcome_is_reported(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revoke served during the handshake closes the connection with 4601 before its
    welcome: the client stopped ("do not reconnect") but kept no close_code, unlike the same
    close after the welcome (tests/vectors/retry.json, "disconnects", for triows.js too)."""
    from triows._net.streams import PendingHandshake

    async with open_test_server(jwt_secret=SECRET) as harness:
        server = harness.server
        write_101 = PendingHandshake.accept

        async def revoked_meanwhile(self: PendingHandshake, greeting: Any = None) -> object:
            await server.revoke("alice", before=time.time() + 1)
            return await write_101(self, greeting)

        monkeypatch.setattr(PendingHandshake, "accept", revoked_meanwhile)
        token = make_token("alice", iat=int(time.time()) - 60)
        async with wsclient.connect(URL, token=token, open_stream=harness.listener.connect) as c:
            with trio.fail_after(30):
                await c.state.wait_value(wsclient.ClientState.CLOSED)
            assert (c.close_code, c.close_reason) == (4601, "token revoked")
            assert c.connects == 0
            with pytest.raises(wsclient.ClientClosedError, match="4601"):
                await c.publish("news", 1)
