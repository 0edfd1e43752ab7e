"""Authentication before the upgrade, authorization per request, token expiry and refresh."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import trio

from triows import Action, HandshakeRequest, Principal, Rejected
from triows.testing import ConnectionRejected, open_test_server

from .conftest import SECRET, make_token


async def test_missing_or_bad_token_is_401_before_upgrade(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(jwt_secret=SECRET) as harness:
        for kwargs in (
            {},
            {"token": "garbage"},
            {"token": make_token(exp=time.time() - 5)},
            {"path": "/?token=garbage"},
        ):
            with pytest.raises(ConnectionRejected) as info:
                async with harness.connect(**kwargs):  # type: ignore[arg-type]
                    pass
            assert info.value.status_code == 401
        assert harness.server.statistics().rejected == {401: 4}
        assert harness.server.statistics().connections_total == 0


async def test_token_by_header_or_query(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(jwt_secret=SECRET) as harness:
        async with harness.connect(token=make_token("alice")) as a:
            assert a.welcome["type"] == "welcome"
        async with harness.connect(f"/ws?token={make_token('bob')}") as b:
            assert b.welcome["type"] == "welcome"
        users = {c.user_id for c in harness.server.connection_statistics()}
        assert users <= {"alice", "bob"}


async def test_channel_claims_restrict_subscribe_and_publish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    token = make_token(channels=["news.*"], publish=["chat"])
    async with open_test_server(jwt_secret=SECRET) as harness:
        async with harness.connect(token=token) as client:
            assert (await client.request({"type": "subscribe", "channel": "news.eu"}))[
                "type"
            ] == "subscribed"
            denied = await client.request({"type": "subscribe", "channel": "chat", "id": 1})
            assert (denied["type"], denied["code"], denied["id"]) == ("error", 403, 1)
            assert (
                await client.request({"type": "publish", "channel": "chat", "data": 1, "id": 2})
            )["type"] == "ack"
            denied = await client.request(
                {"type": "publish", "channel": "news.eu", "data": 1, "id": 3}
            )
            assert denied["code"] == 403


async def test_expired_token_closes_with_1008(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(jwt_secret=SECRET, heartbeat_interval=1000) as harness:
        async with harness.connect(token=make_token(exp=int(time.time()) + 60)) as client:
            start = trio.current_time()
            code, reason = await client.wait_closed()
            assert code == 1008
            assert reason == "Token expired"
            assert 55 <= trio.current_time() - start <= 61
        assert harness.server.statistics().closed_by_server == {1008: 1}


async def test_refresh_extends_expiry(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(
        jwt_secret=SECRET, heartbeat_interval=1000, idle_timeout=0
    ) as harness:
        async with harness.connect(token=make_token(exp=int(time.time()) + 60)) as client:
            start = trio.current_time()
            new_exp = int(time.time()) + 600
            reply = await client.request(
                {"type": "refresh", "token": make_token(exp=new_exp), "id": "r"}
            )
            assert reply == {"type": "refreshed", "exp": new_exp, "id": "r"}
            client.receive_timeout = 1000
            code, _ = await client.wait_closed()
            assert code == 1008
            assert trio.current_time() - start > 500


async def test_invalid_refresh_is_401_and_old_expiry_stands(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(jwt_secret=SECRET, heartbeat_interval=1000) as harness:
        async with harness.connect(token=make_token(exp=int(time.time()) + 60)) as client:
            start = trio.current_time()
            bad = await client.request({"type": "refresh", "token": "nope", "id": 1})
            assert (bad["code"], bad["id"]) == (401, 1)
            assert "nope" not in bad["message"]
            other_user = await client.request(
                {"type": "refresh", "token": make_token("mallory", exp=int(time.time()) + 600)}
            )
            assert other_user["code"] == 401
            code, _ = await client.wait_closed()
            assert code == 1008
            assert trio.current_time() - start <= 61


async def test_refresh_without_auth_is_400(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as harness:
        async with harness.connect() as client:
            reply = await client.request({"type": "refresh", "token": make_token()})
            assert reply["code"] == 400


async def test_origin_allow_list(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(allow_origins=["https://app.example"]) as harness:
        async with harness.connect(headers={"Origin": "https://app.example"}):
            pass
        async with harness.connect():  # non-browser clients send no Origin
            pass
        with pytest.raises(ConnectionRejected) as info:
            async with harness.connect(headers={"Origin": "https://evil.example"}):
                pass
        assert info.value.status_code == 403


async def test_custom_async_authenticate_and_authorize(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[str, str, str]] = []

    async def authenticate(request: HandshakeRequest) -> Principal | None:
        await trio.sleep(0.1)  # e.g. a database lookup
        if request.header("x-api-key") == "banned":
            raise Rejected(403, "banned")
        key = request.query.get("key")
        return Principal(user_id=key) if key else None

    async def authorize(principal: Principal, action: Action, channel: str) -> bool:
        seen.append((str(principal.user_id), str(action), channel))
        return channel.startswith(f"user.{principal.user_id}")

    async with open_test_server(authenticate=authenticate, authorize=authorize) as harness:
        async with harness.connect("/?key=42") as client:
            assert (await client.request({"type": "subscribe", "channel": "user.42.inbox"}))[
                "type"
            ] == "subscribed"
            assert (await client.request({"type": "subscribe", "channel": "user.7.inbox"}))[
                "code"
            ] == 403
        with pytest.raises(ConnectionRejected) as info:
            async with harness.connect():
                pass
        assert info.value.status_code == 401
        with pytest.raises(ConnectionRejected) as info:
            async with harness.connect("/?key=1", headers={"X-Api-Key": "banned"}):
                pass
        assert info.value.status_code == 403
    assert seen == [("42", "subscribe", "user.42.inbox"), ("42", "subscribe", "user.7.inbox")]


async def test_failing_hooks_are_contained(autojump_clock: trio.testing.MockClock) -> None:
    def authenticate(request: HandshakeRequest) -> Principal:
        if "boom" in request.path:
            raise RuntimeError("hook bug")
        return Principal(user_id="u")

    def authorize(principal: Principal, action: Action, channel: str) -> bool:
        if channel == "boom":
            raise RuntimeError("hook bug")
        return True

    async with open_test_server(authenticate=authenticate, authorize=authorize) as harness:
        with pytest.raises(ConnectionRejected) as info:
            async with harness.connect("/boom"):
                pass
        assert info.value.status_code == 500
        async with harness.connect() as client:
            reply = await client.request({"type": "subscribe", "channel": "boom", "id": 1})
            assert (reply["code"], reply["id"]) == (500, 1)
            assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_slow_authenticate_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async def authenticate(request: HandshakeRequest) -> Principal:
        await trio.sleep_forever()
        raise AssertionError

    async with open_test_server(authenticate=authenticate, handshake_timeout=3) as harness:
        with pytest.raises(ConnectionRejected) as info:
            async with harness.connect():
                pass
        assert info.value.status_code == 503


async def test_refresh_that_narrows_channels_unsubscribes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(jwt_secret=SECRET) as harness:
        async with harness.connect(token=make_token(channels=["a", "b"])) as client:
            for channel in ("a", "b"):
                await client.request({"type": "subscribe", "channel": channel})
            reply = await client.request(
                {"type": "refresh", "token": make_token(channels=["a"]), "id": 1}
            )
            assert reply["type"] == "refreshed"
            notice = await client.receive()
            assert (notice["type"], notice["channel"]) == ("unsubscribed", "b")
            assert "reason" in notice
            (stats,) = harness.server.connection_statistics()
            assert stats.subscriptions == ("a",)


async def test_refresh_asks_the_authorize_hook_again_for_held_subscriptions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The hook decides on the new principal's claims (say, a plan that was downgraded)."""

    def authorize(principal: Principal, action: Action, channel: str) -> bool:
        return channel != "premium" or principal.claims.get("plan") == "pro"

    async with open_test_server(jwt_secret=SECRET, authorize=authorize) as harness:
        async with harness.connect(token=make_token(plan="pro")) as client:
            for channel in ("premium", "free"):
                await client.request({"type": "subscribe", "channel": channel})
            reply = await client.request(
                {"type": "refresh", "token": make_token(plan="basic"), "id": 1}
            )
            assert reply["type"] == "refreshed"
            notice = await client.receive()
            assert (notice["type"], notice["channel"]) == ("unsubscribed", "premium")
            (stats,) = harness.server.connection_statistics()
            assert stats.subscriptions == ("free",)


