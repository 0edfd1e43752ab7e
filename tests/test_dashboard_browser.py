"""The dashboard in a real browser (chromium through playwright-core, as the demo's tests).

One server process with an API key and presence on ``chat.*``. A wrong key gets nothing; with
the right one the charts move under load, a publish from the form reaches a WebSocket
subscriber, an open channel shows its history and its presence members with their info, and
a disconnect from the page closes that client with the code chosen. The page fits a phone in
the dark theme. Screenshots go to ``tests/output/`` (not committed; docs/dashboard.png is a
copy of one).
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from .conftest import SECRET, make_token
from .redisserver import free_port
from .test_browser import KEY, OUTPUT, Browser, Server, browser, evaluate, open_page, wait_for

pytestmark = pytest.mark.real_socket

__all__ = ["browser"]  # the fixture, shared with the demo's tests


class DashboardServer(Server):
    """Ready when it answers /health: a server over its memory limit is never /ready."""

    def start(self) -> None:
        self.process = subprocess.Popen(self.command)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("triows did not start")


@contextmanager
def dashboard_server(*extra: str) -> Iterator[Server]:
    server = DashboardServer(free_port(), list(extra))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def signed_in(browser: Browser, server: Server, key: str = KEY, **viewport: Any) -> int:
    page = open_page(browser, f"http://127.0.0.1:{server.port}/dashboard", **viewport)
    evaluate(
        browser,
        page,
        """(key) => {
          document.getElementById("key").value = key;
          document.getElementById("login").requestSubmit();
        }""",
        key,
    )
    return page


def publish_load(port: int, channel: str, count: int) -> None:
    for n in range(count):
        body = json.dumps({"channel": channel, "data": {"n": n}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/publish", data=body, headers={"X-API-Key": KEY}
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 200


@contextmanager
def subscriber(
    port: int, channel: str, token: str | None = None
) -> Iterator[tuple[ClientConnection, str]]:
    """A WebSocket client subscribed to ``channel``, and its client id."""
    query = "" if token is None else f"?token={token}"
    with connect(f"ws://127.0.0.1:{port}/{query}", open_timeout=5) as ws:
        welcome = json.loads(ws.recv(timeout=5))
        ws.send(json.dumps({"type": "subscribe", "channel": channel}))
        assert json.loads(ws.recv(timeout=5))["type"] == "subscribed"
        yield ws, str(welcome["data"]["clientId"])


def lookup(port: int, client_id: str) -> list[str]:
    body = json.dumps({"client": client_id}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/connections", data=body, headers={"X-API-Key": KEY}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        return [c["client"] for c in json.load(answer)["connections"]]


def test_a_wrong_key_gets_nothing(browser: Browser) -> None:
    with dashboard_server() as server:
        page = signed_in(browser, server, key=KEY + "-wrong")
        wait_for(browser, page, "document.getElementById('login-error').textContent !== ''")
        shown = evaluate(
            browser,
            page,
            """() => ({
              error: document.getElementById("login-error").textContent,
              app: document.getElementById("app").hidden,
              tiles: document.querySelectorAll("#tiles .tile").length,
              charts: document.querySelectorAll("figure.chart").length,
              server: document.getElementById("server").textContent,
              stored: sessionStorage.getItem("triows.dashboard.key"),
            })""",
        )
        assert shown == {
            "error": "The server refused this key.",
            "app": True,
            "tiles": 0,
            "charts": 0,
            "server": "",
            "stored": None,
        }


def test_charts_move_under_load_and_the_form_publishes(browser: Browser) -> None:
    with dashboard_server() as server:
        page = signed_in(browser, server)
        wait_for(browser, page, "document.querySelectorAll('figure.chart').length === 7")
        wait_for(
            browser, page, "Number(document.querySelector('[data-chart=rss]').dataset.last) > 0"
        )
        before = evaluate(
            browser, page, "() => Number(document.querySelector('[data-chart=rss]').dataset.time)"
        )
        with subscriber(server.port, "load") as (ws, _):
            load = threading.Thread(target=publish_load, args=(server.port, "load", 300))
            load.start()
            # Publications and deliveries per second rise above 0 on the chart, with new
            # points after the page opened.
            wait_for(
                browser,
                page,
                "Number(document.querySelector('[data-chart=rates]').dataset.last) > 0",
            )
            load.join(30)
            wait_for(
                browser,
                page,
                "document.querySelector('[data-tile=connections] .value').textContent === '1'",
            )
            moved = evaluate(
                browser,
                page,
                """() => {
                  const chart = document.querySelector("[data-chart=rates]");
                  return {
                    time: Number(chart.dataset.time),
                    points: Number(chart.dataset.points),
                    delivered: chart.querySelector("path[data-field=delivery_rate]")
                      .getAttribute("d").length,
                  };
                }""",
            )
            assert moved["time"] > before, moved
            assert moved["points"] >= 2, moved
            assert moved["delivered"] > 0, moved
            # The busiest channels list it.
            wait_for(browser, page, "document.querySelector('tr[data-channel=load]') !== null")

            # The publish form reaches a WebSocket subscriber.
            received = [json.loads(ws.recv(timeout=10)) for _ in range(300)]
            assert [m["data"]["n"] for m in received] == list(range(300))
            evaluate(
                browser,
                page,
                """() => {
                  document.getElementById("publish-channel").value = "load";
                  document.getElementById("publish-data").value = '{"text": "from the form"}';
                  document.getElementById("publish").requestSubmit();
                }""",
            )
            message = json.loads(ws.recv(timeout=10))
            assert (message["channel"], message["data"], message["seq"]) == (
                "load",
                {"text": "from the form"},
                301,
            )
            wait_for(
                browser,
                page,
                "document.getElementById('publish-result').textContent.includes('#301')",
            )
            OUTPUT.mkdir(exist_ok=True)
            browser(cmd="screenshot", page=page, path=str(OUTPUT / "dashboard.png"))
            assert (OUTPUT / "dashboard.png").stat().st_size > 20_000


def test_a_channel_opened_and_a_disconnect_from_the_page_with_its_code(
    browser: Browser,
) -> None:
    """A channel opened shows its history (paged) and its presence members with their info;
    a client looked up by its id is disconnected, after a confirmation, with the code given."""
    token = make_token("alice", info={"name": "Alice Liddell"})
    with (
        dashboard_server("--jwt-secret", SECRET) as server,
        subscriber(server.port, "chat.room", token) as (ws, client_id),
    ):
        publish_load(server.port, "chat.room", 25)
        assert [json.loads(ws.recv(timeout=5))["seq"] for _ in range(25)] == list(range(1, 26))
        page = signed_in(browser, server)
        wait_for(browser, page, "document.querySelector('tr[data-channel=\"chat.room\"]')")
        evaluate(
            browser,
            page,
            "() => document.querySelector('tr[data-channel=\"chat.room\"] button').click()",
        )
        wait_for(browser, page, "document.querySelectorAll('#history li').length === 20")
        wait_for(browser, page, "document.querySelectorAll('#presence li').length === 1")
        evaluate(browser, page, "() => document.getElementById('older').click()")
        wait_for(browser, page, "document.querySelectorAll('#history li').length === 25")
        detail = evaluate(
            browser,
            page,
            """() => ({
              seqs: [...document.querySelectorAll("#history li")]
                .map((li) => Number(li.dataset.seq)),
              member: document.querySelector("#presence li").textContent,
              state: document.getElementById("channel-state").textContent,
              older: document.getElementById("older").hidden,
            })""",
        )
        assert detail["seqs"] == list(range(25, 0, -1)), detail  # newest first, then older
        assert "alice" in detail["member"], detail
        assert client_id in detail["member"], detail
        assert "Alice Liddell" in detail["member"], detail  # the connection's info
        assert "last seq 25" in detail["state"], detail
        assert detail["older"], detail  # nothing older: no button
        # What is published meanwhile comes on top at the next refresh.
        publish_load(server.port, "chat.room", 1)
        assert json.loads(ws.recv(timeout=5))["seq"] == 26
        wait_for(browser, page, "document.querySelector('#history li').dataset.seq === '26'")
        assert (
            evaluate(browser, page, "() => document.querySelectorAll('#history li').length") == 26
        )

        evaluate(
            browser,
            page,
            """(id) => {
              document.getElementById("lookup-kind").value = "client";
              document.getElementById("lookup-id").value = id;
              document.getElementById("lookup").requestSubmit();
            }""",
            client_id,
        )
        wait_for(browser, page, "document.querySelector('[data-disconnect]') !== null")
        card = evaluate(browser, page, "() => document.querySelector('.conn').textContent")
        assert client_id in card
        assert "chat.room" in card
        assert "127.0.0.1:" in card
        # Unsubscribe, confirmed: the client is told, and the card shows no subscription.
        evaluate(browser, page, "() => document.querySelector('[data-unsubscribe]').click()")
        wait_for(browser, page, "document.getElementById('confirm').open")
        evaluate(browser, page, "() => document.getElementById('confirm-form').requestSubmit()")
        told = json.loads(ws.recv(timeout=10))
        assert (told["type"], told["channel"]) == ("unsubscribed", "chat.room"), told
        wait_for(browser, page, "document.querySelector('[data-unsubscribe]') === null")
        # The button asks first: nothing happens until the confirmation.
        evaluate(browser, page, "() => document.querySelector('[data-disconnect]').click()")
        wait_for(browser, page, "document.getElementById('confirm').open")
        assert lookup(server.port, client_id) == [client_id]  # still connected
        evaluate(
            browser,
            page,
            """() => {
              document.getElementById("confirm-code").value = "4321";
              document.getElementById("confirm-reason").value = "bye from the dashboard";
              document.getElementById("confirm-form").requestSubmit();
            }""",
        )
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)  # nothing else comes on this channel: only the close
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            4321,
            "bye from the dashboard",
        )
        wait_for(
            browser,
            page,
            "document.getElementById('lookup-result').textContent.includes('disconnected 1')",
        )


def test_the_dashboard_fits_a_phone_in_the_dark_and_marks_the_memory_guard(
    browser: Browser,
) -> None:
    """At 390 px nothing spills sideways, in the dark theme; a server over its memory limit
    (1 MiB: always) shows the guard's band on every chart and in its badge."""
    with dashboard_server("--memory-limit", "1MiB") as server:
        page = signed_in(browser, server, width=390, height=844, dark=1)
        wait_for(browser, page, "document.querySelectorAll('figure.chart').length === 7")
        wait_for(browser, page, "document.querySelector('[data-chart=rss]').dataset.last > 0")
        layout = evaluate(
            browser,
            page,
            """() => ({
              width: document.documentElement.scrollWidth,
              dark: matchMedia("(prefers-color-scheme: dark)").matches,
              background: getComputedStyle(document.body).backgroundColor,
              empty: document.getElementById("channels-empty").textContent.trim(),
              bands: document.querySelectorAll("figure.chart rect.memory").length,
              badge: document.getElementById("broker").textContent,
            })""",
        )
        assert layout["width"] <= 390, layout
        assert layout["dark"], layout
        assert layout["background"] == "rgb(15, 18, 22)", layout
        assert layout["empty"].startswith("No channels yet: publish to one"), layout
        assert layout["bands"] == 7, layout
        assert layout["badge"].endswith("memory limit"), layout
        OUTPUT.mkdir(exist_ok=True)
        browser(cmd="screenshot", page=page, path=str(OUTPUT / "dashboard-phone.png"))


