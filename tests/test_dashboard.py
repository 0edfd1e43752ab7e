"""The dashboard's HTTP side: the page exists only with an API key, the connections lookup
(auth, bad input, one process and two Redis nodes), and the marks the monitor's samples carry
for its time axis. The page itself runs in a real browser in tests/test_dashboard_browser.py."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from trio_websocket import WebSocketConnection, open_websocket_url

import triows
from triows.testing import open_test_server

from .conftest import SECRET, make_token

KEY = "dashboard-test-key-0123456789"
HEADERS = {"X-API-Key": KEY}


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[tuple[triows.Server, httpx.AsyncClient]]:
    async with trio.open_nursery() as nursery:
        config = triows.Config(port=0, monitor_interval=0.05, **overrides)
        server: triows.Server = await nursery.start(triows.serve, config)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            with trio.fail_after(20):
                yield server, http
        await server.aclose()


async def subscribed(ws: WebSocketConnection, *channels: str) -> str:
    """Subscribe to ``channels``; the client id from the welcome."""
    welcome = json.loads(await ws.get_message())
    for channel in channels:
        await ws.send_message(json.dumps({"type": "subscribe", "channel": channel}))
        assert json.loads(await ws.get_message())["type"] == "subscribed"
    return str(welcome["data"]["clientId"])


@pytest.mark.real_socket
async def test_the_page_is_there_only_with_an_api_key() -> None:
    async with running() as (_, http):
        for path in ("/dashboard", "/dashboard.js", "/dashboard.css", "/api/connections"):
            off = await http.get(path)
            assert off.status_code == 404, path
            assert "--api-key" in off.json()["error"]
    async with running(api_key=KEY) as (_, http):
        page = await http.get("/dashboard")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "/dashboard.js" in page.text
        # Its own script only, its own origin only, never in a frame.
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert page.headers["x-frame-options"] == "DENY"
        script = await http.get("/dashboard.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "sessionStorage" in script.text
        assert "localStorage" not in script.text
        assert (await http.get("/dashboard.css")).headers["content-type"].startswith("text/css")
        # The page is public code; what it shows is not.
        assert (await http.get("/stats")).status_code == 401


@pytest.mark.real_socket
async def test_connections_of_a_user_and_of_a_client() -> None:
    async with running(api_key=KEY, jwt_secret=SECRET) as (server, http):
        url = f"ws://127.0.0.1:{server.port}/?token="
        async with (
            open_websocket_url(url + make_token("ann")) as one,
            open_websocket_url(url + make_token("ann")) as two,
            open_websocket_url(url + make_token("bob")) as other,
        ):
            first = await subscribed(one, "news", "chat.a")
            second = await subscribed(two)
            await subscribed(other, "news")
            answer = await http.post("/api/connections", json={"user": "ann"}, headers=HEADERS)
            assert answer.status_code == 200
            found = answer.json()
            assert (found["total"], found["nodes"]) == (2, 1)
            assert found["server_id"] == server.server_id
            by_client = {c["client"]: c for c in found["connections"]}
            assert set(by_client) == {first, second}
            assert by_client[first]["subscriptions"] == ["chat.a", "news"]
            assert by_client[second]["subscriptions"] == []
            assert by_client[first]["user"] == "ann"
            assert by_client[first]["remote"].startswith("127.0.0.1:")
            assert by_client[first]["frames_in"] == 2
            assert by_client[first]["server_id"] == server.server_id
            one_client = await http.post(
                "/api/connections", json={"client": first}, headers=HEADERS
            )
            assert [c["client"] for c in one_client.json()["connections"]] == [first]
            nobody = await http.post("/api/connections", json={"user": "cyd"}, headers=HEADERS)
            assert nobody.json()["connections"] == []
            assert nobody.json()["total"] == 0


@pytest.mark.real_socket
async def test_a_lookup_lists_at_most_max_listed_and_counts_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from triows._ops import dashboard

    monkeypatch.setattr(dashboard, "MAX_LISTED", 2)
    async with running(api_key=KEY, jwt_secret=SECRET) as (server, http):
        url = f"ws://127.0.0.1:{server.port}/?token=" + make_token("ann")
        async with (
            open_websocket_url(url) as a,
            open_websocket_url(url) as b,
            open_websocket_url(url) as c,
        ):
            for ws in (a, b, c):
                await subscribed(ws)
            found = (
                await http.post("/api/connections", json={"user": "ann"}, headers=HEADERS)
            ).json()
            assert (len(found["connections"]), found["total"]) == (2, 3)


@pytest.mark.real_socket
@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b'{"user": "a", "client": "b"}', 400, "either 'user' or 'client'"),
        (b"{}", 400, "either 'user' or 'client'"),
        (b'{"user": 5}', 400, "'user' must be a string"),
        (b'{"client": ""}', 400, "'client' must be a string of 1 to 256"),
        (b'{"user": "' + b"u" * 257 + b'"}', 400, "'user' must be a string of 1 to 256"),
        (b'{"user": "u\\ud800"}', 400, "'user' must be text with a UTF-8 form"),
        (b'{"user": "a", "channel": "x"}', 400, "unknown field 'channel'"),
        (b'{"user": "a", "user": "b"}', 400, "body is"),
        (b"[1]", 400, "body must be a JSON object"),
        (b"user=a", 400, "body is"),
    ],
)
async def test_a_bad_lookup_is_a_400_with_the_reason(body: bytes, status: int, error: str) -> None:
    async with running(api_key=KEY) as (_, http):
        answer = await http.post("/api/connections", content=body, headers=HEADERS)
        assert answer.status_code == status
        assert error in answer.json()["error"]


@pytest.mark.real_socket
async def test_a_lookup_needs_the_key_and_a_post() -> None:
    async with running(api_key=KEY) as (_, http):
        body = {"user": "ann"}
        missing = await http.post("/api/connections", json=body)
        assert (missing.status_code, missing.json()["error"]) == (401, "missing X-API-Key header")
        wrong = await http.post("/api/connections", json=body, headers={"X-API-Key": KEY + "x"})
        assert (wrong.status_code, wrong.json()["error"]) == (401, "wrong API key")
        assert "connections" not in wrong.text
        get = await http.get("/api/connections", headers=HEADERS)
        assert get.status_code == 405


@pytest.mark.real_socket
async def test_two_redis_nodes_each_find_every_nodes_connections(shared_redis_url: str) -> None:
    """Over Redis the lookup is a control request: whichever node is asked, every node's
    connections of the user are listed, each with the node that holds it. The channel table
    lists every node's channels with their publications; /stats carries the charts' marks.
    On one Redis and on a Redis Cluster."""
    redis_url = shared_redis_url
    channel = f"dash-{trio.current_time():.0f}-{id(object())}"
    async with (
        running(api_key=KEY, jwt_secret=SECRET, redis_url=redis_url) as (a, http_a),
        running(api_key=KEY, jwt_secret=SECRET, redis_url=redis_url) as (b, http_b),
    ):
        user = f"ann-{channel}"
        url_a = f"ws://127.0.0.1:{a.port}/?token=" + make_token(user)
        url_b = f"ws://127.0.0.1:{b.port}/?token=" + make_token(user)
        async with open_websocket_url(url_a) as on_a, open_websocket_url(url_b) as on_b:
            client_a = await subscribed(on_a, channel)
            client_b = await subscribed(on_b, channel)
            for http in (http_a, http_b):
                body = {"user": user}
                found = (await http.post("/api/connections", json=body, headers=HEADERS)).json()
                assert (found["total"], found["nodes"]) == (2, 2)
                held = {c["client"]: c["server_id"] for c in found["connections"]}
                assert held == {client_a: a.server_id, client_b: b.server_id}
                body = {"client": client_b}
                one = (await http.post("/api/connections", json=body, headers=HEADERS)).json()
                assert [c["client"] for c in one["connections"]] == [client_b]
                assert one["connections"][0]["subscriptions"] == [channel]
            published = {"channel": channel, "data": {"n": 1}}
            answer = await http_a.post("/api/publish", json=published, headers=HEADERS)
            assert answer.status_code == 200
            for ws in (on_a, on_b):
                assert json.loads(await ws.get_message())["data"] == {"n": 1}
            listed = (await http_b.get("/api/channels", headers=HEADERS)).json()["channels"]
            entry = next(c for c in listed if c["channel"] == channel)
            # Every node's subscribers (the server API's /api/channels), and what the
            # dashboard's table adds: publications seen (history is in the Redis streams).
            assert (entry["subscribers"], entry["seq"], entry["published"]) == (2, 1, 1)
            assert "history" not in entry
            # The monitor's first sample comes one interval after its start: later on a busy
            # machine (the whole suite on two cores) than all of the above.
            while True:
                stats = (await http_b.get("/stats?history=3", headers=HEADERS)).json()
                if stats["monitor"]["samples"]:
                    break
                await trio.sleep(0.05)
            assert stats["total"]["broker_state"] == "up"
            assert stats["monitor"]["samples"][-1]["broker_up"] is True


@pytest.mark.real_socket
async def test_the_channel_table_counts_publications_and_history_in_process() -> None:
    async with running(api_key=KEY) as (server, http):
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as ws:
            await subscribed(ws, "table")
            for n in range(3):
                body = {"channel": "table", "data": n}
                assert (await http.post("/api/publish", json=body, headers=HEADERS)).is_success
            listed = (await http.get("/api/channels", headers=HEADERS)).json()["channels"]
            assert [(c["channel"], c["published"], c["history"]) for c in listed] == [
                ("table", 3, 3)
            ]


async def test_samples_mark_memory_limit_trips_and_broker_state(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from triows._core import memory_guard

    rss = [100 << 20]
    monkeypatch.setattr(memory_guard, "read_rss", lambda: rss[0])
    async with open_test_server(memory_limit=200 << 20, monitor_interval=1) as harness:
        monitor = harness.server.monitor
        await trio.sleep(1.5)
        rss[0] = 300 << 20
        await trio.sleep(2)
        rss[0] = 100 << 20
        await trio.sleep(2)
        harness.server.broker.up.value = False  # as a Redis outage does
        await trio.sleep(1)
        marks = [(s.memory_limited, s.broker_up) for s in monitor.samples]
        assert marks == [
            (False, True),
            (True, True),
            (True, True),
            (False, True),
            (False, True),
            (False, False),
        ]
        assert monitor.summary()["memory_limited"] is False
        harness.server.broker.up.value = True


async def test_a_long_history_is_encoded_in_steps_and_whole(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dashboard asks /stats for an hour of samples when it opens (about 1 MB of JSON):
    they are encoded a step at a time, with a checkpoint between, and the answer is the same
    document."""
    import attrs

    from triows._core.handshake import HttpRequest
    from triows._ops import figures

    monkeypatch.setattr(figures, "SAMPLES_PER_STEP", 2)
    steps = []

    async def counted() -> None:
        steps.append(1)
        await trio.lowlevel.checkpoint()

    async with open_test_server(monitor_interval=1) as harness:
        await trio.sleep(5.5)
        _, stats, _ = harness.server.http.routes["/stats"]
        monkeypatch.setattr(figures, "_step", counted)
        answer = await stats(HttpRequest("GET", "/stats?history=5", {}), b"")
        document = json.loads(answer.body)
        expected = [attrs.asdict(s) for s in harness.server.monitor.samples]
        assert document["monitor"]["samples"] == expected
        assert len(expected) == 5
        assert len(steps) == 2  # 5 samples, 2 a step: two checkpoints between three steps
        assert document["server"]["server_id"] == harness.server.server_id