async def test_jwt_audience_issuer_and_not_before_at_the_handshake(
    autojump_clock: trio.testing.MockClock,
) -> None:
    now = int(time.time())
    async with open_test_server(
        jwt_secret=SECRET, jwt_audience="chat", jwt_issuer="id", jwt_leeway=5
    ) as harness:
        async with harness.connect(token=make_token(aud="chat", iss="id", nbf=now + 3)):
            pass  # within the leeway
        refused: list[dict[str, Any]] = [
            {"aud": "other", "iss": "id"},
            {"aud": "chat"},
            {"aud": "chat", "iss": "id", "nbf": now + 60},
        ]
        for claims in refused:
            with pytest.raises(ConnectionRejected) as info:
                async with harness.connect(token=make_token("alice", **claims)):
                    pass
            assert info.value.status_code == 401


def test_a_logged_handshake_request_shows_no_token() -> None:
    request = HandshakeRequest(
        path="/",
        query={"token": "secret-query-token"},
        headers={"authorization": "Bearer secret-header-token", "origin": "https://a"},
        remote="127.0.0.1:5",
    )
    text = repr(request)
    assert "secret" not in text
    assert "authorization" in text
    assert "token" in text  # the key is shown, not its value
    assert request.header("authorization") == "Bearer secret-header-token"


