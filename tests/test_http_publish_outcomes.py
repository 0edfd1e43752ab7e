"""The HTTP publish API answers what happened, and "unknown" when it cannot know yet.

Once a publication is numbered it is published: the answer must never read as a failure then,
or a retry publishes it twice. So the API answers as soon as the publication has its number,
never waits for ``block`` subscribers in the request (they are waited for in the background,
and disconnected after ``block_timeout`` as always), and when its time runs out before the
number is known it answers 202 with ``"outcome": "unknown"`` and what it did publish.
Real sockets (httpx), real time, every wait bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

import triows
from triows.testing import MemoryListener, TestClient, TestServer

from .redisserver import RedisServer

pytestmark = pytest.mark.real_socket

KEY = "test-api-key-0123456789"
HEADERS = {"X-API-Key": KEY}


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[tuple[TestServer, httpx.AsyncClient]]:
    """A server on a TCP port (for httpx) and on a memory listener (for stalled clients)."""
    config = triows.Config(port=0, api_key=KEY, **overrides)
    memory = MemoryListener()
    async with trio.open_nursery() as nursery:
        tcp = list(await trio.open_tcp_listeners(0, host="127.0.0.1"))
        server: triows.Server = await nursery.start(
            lambda task_status: triows.serve(
                config, listeners=[*tcp, memory], task_status=task_status
            )
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            with trio.fail_after(30):
                yield TestServer(server, memory), http
        await server.aclose()


@asynccontextmanager
async def stalled_subscriber(harness: TestServer, channel: str) -> AsyncIterator[TestClient]:
    """A subscriber that stops reading: its socket, then its outbox fill up."""
    async with harness.connect(message_queue_size=1) as client:
        reply = await client.request({"type": "subscribe", "channel": channel, "id": 1})
        assert reply["type"] == "subscribed"
        yield client


BLOCKING = {
    "slow_consumer": "block",
    "outbox_size": 2,
    "handshake_timeout": 1.0,  # an HTTP request's whole time
    "block_timeout": 3.0,  # longer: waiting for the subscriber inside a request would time out
}


async def test_a_publish_is_answered_when_numbered_not_when_block_subscribers_have_room() -> None:
    big = "x" * 20_000
    async with running(**BLOCKING) as (harness, http):
        server = harness.server
        async with stalled_subscriber(harness, "slow"):
            seqs = []
            for n in range(12):  # the socket takes a few, the outbox two, then it is full
                body = {"channel": "slow", "data": big, "idempotency_key": f"k{n}"}
                answer = await http.post("/api/publish", json=body, headers=HEADERS)
                assert answer.status_code == 200, answer.text
                seqs.append(answer.json()["seq"])
            assert seqs == list(range(1, 13))
            # The block rule still holds, in the background: still full after block_timeout,
            # the subscriber is disconnected.
            with trio.fail_after(10):
                while server.fanout.slow_consumer_disconnects == 0:  # noqa: ASYNC110
                    await trio.sleep(0.05)
        assert server.http.api.blocked_waits == 0


async def test_a_broadcast_past_a_block_subscriber_answers_every_channel() -> None:
    big = "x" * 20_000
    async with running(**BLOCKING) as (harness, http):
        async with stalled_subscriber(harness, "b"):
            for n in range(8):
                body = {"channels": ["a", "b", "c"], "data": big, "idempotency_key": f"k{n}"}
                answer = await http.post("/api/broadcast", json=body, headers=HEADERS)
                assert answer.status_code == 200, answer.text
                results = answer.json()["results"]
                assert [(r["channel"], r["seq"]) for r in results] == [
                    ("a", n + 1),
                    ("b", n + 1),
                    ("c", n + 1),
                ]


async def test_a_broadcast_that_runs_out_of_time_says_what_it_published() -> None:
    """Channel b is never numbered (a broker that hangs): the answer lists a as published, b
    as unknown and c as not published, so that a retry knows what it repeats."""
    async with running(handshake_timeout=1.0) as (harness, http):
        broker = harness.server.broker
        original = broker.publish

        def publish(pub: Any) -> Any:
            if pub.channel == "b":
                return []  # taken, never numbered
            return original(pub)

        broker.publish = publish  # type: ignore[method-assign]
        body = {"channels": ["a", "b", "c"], "data": 1, "idempotency_key": "k"}
        answer = await http.post("/api/broadcast", json=body, headers=HEADERS)
        assert answer.status_code == 202, answer.text
        reply = answer.json()
        assert reply["outcome"] == "unknown"
        assert [(r["channel"], r["seq"]) for r in reply["results"]] == [("a", 1)]
        assert (reply["unknown"], reply["not_published"]) == (["b"], ["c"])
        single = await http.post("/api/publish", json={"channel": "b", "data": 1}, headers=HEADERS)
        assert single.status_code == 202
        assert single.json()["outcome"] == "unknown"
        assert single.json()["channel"] == "b"


async def test_a_publish_while_redis_is_down_is_unknown_and_its_retry_is_not_a_second_one(
    own_redis: RedisServer,
) -> None:
    options = {"redis_url": own_redis.url, "redis_timeout": 0.2, "handshake_timeout": 1.0}
    async with running(**options) as (harness, http):
        with trio.fail_after(10):
            await harness.server.broker.up.wait_value(True)
        async with harness.connect() as reader:
            await reader.request({"type": "subscribe", "channel": "news", "id": 1})
            own_redis.kill()
            with trio.fail_after(10):
                await harness.server.broker.up.wait_value(False)
            body = {"channel": "news", "data": "hello", "idempotency_key": "k-1"}
            answer = await http.post("/api/publish", json=body, headers=HEADERS)
            assert answer.status_code == 202, answer.text
            assert answer.json()["outcome"] == "unknown"
            own_redis.start()
            with trio.fail_after(10):
                await harness.server.broker.up.wait_value(True)
            again = await http.post("/api/publish", json=body, headers=HEADERS)
            assert (again.status_code, again.json()["seq"]) == (200, 1)
            message = await reader.receive_type("message")
            assert (message["data"], message["seq"]) == ("hello", 1)
            await http.post("/api/publish", json={"channel": "news", "data": 2}, headers=HEADERS)
            assert (await reader.receive_type("message"))["seq"] == 2  # the first came once


async def test_publications_waiting_for_block_subscribers_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each publication that filled a ``block`` subscriber holds a background wait; beyond
    the bound a publication is refused before it is published (so nothing is lost or
    doubled), and once the waits end publishing works again."""
    from triows._ops import api as _http

    monkeypatch.setattr(_http, "MAX_BLOCKED_WAITS", 1)
    big = "x" * 20_000
    async with running(**{**BLOCKING, "block_timeout": 1.0}) as (harness, http):
        server = harness.server
        async with stalled_subscriber(harness, "slow"):
            answers: list[httpx.Response] = []
            while not answers or answers[-1].status_code == 200:
                body = {"channel": "slow", "data": big}
                answers.append(await http.post("/api/publish", json=body, headers=HEADERS))
            refused = answers[-1]
            assert refused.status_code == 503
            assert "HTTP publications to 'block' channels are waiting" in refused.json()["error"]
            assert server.statistics().http_block_waits == 1
            published = server.statistics().published
            assert published == len(answers) - 1
            with trio.fail_after(10):
                while server.http.api.blocked_waits:  # noqa: ASYNC110 - no event to wait on
                    await trio.sleep(0.05)
            again = await http.post(
                "/api/publish", json={"channel": "slow", "data": 1}, headers=HEADERS
            )
            assert (again.status_code, again.json()["seq"]) == (200, published + 1)


