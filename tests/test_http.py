"""Plain HTTP on the WebSocket port, through a real HTTP client (httpx) and real sockets."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

import triows

pytestmark = pytest.mark.real_socket

KEY = "test-api-key-0123456789"


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[tuple[triows.Server, httpx.AsyncClient]]:
    async with trio.open_nursery() as nursery:
        config = triows.Config(port=0, monitor_interval=0.05, **overrides)
        server: triows.Server = await nursery.start(triows.serve, config)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            with trio.fail_after(20):
                yield server, http
        await server.aclose()


def metrics(text: str) -> dict[str, float]:
    """``name{labels}`` -> value of every sample."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


async def test_health_and_ready() -> None:
    async with running() as (server, http):
        health = await http.get("/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "server_id": server.server_id}
        assert (await http.get("/ready")).json() == {"ready": True}
        server.memory_guard.over = True
        ready = await http.get("/ready")
        assert ready.status_code == 503
        assert ready.json() == {"ready": False, "reasons": ["memory limit reached"]}


async def test_unknown_paths_and_methods() -> None:
    async with running() as (_, http):
        missing = await http.get("/nope")
        assert missing.status_code == 404
        assert missing.json() == {"error": "nothing at /nope"}
        wrong = await http.post("/health", content=b"{}")
        assert wrong.status_code == 405
        # Without a key the API does not exist, and the answer says which flag turns it on.
        off = await http.post("/api/publish", json={"channel": "a", "data": 1})
        assert off.status_code == 404
        assert "--api-key" in off.json()["error"]
        assert "--api-key" in (await http.get("/api/channels")).json()["error"]
        assert "--demo" in (await http.get("/demo")).json()["error"]
        assert (await http.get("/")).status_code == 404
    async with running(metrics=False, demo=True) as (_, http):
        assert "--metrics yes" in (await http.get("/metrics")).json()["error"]
        home = await http.get("/", follow_redirects=False)
        assert (home.status_code, home.headers["location"]) == (302, "/demo")


async def test_metrics_count_what_happened() -> None:
    async with running() as (server, http):
        url = f"ws://127.0.0.1:{server.port}/"
        async with open_websocket_url(url) as subscriber, open_websocket_url(url) as publisher:
            await subscriber.get_message()
            await publisher.get_message()
            await subscriber.send_message(json.dumps({"type": "subscribe", "channel": "m"}))
            await subscriber.get_message()
            for n in range(3):
                frame = {"type": "publish", "channel": "m", "data": n, "id": n}
                await publisher.send_message(json.dumps(frame))
                await publisher.get_message()
            for _ in range(3):
                await subscriber.get_message()
            response = await http.get("/metrics")
            assert response.headers["content-type"].startswith("text/plain")
            found = metrics(response.text)
            assert found["triows_connections"] == 2
            assert found["triows_subscriptions"] == 1
            assert found["triows_published_total"] == 3
            assert found["triows_deliveries_total"] == 3
            assert found["triows_publish_ack_seconds_count"] == 3
            assert found["triows_frames_received_total"] == 4  # a subscribe, three publishes
            assert found["triows_frames_sent_total"] >= 2 + 1 + 3 + 3  # welcomes, replies
            assert found["triows_broker_up"] == 1
            assert found["triows_resident_memory_bytes"] > 0
            assert found["triows_cpu_seconds_total"] > 0
        await http.get("/nope")
        found = metrics((await http.get("/metrics")).text)
        assert found["triows_http_requests_total{status=404}"] == 1
        assert found["triows_connections_total"] == 2


async def test_metrics_can_be_turned_off() -> None:
    async with running(metrics=False) as (server, http):
        assert (await http.get("/metrics")).status_code == 404
        assert server.ack_latency.count == 0


async def test_stats_carry_the_monitor_history() -> None:
    async with running() as (server, http):
        while len(server.monitor.samples) < 3:  # noqa: ASYNC110 - samples have no event
            await trio.sleep(0.05)
        stats = (await http.get("/stats", params={"history": 2})).json()
        assert stats["server"]["server_id"] == server.server_id
        assert len(stats["monitor"]["samples"]) == 2
        sample = stats["monitor"]["samples"][-1]
        assert sample["rss"] > 0
        assert sample["loop_lag"] >= 0
        assert stats["total"]["workers"] == 1
        assert stats["workers"][0]["server_id"] == server.server_id
        bad = await http.get("/stats", params={"history": "all"})
        assert bad.status_code == 400


async def test_api_publish_reaches_subscribers_with_seq_and_epoch() -> None:
    async with running(api_key=KEY) as (server, http):
        url = f"ws://127.0.0.1:{server.port}/"
        async with open_websocket_url(url) as ws:
            await ws.get_message()
            await ws.send_message(json.dumps({"type": "subscribe", "channel": "news"}))
            subscribed = json.loads(await ws.get_message())
            body = {"channel": "news", "data": {"headline": "hi"}, "idempotency_key": "k-1"}
            first = await http.post("/api/publish", json=body, headers={"X-API-Key": KEY})
            assert first.status_code == 200
            assert first.json() == {"channel": "news", "seq": 1, "epoch": subscribed["epoch"]}
            message = json.loads(await ws.get_message())
            assert (message["data"], message["seq"]) == ({"headline": "hi"}, 1)
            # The same key again: answered from the dedupe window, not delivered twice.
            again = await http.post("/api/publish", json=body, headers={"X-API-Key": KEY})
            assert again.json() == first.json()
            second = {"channel": "news", "data": 2}
            answer = await http.post("/api/publish", json=second, headers={"X-API-Key": KEY})
            assert answer.json()["seq"] == 2
            assert json.loads(await ws.get_message())["data"] == 2
        assert server.statistics().deduplicated == 1


async def test_api_broadcast_and_channels() -> None:
    async with running(api_key=KEY) as (server, http):
        url = f"ws://127.0.0.1:{server.port}/"
        headers = {"X-API-Key": KEY}
        async with open_websocket_url(url) as ws:
            await ws.get_message()
            for channel in ("a", "b"):
                await ws.send_message(json.dumps({"type": "subscribe", "channel": channel}))
                await ws.get_message()
            body = {"channels": ["a", "b", "c"], "data": "x"}
            answer = await http.post("/api/broadcast", json=body, headers=headers)
            assert [r["channel"] for r in answer.json()["results"]] == ["a", "b", "c"]
            assert [r["seq"] for r in answer.json()["results"]] == [1, 1, 1]
            got = {json.loads(await ws.get_message())["channel"] for _ in range(2)}
            assert got == {"a", "b"}
            listed = (await http.get("/api/channels", headers=headers)).json()
            assert [c["channel"] for c in listed["channels"][:2]] == ["a", "b"]
            assert listed["channels"][0]["subscribers"] == 1


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{bad", 400, "body is not valid JSON"),
        (b"\xff", 400, "body is not valid JSON"),
        (b'{"channel": "a", "data": NaN}', 400, "NaN is not a JSON number"),
        (b'{"channel": "a", "data": [Infinity]}', 400, "Infinity is not a JSON number"),
        (b'{"channel": "a", "data": 1e999}', 400, "number out of range"),
        (b'{"channel": "a", "data": ' + b"[" * 1000 + b"]" * 1000 + b"}", 400, "nested"),
        (b'{"channel": "a", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 413, "larger"),
        (b"[" * 60_000 + b"]" * 2, 400, "body is not valid JSON"),
        (b'{"channel": "a", "data": 1, "channel": "b"}', 400, "field 'channel' appears twice"),
        (b"[1]", 400, "body must be a JSON object"),
        (b'{"data": 1}', 400, "missing field 'channel'"),
        (b'{"channel": "a"}', 400, "missing field 'data'"),
        (b'{"channel": "a", "data": 1, "extra": 1}', 400, "unknown field 'extra'"),
        (b'{"channel": 5, "data": 1}', 400, "a channel name must be a string"),
        (b'{"channel": "bad name", "data": 1}', 400, "channel"),
        (b'{"channel": "a", "data": 1, "idempotency_key": ""}', 400, "idempotency_key"),
        (b'{"channel": "a", "data": "' + b"x" * 70_000 + b'"}', 413, "larger than"),
    ],
)
async def test_api_refuses_bad_requests_clearly(
    body: bytes, status: int, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(api_key=KEY) as (_, http):
        answer = await http.post(
            "/api/publish",
            content=body,
            headers={"X-API-Key": KEY, "Content-Type": "application/json"},
        )
        assert answer.status_code == status
        assert message in answer.json()["error"]
    # A client's fault is its answer, never a traceback in our log.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def raw_answer(port: int, request: bytes) -> bytes:
    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request)
            sock.settimeout(10)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            return answer

    return await trio.to_thread.run_sync(exchange)


BIG = "v" * (20 * 1024)


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET /stats?history=" + b"9" * 4400 + b" HTTP/1.1\r\nHost: x\r\n", b"400"),
        (b"GET /stats?history=%C2%B2 HTTP/1.1\r\nHost: x\r\n", b"400"),
        (b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n", b"400"),
        (
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 4400 + b"\r\n",
            b"413",
        ),
        (
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 50\r\n",
            b"400",
        ),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nHost: y\r\n", b"400"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + BIG.encode() + b"\r\n", b"431"),
        (b"GET /" + BIG.encode() + b" HTTP/1.1\r\nHost: x\r\n", b"431"),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n",
            b"400",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Version: 13\r\n",
            b"400",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            b"400",
        ),
    ],
    ids=[
        "history-4400-digits",
        "history-superscript",
        "content-length-superscript",
        "content-length-4400-digits",
        "two-content-lengths",
        "two-hosts",
        "20KiB-header",
        "20KiB-path",
        "upgrade-two-keys",
        "upgrade-two-versions",
        "upgrade-two-hosts",
    ],
)
async def test_hostile_heads_get_a_client_error_not_a_traceback(
    request_head: bytes, status: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(api_key=KEY) as (server, _):
        answer = await raw_answer(
            server.port, request_head + b"X-API-Key: " + KEY.encode() + b"\r\n\r\n{}"
        )
        assert answer.split(b" ")[1] == status, answer[:200]
        assert server.statistics().connections == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_api_refuses_data_over_the_message_limit() -> None:
    async with running(api_key=KEY, max_message_size=4096) as (_, http):
        body = {"channel": "a", "data": "x" * 3500}
        answer = await http.post("/api/publish", json=body, headers={"X-API-Key": KEY})
        assert answer.status_code == 413
        assert "data is larger than" in answer.json()["error"]


async def test_api_key_is_checked() -> None:
    async with running(api_key=KEY) as (server, http):
        body = {"channel": "a", "data": 1}
        missing = await http.post("/api/publish", json=body)
        assert (missing.status_code, missing.json()) == (401, {"error": "missing X-API-Key header"})
        wrong = await http.post("/api/publish", json=body, headers={"X-API-Key": KEY + "x"})
        assert (wrong.status_code, wrong.json()) == (401, {"error": "wrong API key"})
        assert server.statistics().published == 0


async def test_a_chunked_body_is_refused_and_a_slow_one_times_out() -> None:
    async with running(api_key=KEY, handshake_timeout=0.5) as (server, _):
        for request, status in [
            (
                b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() + b"\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n",
                b"411",
            ),
            (
                b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() + b"\r\n"
                b"Content-Length: 100\r\n\r\n{",
                b"504",
            ),
        ]:
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(request)
                sock.settimeout(5)
                answer = await trio.to_thread.run_sync(sock.recv, 4096)
            assert answer.split(b" ")[1] == status, answer


async def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    async with running(trusted_proxies=["127.0.0.0/8"], max_connections_per_ip=1) as (server, _):
        url = f"ws://127.0.0.1:{server.port}/"
        headers = [(b"X-Forwarded-For", b"198.51.100.7, 203.0.113.9")]
        async with open_websocket_url(url, extra_headers=headers) as ws:
            await ws.get_message()
            (conn,) = server.connection_statistics()
            assert conn.remote == "203.0.113.9"
            # Another client behind the same proxy is another address: not over the limit.
            other = [(b"X-Forwarded-For", b"203.0.113.10")]
            async with open_websocket_url(url, extra_headers=other) as second:
                await second.get_message()
    async with running() as (server, _):  # no trusted proxy: the header is ignored
        async with open_websocket_url(
            f"ws://127.0.0.1:{server.port}/", extra_headers=headers
        ) as ws:
            await ws.get_message()
            (conn,) = server.connection_statistics()
            assert conn.remote.startswith("127.0.0.1:")


async def test_a_failing_endpoint_is_a_500_not_a_dropped_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running() as (server, http):

        def broken() -> list[str]:
            raise RuntimeError("bug")

        monkeypatch.setattr(server, "not_ready", broken)
        answer = await http.get("/ready")
        assert (answer.status_code, answer.json()) == (500, {"error": "internal error"})
        assert (await http.get("/health")).status_code == 200


async def test_triows_js_and_the_demo_page() -> None:
    async with running(path="/ws") as (_, http):
        script = await http.get("/triows.js")
        assert script.status_code == 200
        assert script.headers["content-type"] == "text/javascript; charset=utf-8"
        assert "max-age" in script.headers["cache-control"]
        assert "export class TriowsClient" in script.text
        again = await http.get("/triows.js", headers={"If-None-Match": script.headers["etag"]})
        assert (again.status_code, again.content) == (304, b"")
        assert (await http.get("/demo")).status_code == 404  # only with --demo
    async with running(path="/ws", demo=True) as (_, http):
        page = await http.get("/demo")
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        # The server's WebSocket path (then the page's name for presence, see the demo).
        assert "${location.host}/ws${named}`" in page.text
        assert "__TRIOWS_PATH__" not in page.text


async def test_stats_needs_the_key_when_one_is_set() -> None:
    async with running(api_key=KEY) as (_, http):
        assert (await http.get("/stats")).status_code == 401
        assert (await http.get("/stats", headers={"X-API-Key": KEY})).status_code == 200
        assert (await http.get("/health")).status_code == 200  # probes never need it
    async with running() as (_, http):
        assert (await http.get("/stats")).status_code == 200  # no key, nothing to check


async def test_triows_js_may_be_loaded_by_a_page_of_another_origin() -> None:
    async with running() as (_, http):
        script = await http.get("/triows.js", headers={"Origin": "http://localhost:8000"})
        assert script.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-origin" not in (await http.get("/health")).headers


async def test_the_start_log_names_the_demo_page(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="triows.server")
    async with running(demo=True) as (server, _):
        assert f"demo chat page: http://127.0.0.1:{server.port}/demo" in caplog.text


async def test_an_http_request_holds_its_socket_one_handshake_timeout_at_most(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Head, body and answer share one deadline: a client that sends its head late and its
    body never gets its 504 at ``handshake_timeout`` (plus a moment to write it)."""
    from triows._net.streams import ANSWER_GRACE
    from triows.testing import open_test_server

    async with open_test_server(api_key=KEY, handshake_timeout=5) as harness:
        stream = await harness.listener.connect()
        start = trio.current_time()
        await trio.sleep(4.5)
        await stream.send_all(
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() + b"\r\n"
            b"Content-Length: 10\r\n\r\n{"
        )
        answer = b""
        while chunk := await stream.receive_some(4096):
            answer += chunk
        assert answer.split(b" ")[1] == b"504"
        assert trio.current_time() - start <= 5 + ANSWER_GRACE