async def test_the_handshake_request_is_not_kept_once_the_connection_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An idle connection holds nothing of its handshake: not its headers, not its query."""
    import gc
    import weakref

    seen: list[weakref.ref[HandshakeRequest]] = []

    def authenticate(request: HandshakeRequest) -> Principal:
        seen.append(weakref.ref(request))
        return Principal(user_id="u")

    async with open_test_server(authenticate=authenticate) as harness:
        async with harness.connect("/?token=secret") as client:
            assert (await client.request({"type": "ping"}))["type"] == "pong"
            gc.collect()
            assert seen
            assert seen[0]() is None


async def test_an_authorize_hook_that_times_out_on_refresh_keeps_the_subscription(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A timeout is not a "no": the subscription stays, and the log says why."""
    slow: set[str] = set()

    async def authorize(principal: Principal, action: Action, channel: str) -> bool:
        if channel in slow:
            await trio.sleep_forever()
        return True

    async with open_test_server(
        jwt_secret=SECRET, authorize=authorize, handshake_timeout=2
    ) as harness:
        async with harness.connect(token=make_token()) as client:
            for channel in ("slow", "fine"):
                await client.request({"type": "subscribe", "channel": channel})
            slow.add("slow")
            reply = await client.request({"type": "refresh", "token": make_token(), "id": 1})
            assert reply["type"] == "refreshed"
            await trio.sleep(5)
            (stats,) = harness.server.connection_statistics()
            assert sorted(stats.subscriptions) == ["fine", "slow"]
            assert "kept" in caplog.text
            # A subscribe that times out is answered 503 "try again", not refused.
            refused = await client.request({"type": "subscribe", "channel": "slow", "id": 2})
            assert (refused["type"], refused["code"]) == ("error", 503)


async def test_a_client_flushing_its_offline_queue_behind_an_async_hook_is_not_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def authorize(principal: Principal, action: Action, channel: str) -> bool:
        await trio.sleep(0.001)  # a lookup that waits
        return True

    async with open_test_server(authorize=authorize) as harness:
        async with harness.connect(message_queue_size=500) as client:
            for n in range(200):  # as a client that was offline sends its queue
                await client.send({"type": "publish", "channel": "c", "data": n, "id": n})
            replies = [await client.receive() for _ in range(200)]
            assert [r["type"] for r in replies] == ["ack"] * 200