@pytest.mark.real_socket
async def test_under_workers_a_lookup_and_the_figures_cover_every_worker(
    redis_server: Any,
) -> None:
    """``--workers 2``: whichever worker answers, the lookup lists the user's connections on
    both workers, and /stats gives each worker's summary (the page's dashed lines) with the
    charts' marks."""
    import subprocess
    import sys

    from .redisserver import free_port
    from .test_workers import Supervisor, kill_if_running

    port = free_port()
    command = [sys.executable, "-m", "triows", "--workers", "2", "--port", str(port)]
    command += ["--redis-url", redis_server.url, "--jwt-secret", SECRET, "--api-key", KEY]
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE)
    supervisor = Supervisor(process)
    user = f"worker-user-{port}"
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervisor.read_log)
            await supervisor.wait_for("triows listening", count=2)
            workers = supervisor.workers()
            async with contextlib.AsyncExitStack() as stack:
                held: dict[str, str] = {}  # client id -> server id
                url = f"ws://127.0.0.1:{port}/?token=" + make_token(user)
                while len(set(held.values())) < 2:  # the kernel spreads connections
                    assert len(held) < 64, held
                    ws = await stack.enter_async_context(open_websocket_url(url))
                    welcome = json.loads(await ws.get_message())["data"]
                    held[welcome["clientId"]] = welcome["serverId"]
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                    for _ in range(4):  # each request may reach either worker
                        body = {"user": user}
                        answer = await http.post("/api/connections", json=body, headers=HEADERS)
                        found = answer.json()
                        assert (found["total"], found["nodes"]) == (len(held), 2), found
                        assert {c["client"]: c["server_id"] for c in found["connections"]} == held
                    with trio.fail_after(10):
                        while True:
                            stats = (await http.get("/stats", headers=HEADERS)).json()
                            sampled = [w for w in stats["workers"] if "time" in w]
                            if len(sampled) == 2:  # each worker took a sample
                                break
                            await trio.sleep(0.2)
                    assert {w["pid"] for w in stats["workers"]} == set(workers.values())
                    assert all(w["broker_up"] is True for w in stats["workers"])
                    assert stats["total"]["memory_limited"] is False
                    assert stats["total"]["connections"] == len(held)
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                assert await process.wait() == 0
            nursery.cancel_scope.cancel()
    finally:
        await kill_if_running(process)