def test_an_event_stream_is_shown_as_one_and_disconnected_from_the_page(browser: Browser) -> None:
    """A user's SSE stream is listed with its transport and without unsubscribe buttons (its
    channels are its URL's); its Disconnect button ends it with the code chosen."""
    with dashboard_server("--jwt-secret", SECRET) as server:
        stream = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        token = make_token("carol")
        request = f"GET /sse?channel=news&token={token} HTTP/1.1\r\nHost: test\r\n\r\n"
        stream.sendall(request.encode())
        received = b""
        while b"event: subscribed" not in received:
            chunk = stream.recv(65536)
            assert chunk, received
            received += chunk
        page = signed_in(browser, server)
        evaluate(
            browser,
            page,
            """() => {
              document.getElementById("lookup-kind").value = "user";
              document.getElementById("lookup-id").value = "carol";
              document.getElementById("lookup").requestSubmit();
            }""",
        )
        wait_for(browser, page, "document.querySelector('[data-disconnect]') !== null")
        card = evaluate(browser, page, "() => document.querySelector('.conn').textContent")
        assert "Server-Sent Events" in card
        assert "news" in card
        assert evaluate(browser, page, "() => document.querySelector('[data-unsubscribe]')") is None
        evaluate(browser, page, "() => document.querySelector('[data-disconnect]').click()")
        wait_for(browser, page, "document.getElementById('confirm').open")
        evaluate(
            browser,
            page,
            """() => {
              document.getElementById("confirm-code").value = "4321";
              document.getElementById("confirm-form").requestSubmit();
            }""",
        )
        wait_for(
            browser,
            page,
            "document.getElementById('lookup-result').textContent.includes('disconnected 1')",
        )
        while chunk := stream.recv(65536):
            received += chunk
        assert b'event: close\ndata: {"code":4321,' in received
        stream.close()