async def test_a_publish_waiting_when_the_server_stops_is_answered_unknown() -> None:
    """Shutdown while a publication waits for its number (Redis away, or slow): the backend
    gets 202 "unknown" before the server cancels what is left, not a dropped connection."""
    async with running(handshake_timeout=10.0, shutdown_timeout=1.0) as (harness, http):
        server = harness.server
        taken = trio.Event()

        def publish(pub: Any) -> list[Any]:
            taken.set()
            return []  # taken, never numbered

        server.broker.publish = publish  # type: ignore[method-assign]
        answers: list[httpx.Response] = []

        async def post() -> None:
            body = {"channel": "news", "data": 1, "idempotency_key": "k"}
            answers.append(await http.post("/api/publish", json=body, headers=HEADERS))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(post)
            with trio.fail_after(5):
                await taken.wait()
            stopped_at = trio.current_time()
            await server.aclose()
        assert trio.current_time() - stopped_at < 1.5
        assert answers[0].status_code == 202, answers[0].text
        reply = answers[0].json()
        assert reply["outcome"] == "unknown"
        assert "the server is stopping" in reply["error"]


async def test_publications_waiting_for_a_number_take_no_block_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bound is for background waits of ``block`` subscribers: a publication to another
    channel, or one waiting for its number (Redis), must not use it up (it used to: any HTTP
    publish in flight took a slot, and the 503 blamed ``block`` subscribers)."""
    from triows._ops import api as _http

    monkeypatch.setattr(_http, "MAX_BLOCKED_WAITS", 1)
    async with running(handshake_timeout=1.0) as (harness, http):
        server = harness.server
        original = server.broker.publish

        def publish(pub: Any) -> Any:
            return [] if pub.channel == "hangs" else original(pub)  # "hangs": never numbered

        server.broker.publish = publish  # type: ignore[method-assign]
        answers: list[httpx.Response] = []

        async def post(channel: str) -> None:
            body = {"channel": channel, "data": 1}
            answers.append(await http.post("/api/publish", json=body, headers=HEADERS))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(post, "hangs")
            await trio.sleep(0.2)  # waiting for its number
            await post("news")
            assert answers[0].status_code == 200, answers[0].text
            assert server.statistics().http_block_waits == 0
        assert answers[1].status_code == 202
