"""triows.api: the typed HTTP API client, sync and async.

Against a real server on loopback for the endpoints it has (publish, broadcast, channels), and
with httpx's MockTransport for the request and answer shapes of every endpoint, and for the
retry rule (what is retried, with which key, and what is raised at the end).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

import triows
from triows.api import (
    ApiError,
    AsyncClient,
    ChannelInfo,
    Client,
    HistoryPage,
    Member,
    Presence,
    PublishResult,
    RequestError,
    UnavailableError,
    UnknownOutcomeError,
)

KEY = "api-client-test-key-0123"


@asynccontextmanager
async def running_server(**overrides: Any) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        config = triows.Config(port=0, api_key=KEY, **overrides)
        server: triows.Server = await nursery.start(triows.serve, config)
        try:
            yield f"http://127.0.0.1:{server.port}"
        finally:
            await server.aclose()


@pytest.mark.real_socket
async def test_the_sync_client_against_a_real_server() -> None:
    async with running_server() as url:

        def use() -> None:
            with Client(url, KEY) as api:
                first = api.publish("news", {"headline": "hello"}, idempotency_key="k-1")
                assert first == PublishResult("news", 1, first.epoch)
                # The same key again: answered, not published twice.
                assert api.publish("news", {"headline": "hello"}, idempotency_key="k-1") == first
                assert api.publish("news", "other").seq == 2  # a key of its own, made here
                result = api.broadcast(["room.1", "room.2"], "maintenance")
                assert [(r.channel, r.seq) for r in result.results] == [
                    ("room.1", 1),
                    ("room.2", 1),
                ]
                listed = api.channels()
                assert listed.total == 3
                assert {c.channel: c.seq for c in listed.channels} == {
                    "news": 2,
                    "room.1": 1,
                    "room.2": 1,
                }
                assert api.channels(limit=1).total == 3
                assert len(api.channels(limit=1).channels) == 1
                with pytest.raises(RequestError) as bad:
                    api.publish("bad name!", 1)
                assert bad.value.status == 400
                assert "channel" in bad.value.reason
            with Client(url, "wrong-key-wrong-key") as wrong:
                with pytest.raises(RequestError) as refused:
                    wrong.channels()
                assert (refused.value.status, refused.value.reason) == (401, "wrong API key")

        with trio.fail_after(30):
            await trio.to_thread.run_sync(use)


@pytest.mark.real_socket
async def test_the_async_client_against_a_real_server_on_trio() -> None:
    async with running_server() as url:
        with trio.fail_after(30):
            async with AsyncClient(url, KEY) as api:
                published = await api.publish("news", [1, 2], idempotency_key="a-1")
                assert published.seq == 1
                assert (await api.publish("news", [1, 2], idempotency_key="a-1")).seq == 1
                result = await api.broadcast(["a", "b"], None, idempotency_key="b-1")
                assert [r.seq for r in result.results] == [1, 1]
                assert (await api.channels()).total == 3
                with pytest.raises(RequestError, match="must not repeat"):
                    await api.broadcast(["a", "a"], 1)


@pytest.mark.real_socket
async def test_a_server_that_is_not_there_is_unavailable_not_unknown() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"

    def use() -> None:
        with Client(url, KEY, retries=2, backoff=0) as api:
            with pytest.raises(UnavailableError) as info:
                api.publish("news", 1)
            # The connection was refused: the request never left, nothing was published.
            assert not isinstance(info.value, UnknownOutcomeError)
            assert info.value.status is None
            assert info.value.reason.startswith("no answer: ConnectError")

    with trio.fail_after(30):
        await trio.to_thread.run_sync(use)


# -- shapes and the retry rule, with httpx's MockTransport -----------------------------------


class Recorder:
    """A fake server: answers from a list (a status and body, or an exception to raise) and
    records what was asked."""

    def __init__(self, *answers: tuple[int, Any] | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    @property
    def bodies(self) -> list[Any]:
        return [json.loads(r.content) if r.content else None for r in self.requests]

    def last(self) -> tuple[str, str, Any]:
        request = self.requests[-1]
        body = json.loads(request.content) if request.content else None
        return request.method, request.url.path, body


@pytest.fixture
def fake() -> Iterator[Callable[..., tuple[Client, Recorder]]]:
    made: list[Client] = []

    def make(*answers: tuple[int, Any] | Exception, retries: int = 3) -> tuple[Client, Recorder]:
        recorder = Recorder(*answers)
        client = Client(
            "http://triows.test",
            KEY,
            retries=retries,
            backoff=0,
            transport=httpx.MockTransport(recorder),
        )
        made.append(client)
        return client, recorder

    yield make
    for client in made:
        client.close()


def test_every_endpoint_sends_its_shape_and_reads_its_answer(
    fake: Callable[..., tuple[Client, Recorder]],
) -> None:
    api, server = fake((200, {"disconnected": 2}))
    assert api.disconnect(user="alice", code=4501, reason="banned") == 2
    assert server.last() == (
        "POST",
        "/api/disconnect",
        {"user": "alice", "code": 4501, "reason": "banned"},
    )
    assert server.requests[-1].headers["x-api-key"] == KEY
    assert api.disconnect(client="Zx3abc") == 2
    assert server.last()[2] == {"client": "Zx3abc"}

    api, server = fake((200, {"unsubscribed": 1}))
    assert api.unsubscribe("room.1", user="bob", reason="kicked") == 1
    assert server.last() == (
        "POST",
        "/api/unsubscribe",
        {"channel": "room.1", "user": "bob", "reason": "kicked"},
    )

    api, server = fake((200, {"subscribed": 3}))
    assert api.subscribe("room.1", user="bob") == 3
    assert server.last() == ("POST", "/api/subscribe", {"channel": "room.1", "user": "bob"})

    api, server = fake((200, {"disconnected": 1}))
    assert api.revoke("mallory", before=1_800_000_000) == 1
    assert server.last() == ("POST", "/api/revoke", {"user": "mallory", "before": 1_800_000_000})
    assert api.revoke("mallory") == 1
    assert server.last()[2] == {"user": "mallory"}

    messages = [{"type": "message", "channel": "c", "seq": 4, "data": "x", "epoch": "e.1"}]
    api, server = fake((200, {"channel": "c", "epoch": "e.1", "seq": 9, "messages": messages}))
    page = api.history("c", limit=10, since=3, reverse=True)
    assert page == HistoryPage("c", "e.1", 9, tuple(messages))
    assert server.last() == (
        "POST",
        "/api/history",
        {"channel": "c", "limit": 10, "since": 3, "reverse": True},
    )
    api.history("c")
    assert server.last()[2] == {"channel": "c"}

    api, server = fake((200, {"channel": "c", "epoch": "e.1", "seq": 9, "subscribers": 2}))
    assert api.channel("c") == ChannelInfo("c", 2, 9, "e.1")
    assert server.last() == ("POST", "/api/channel", {"channel": "c"})

    members = [
        {"clientId": "A1", "userId": "alice", "info": {"name": "Alice"}},
        {"clientId": "B2", "userId": None},
    ]
    api, server = fake((200, {"channel": "room", "count": 2, "members": members}))
    assert api.presence("room") == Presence(
        "room", 2, (Member("A1", "alice", {"name": "Alice"}), Member("B2", None))
    )
    assert server.last() == ("POST", "/api/presence", {"channel": "room"})
    api, server = fake((200, {"channel": "room", "count": 700, "members": None}))
    assert api.presence("room") == Presence("room", 700, None)

    with pytest.raises(ValueError, match="exactly one of user= and client="):
        api.disconnect()
    with pytest.raises(ValueError, match="exactly one"):
        api.unsubscribe("c", user="a", client="b")


def test_the_servers_reason_is_in_the_error_and_refusals_are_not_retried(
    fake: Callable[..., tuple[Client, Recorder]],
) -> None:
    api, server = fake((400, {"error": "unknown field 'usr'"}))
    with pytest.raises(RequestError) as info:
        api.disconnect(user="alice")
    assert (info.value.status, info.value.reason) == (400, "unknown field 'usr'")
    assert len(server.requests) == 1
    api, server = fake((404, {"error": "the HTTP API is off: start the server with --api-key"}))
    with pytest.raises(RequestError, match="--api-key"):
        api.channels()
    api, server = fake((200, {"surprise": 1}))
    with pytest.raises(ApiError, match="no 'disconnected'"):
        api.disconnect(user="alice")
    api, server = fake((200, {"channel": "c", "count": "many", "members": None}))
    with pytest.raises(ApiError, match="'count'"):
        api.presence("c")


def test_retries_reuse_the_idempotency_key_until_an_answer(
    fake: Callable[..., tuple[Client, Recorder]],
) -> None:
    unknown = {"outcome": "unknown", "channel": "c", "error": "not numbered in time"}
    api, server = fake(
        httpx.ReadTimeout("no answer in time"),
        (503, {"error": "Redis unreachable and its buffer full"}),
        (202, unknown),
        (200, {"channel": "c", "seq": 7, "epoch": "e.1"}),
    )
    assert api.publish("c", {"x": 1}).seq == 7
    keys = [body["idempotency_key"] for body in server.bodies]
    assert len(keys) == 4
    assert len(set(keys)) == 1  # made once, sent with every try

    api, server = fake((202, unknown), retries=2)
    with pytest.raises(UnknownOutcomeError) as info:
        api.publish("c", 1, idempotency_key="order-42")
    assert info.value.idempotency_key == "order-42"
    assert (info.value.status, info.value.reason) == (202, "not numbered in time")
    assert [body["idempotency_key"] for body in server.bodies] == ["order-42"] * 3


def test_an_outcome_once_unknown_stays_unknown(
    fake: Callable[..., tuple[Client, Recorder]],
) -> None:
    """A try that may have published, then tries that found the server gone: the message
    may be out, so the error says "unknown" (with the key), not "unavailable"."""
    api, server = fake(
        httpx.RemoteProtocolError("server disconnected without sending a response"),
        httpx.ConnectError("connection refused"),
        retries=3,
    )
    with pytest.raises(UnknownOutcomeError) as info:
        api.publish("c", 1)
    assert info.value.idempotency_key == server.bodies[0]["idempotency_key"]
    assert "an earlier try may have published it" in info.value.reason
    assert len(server.requests) == 4
    # Never sent at all: unavailable, and a read is never "unknown".
    api, server = fake(httpx.ConnectError("connection refused"), retries=1)
    with pytest.raises(UnavailableError) as plain:
        api.publish("c", 1)
    assert type(plain.value) is UnavailableError
    api, server = fake(httpx.ReadTimeout("slow"), retries=1)
    with pytest.raises(UnavailableError) as read:
        api.channels()
    assert type(read.value) is UnavailableError


def test_a_broadcast_left_unknown_says_what_was_published(
    fake: Callable[..., tuple[Client, Recorder]],
) -> None:
    body = {
        "outcome": "unknown",
        "results": [{"channel": "a", "seq": 1, "epoch": "e"}],
        "unknown": ["b"],
        "not_published": ["c"],
        "error": "not numbered in time",
    }
    api, server = fake((202, body), retries=0)
    with pytest.raises(UnknownOutcomeError) as info:
        api.broadcast(["a", "b", "c"], "x", idempotency_key="bc-1")
    assert info.value.body["unknown"] == ["b"]
    assert info.value.body["not_published"] == ["c"]
    assert server.last() == (
        "POST",
        "/api/broadcast",
        {"channels": ["a", "b", "c"], "data": "x", "idempotency_key": "bc-1"},
    )


def test_a_proxy_page_is_an_error_with_its_text(
    fake: Callable[..., tuple[Client, Recorder]],
) -> None:
    api, _ = fake((502, "<html>Bad Gateway</html>"), retries=1)
    with pytest.raises(UnknownOutcomeError) as info:  # a proxy may have passed it on
        api.publish("c", 1)
    assert info.value.status == 502
    assert "Bad Gateway" in info.value.reason
    with pytest.raises(UnavailableError, match="Bad Gateway"):
        api.channel("c")


async def test_the_async_client_follows_the_same_rules() -> None:
    recorder = Recorder(
        (503, {"error": "busy"}),
        (200, {"channel": "c", "epoch": "e.1", "seq": 3, "subscribers": 0}),
    )
    transport = httpx.MockTransport(recorder)
    async with AsyncClient("http://x", KEY, backoff=0, transport=transport) as api:
        assert await api.channel("c") == ChannelInfo("c", 0, 3, "e.1")
        assert len(recorder.requests) == 2
        recorder.answers = [(202, {"outcome": "unknown", "error": "later"})]
        api.retries.retries = 1
        with pytest.raises(UnknownOutcomeError):
            await api.publish("c", 1, idempotency_key="k")
        assert [b["idempotency_key"] for b in recorder.bodies[2:]] == ["k", "k"]
        recorder.answers = [(200, {"unsubscribed": 0})]
        assert await api.unsubscribe("c", client="Zx") == 0


def test_an_api_key_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIOWS_API_KEY", raising=False)
    with pytest.raises(ValueError, match="TRIOWS_API_KEY"):
        Client("http://x")
    monkeypatch.setenv("TRIOWS_API_KEY", KEY)
    with Client("http://x") as api:
        assert api._http.headers["x-api-key"] == KEY


def test_triows_api_is_there_on_first_use() -> None:
    assert triows.api.Client is Client
    assert "api" in dir(triows)