@pytest.mark.parametrize(
    ("options", "offsets", "accepted"),
    [
        ({"jwt_require_exp": True}, {}, False),
        ({"jwt_require_exp": True}, {"exp": 60}, True),
        ({"jwt_max_age": 60}, {}, False),  # no iat: its age is unknown
        ({"jwt_max_age": 60}, {"iat": -30}, True),
        ({"jwt_max_age": 60}, {"iat": -90}, False),
        ({"jwt_max_age": 60, "jwt_leeway": 60}, {"iat": -90}, True),
    ],
)
async def test_tokens_without_expiry_or_too_old_can_be_refused(
    options: dict[str, Any], offsets: dict[str, float], accepted: bool
) -> None:
    # Times relative to now when the test runs (not when it was collected: a long suite
    # reaches it minutes later).
    claims = {name: time.time() + offset for name, offset in offsets.items()}
    async with open_test_server(jwt_secret=SECRET, **options) as harness:
        if accepted:
            async with harness.connect(token=make_token(**claims)):
                pass
        else:
            with pytest.raises(ConnectionRejected) as info:
                async with harness.connect(token=make_token(**claims)):
                    pass
            assert info.value.status_code == 401


async def test_a_refused_origin_is_named_in_the_log(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="triows.server")
    async with open_test_server(allow_origins=["https://app.example"]) as harness:
        with pytest.raises(ConnectionRejected):
            async with harness.connect(headers={"Origin": "https://evil.example"}):
                pass
    assert "'https://evil.example'" in caplog.text


@pytest.mark.parametrize("origin", ["app.example.com", "https://app.example.com/path", "//x"])
def test_an_origin_without_its_scheme_is_refused_at_start(origin: str) -> None:
    from triows import Config

    with pytest.raises(ValueError, match="allow_origins"):
        Config(allow_origins=[origin])
    assert Config(allow_origins=["https://app.example.com/", "*"]).allow_origins == (
        "https://app.example.com",
        "*",
    )


async def test_an_authenticate_hook_without_an_origin_list_is_warned_about(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    def authenticate(request: HandshakeRequest) -> Principal:
        return Principal(user_id=request.header("cookie"))

    async with open_test_server(authenticate=authenticate):
        pass
    assert "cross-site WebSocket hijacking" in caplog.text
    caplog.clear()
    async with open_test_server(authenticate=authenticate, allow_origins=["https://a.example"]):
        pass
    assert "hijacking" not in caplog.text


async def test_a_silent_hook_on_refresh_holds_the_connection_one_timeout_not_one_per_channel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    silent = False

    async def authorize(principal: Principal, action: Action, channel: str) -> bool:
        if silent:
            await trio.sleep_forever()
        return True

    async with open_test_server(
        jwt_secret=SECRET, authorize=authorize, handshake_timeout=1
    ) as harness:
        async with harness.connect(token=make_token()) as client:
            for n in range(8):
                await client.request({"type": "subscribe", "channel": f"c{n}"})
            silent = True
            start = trio.current_time()
            await client.send({"type": "refresh", "token": make_token(), "id": "r"})
            await client.send({"type": "ping", "id": "p"})
            replies = [await client.receive() for _ in range(2)]
            assert [r["type"] for r in replies] == ["refreshed", "pong"]
            assert trio.current_time() - start <= 1.5  # not 8 channels x 1 s
            (stats,) = harness.server.connection_statistics()
            assert len(stats.subscriptions) == 8  # no answer: all kept


async def test_a_handshake_whose_hook_answers_during_shutdown_is_refused_in_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def authenticate(request: HandshakeRequest) -> Principal:
        await trio.sleep(1)
        return Principal(user_id="late")

    async with trio.open_nursery() as nursery:
        async with open_test_server(authenticate=authenticate, shutdown_timeout=2) as harness:

            async def late_client() -> None:
                with pytest.raises(ConnectionRejected) as info:
                    async with harness.connect():
                        pass
                assert info.value.status_code == 503

            nursery.start_soon(late_client)
            await trio.sleep(0.5)  # the hook is deciding
            start = trio.current_time()
            await harness.server.aclose()
            assert trio.current_time() - start <= 2
