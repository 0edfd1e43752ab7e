"""The demo chat and triows.js in a real browser: Debian's chromium, driven by playwright-core.

Two pages chat while Python publishes through the HTTP API; the server is killed and
restarted and a page's socket is cut. The pages must then show every message once and in
order (with Redis: nothing lost), or an exact gap notice (in process: the restart lost the
history, a new epoch). Presence must show joins and leaves. A screenshot of the demo page is
saved to ``tests/output/demo.png``.

``.ci/run`` installs chromium (apt) and playwright-core (npm); without them these tests skip
and say which is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .redisserver import RedisServer, free_port

pytestmark = pytest.mark.real_socket

HERE = Path(__file__).parent
DRIVER = HERE / "browser" / "drive.mjs"
OUTPUT = HERE / "output"
KEY = "browser-test-api-key"


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (HERE / "browser" / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed (npm install --prefix tests/browser)"
    if _chromium() is None:
        return "chromium is not installed (apt-get install -y chromium)"
    return None


def _chromium() -> str | None:
    return (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


class Server:
    """``python -m triows`` in a process of its own, so that it can be killed."""

    def __init__(self, port: int, extra: list[str]) -> None:
        self.port = port
        self.command = [
            sys.executable,
            "-m",
            "triows",
            "--port",
            str(port),
            "--demo",
            "--presence",
            "chat.*",
            "--presence-ttl",
            "3",
            "--api-key",
            KEY,
            "--log-level",
            "warning",
            *extra,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("triows did not become ready")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Browser:
    """The node driver: one JSON command per line in, one JSON answer per line out."""

    def __init__(self) -> None:
        env = {**os.environ, "CHROMIUM": str(_chromium())}
        self.process = subprocess.Popen(
            ["node", str(DRIVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=HERE / "browser",
        )
        self.errors: list[str] = []
        assert self._read(60).get("ready")

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.process.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            raise RuntimeError("the browser driver did not answer")
        answer: dict[str, Any] = json.loads(result[0])
        if "pageerror" in answer:  # a JavaScript error in a page: remembered, fails the test
            self.errors.append(answer["pageerror"])
            return self._read(timeout)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def __call__(self, timeout: float = 60, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self(cmd="quit", timeout=10)
            except (RuntimeError, BrokenPipeError, json.JSONDecodeError):
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture
def browser() -> Iterator[Browser]:
    missing = _missing()
    if missing is not None:
        pytest.skip(missing)
    driver = Browser()
    try:
        yield driver
    finally:
        driver.close()
    assert not driver.errors, driver.errors


def publish(port: int, channel: str, text: str, key: str, deadline: float) -> int:
    """Through the HTTP API, retried (with the same key: never twice) until it is taken."""
    body = json.dumps(
        {"channel": channel, "data": {"name": "python", "text": text}, "idempotency_key": key}
    ).encode()
    while True:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/publish",
            data=body,
            headers={"X-API-Key": KEY, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as answer:
                return int(json.load(answer)["seq"])
        except (OSError, urllib.error.HTTPError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


#: A page's notice that it reconnected and resubscribed: what it missed, or nothing missed.
RECONNECTED = (
    'document.querySelectorAll("#messages li.notice.gap, #messages li.notice.recovered")'
    ".length >= 1"
)


def run_chat(browser: Browser, server: Server, channel: str) -> tuple[list[int], list[Any]]:
    """Two pages chat; Python publishes 30 messages while the server is killed and restarted
    (after the 10th; the last 15 once both pages are back) and page 1's socket is cut (after
    the 20th). Returns the seqs Python got and the pages' final views."""
    url = f"http://127.0.0.1:{server.port}/demo"
    opened = browser(cmd="open", url=url, channel=channel)
    assert [v["state"] for v in opened["views"]] == ["open", "open"]
    assert [len(v["members"]) for v in opened["views"]] == [2, 2]
    browser(cmd="say", page=0, text="hello from alice")
    first = browser(cmd="wait", seq=1)
    assert all("hello from alice" in v["texts"][0] for v in first["views"])
    deadline = time.monotonic() + 60
    seqs = []
    for n in range(30):
        if n == 10:
            server.kill()
            server.start()
        if n == 15:
            # Some were published while the pages were away; the rest only once each page
            # is back (its "missed" or "nothing missed" notice), so they follow the reconnect
            # however slow it is under load.
            for page in (0, 1):
                browser(cmd="waitfor", page=page, js=RECONNECTED, ms=30000, timeout=40)
        if n == 20:
            browser(cmd="cut", page=1)
        seqs.append(publish(server.port, channel, f"m{n}", f"{channel}-{n}", deadline))
        time.sleep(0.03)
    final = browser(cmd="wait", seq=seqs[-1])
    return seqs, final["views"]


def test_chat_survives_a_server_restart_with_nothing_lost(
    browser: Browser, redis_server: RedisServer
) -> None:
    server = Server(free_port(), ["--redis-url", redis_server.url])
    server.start()
    channel = f"chat.redis-{int(time.time() * 1000)}"
    try:
        seqs, views = run_chat(browser, server, channel)
        assert seqs == list(range(2, 32))  # numbering lives in Redis: the restart kept it
        for view in views:
            assert view["seqs"] == list(range(1, 32)), view  # every message once, in order
            assert not [n for n in view["notices"] if n.startswith("missed")], view["notices"]
            assert any("nothing missed" in n for n in view["notices"]), view["notices"]
        # Presence: the pages' old connections died with the server and expire (ttl 3 s);
        # closing page 1 is a leave that page 0 sees.
        settled = browser(cmd="waitmembers", page=0, count=2, seconds=15, timeout=30)
        # Each page is listed by the name it gave (its connection's info).
        assert sorted(settled["views"][0]["members"]) == ["alice", "bob"], settled
        OUTPUT.mkdir(exist_ok=True)
        browser(cmd="screenshot", page=0, path=str(OUTPUT / "demo.png"))
        assert (OUTPUT / "demo.png").stat().st_size > 10_000
        browser(cmd="close", page=1)
        after = browser(cmd="waitmembers", page=0, count=1, seconds=15, timeout=30)
        assert after["views"][0]["members"] == ["alice"], after
    finally:
        server.stop()


def test_a_restart_that_lost_the_history_is_an_exact_gap(browser: Browser) -> None:
    server = Server(free_port(), [])
    server.start()
    try:
        seqs, views = run_chat(browser, server, "chat.memory")
        # In process the restart began a new epoch: numbering starts again at 1.
        restart = seqs.index(1)
        assert seqs[:restart] == list(range(2, 2 + restart))
        assert seqs[restart:] == list(range(1, 31 - restart))
        for view in views:
            notices = [n for n in view["notices"] if n.startswith("missed")]
            assert notices == ["missed an unknown number of messages (epoch changed)"], view
            # Before the gap notice: the old epoch in order; after it, the new one in order.
            items = [item for item in view["items"] if item != "notice"]
            assert items.count("gap") == 1, view
            cut = items.index("gap")
            before, after = items[:cut], items[cut + 1 :]
            assert before == list(range(1, len(before) + 1)), view
            assert after == list(range(after[0], seqs[-1] + 1)), view
            shown = view["seqs"]
            assert shown[-1] == seqs[-1]
    finally:
        server.stop()


def test_triows_js_reconnects_queues_and_acks() -> None:
    """triows.js under Node (``ws`` as its WebSocket): offline queue, acks, timeouts, close."""
    from .conftest import SECRET, make_token

    if shutil.which("node") is None or not (HERE / "bench" / "node_modules" / "ws").is_dir():
        pytest.skip("node or its ws package is not installed (npm install --prefix tests/bench)")
    server = Server(free_port(), ["--jwt-secret", SECRET])
    server.start()
    script = subprocess.Popen(
        ["node", str(HERE / "browser" / "client_check.mjs"), str(server.port), make_token("ann")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert script.stdin is not None
    assert script.stdout is not None
    try:
        for line in script.stdout:
            if line.strip() == "STOP":
                server.kill()
            elif line.strip() == "START":
                server.start()
            else:
                summary = json.loads(line)
                break
            script.stdin.write("ok\n")
            script.stdin.flush()
        assert script.wait(timeout=30) == 0
    finally:
        script.kill()
        server.stop()
    assert summary["first"] == 1
    # Sent on the next connection, to a restarted (in-process) server: a new epoch.
    assert summary["offline"] == {"value": 1}
    assert summary["afterRestart"] == 2
    assert summary["gaps"] == [
        {"type": "gap", "channel": "t", "first": None, "last": None, "reason": "epoch changed"}
    ]
    assert summary["full"] == {"error": "1 publishes already wait for the server"}
    assert summary["timedOut"]["error"].startswith("no ack for publish")
    assert summary["states"][:3] == ["open", "reconnecting", "open"]
    assert summary["finalState"] == "closed"
    assert summary["closedPublish"] == {"error": "client is closed"}
    assert summary["tokenCalls"] >= 2  # asked again for every connect
    # The refusal came as a close code (triows.js asks, refusal=close), with its reason.
    assert summary["refused"] == {
        "error": "client is closed: the server refused the connection: HTTP 401 "
        "(invalid token: DecodeError)"
    }
    assert summary["refusedErrors"] == [401]
    assert summary["refusedConnects"] == 0


def open_page(browser: Browser, url: str, **viewport: int) -> int:
    page: int = browser(cmd="page", url=url, **viewport)["page"]
    return page


def wait_for(browser: Browser, page: int, expression: str, seconds: float = 20) -> None:
    """Until ``expression`` is truthy in the page (a RuntimeError naming it if it never is)."""
    browser(seconds + 30, cmd="waitfor", page=page, js=expression, ms=int(seconds * 1000))


def evaluate(browser: Browser, page: int, js: str, arg: Any = None) -> Any:
    return browser(cmd="eval", page=page, js=js, arg=arg).get("value")


def test_the_demo_fits_a_phone(browser: Browser) -> None:
    """At 390 px nothing spills sideways: the header wraps, the member list goes below the
    messages, and the send button is on the screen."""
    server = Server(free_port(), [])
    server.start()
    try:
        page = open_page(
            browser, f"http://127.0.0.1:{server.port}/demo?name=phone", width=390, height=844
        )
        wait_for(browser, page, "document.getElementById('state').textContent === 'open'")
        layout = evaluate(
            browser,
            page,
            """() => {
              const box = (el) => el.getBoundingClientRect();
              const send = box(document.getElementById("send"));
              const header = document.querySelector("header");
              return {
                width: document.documentElement.scrollWidth,
                viewport: [innerWidth, innerHeight],
                send: [send.left, send.right, send.top, send.bottom],
                headerSpills: header.scrollWidth > header.clientWidth,
                asideRight: box(document.querySelector("aside")).right,
                textWidth: box(document.getElementById("text")).width,
              };
            }""",
        )
        width, height = layout["viewport"]
        assert width == 390
        assert layout["width"] <= width, layout
        assert not layout["headerSpills"], layout
        assert layout["asideRight"] <= width, layout
        left, right, top, bottom = layout["send"]
        assert left >= 0, layout
        assert right <= width, layout
        assert top >= 0, layout
        assert bottom <= height, layout
        assert layout["textWidth"] >= 150, layout  # room to type
        OUTPUT.mkdir(exist_ok=True)
        browser(cmd="screenshot", page=page, path=str(OUTPUT / "demo-phone.png"))
    finally:
        server.stop()


def test_a_bad_token_stops_the_demo_and_says_why(browser: Browser) -> None:
    """401 at the handshake: the page says so and stops ("closed", not "reconnecting" for
    ever); what was typed meanwhile shows as not sent instead of vanishing."""
    from .conftest import SECRET

    server = Server(free_port(), ["--jwt-secret", SECRET])
    server.start()
    try:
        page = open_page(browser, f"http://127.0.0.1:{server.port}/demo?token=bad&name=eve")
        evaluate(
            browser,
            page,
            """() => {
              document.getElementById("text").value = "typed before it gave up";
              document.getElementById("send").click();
            }""",
        )
        wait_for(browser, page, "document.getElementById('state').textContent === 'closed'")
        wait_for(browser, page, "document.querySelector('#messages .failed') !== null")
        shown = evaluate(
            browser,
            page,
            """() => ({
              error: document.getElementById("error").textContent,
              failed: document.querySelector("#messages .failed").textContent,
              pending: document.querySelectorAll("#messages .pending").length,
              connects: window.triows.connects,
            })""",
        )
        assert "refused" in shown["error"], shown
        assert "typed before it gave up" in shown["failed"], shown
        assert "not sent" in shown["failed"], shown
        assert shown["pending"] == 0, shown
        assert shown["connects"] == 0, shown
    finally:
        server.stop()


def test_a_refusal_for_now_is_retried_not_taken_for_a_bad_token(browser: Browser) -> None:
    """``--max-connections-per-ip 1``: a second page is refused with 429, which a browser can
    only read as a close code (4429, "reconnect allowed"): it keeps retrying with backoff and
    connects once the first page is gone. (The old client took two such refusals for a bad
    token and stopped for good.)"""
    server = Server(free_port(), ["--max-connections-per-ip", "1"])
    server.start()
    try:
        first = open_page(browser, f"http://127.0.0.1:{server.port}/demo?name=first")
        wait_for(browser, first, "document.getElementById('state').textContent === 'open'")
        second = open_page(browser, f"http://127.0.0.1:{server.port}/demo?name=second")
        wait_for(browser, second, "window.triows && window.triows.state === 'reconnecting'")
        time.sleep(3)  # several refusals meanwhile
        shown = evaluate(
            browser,
            second,
            "() => ({ state: window.triows.state, "
            "error: document.getElementById('error').textContent })",
        )
        assert shown["state"] != "closed", shown
        browser(cmd="close", page=first)
        wait_for(browser, second, "window.triows.state === 'open'", seconds=15)
    finally:
        server.stop()


def test_an_invalid_channel_name_in_the_demo_is_shown_not_thrown(browser: Browser) -> None:
    server = Server(free_port(), [])
    server.start()
    try:
        page = open_page(browser, f"http://127.0.0.1:{server.port}/demo?name=ann")
        wait_for(browser, page, "document.getElementById('state').textContent === 'open'")
        evaluate(
            browser,
            page,
            """() => {
              document.getElementById("channel").value = "no spaces allowed!";
              document.getElementById("join").click();
            }""",
        )
        wait_for(browser, page, "document.getElementById('error').textContent !== ''")
        error = evaluate(browser, page, "() => document.getElementById('error').textContent")
        assert "cannot join no spaces allowed!" in error, error
        assert "400" in error or "may only contain" in error, error
        # No unhandled rejection (the fixture fails on any page error), and joining a valid
        # channel still works.
        evaluate(
            browser,
            page,
            """() => {
              document.getElementById("channel").value = "chat.fine";
              document.getElementById("join").click();
            }""",
        )
        wait_for(browser, page, "document.getElementById('error').textContent === ''")
    finally:
        server.stop()


RATE_LIMITED_CLIENT = """async ({ channels }) => {
  const { connect } = await import("/triows.js");
  const state = { sockets: 0, subscribes: 0, resumed: [], messages: [] };
  class Counting extends WebSocket {
    constructor(url) {
      super(url);
      state.sockets += 1;
    }
    send(data) {
      if (JSON.parse(data).type === "subscribe") state.subscribes += 1;
      super.send(data);
    }
  }
  const client = connect(`ws://${location.host}/`, { WebSocket: Counting, backoffBase: 0.2 });
  // After the cut each channel is resumed: recovered, or (in process, the channel was
  // forgotten with its last member) a new epoch.
  client.on("recovered", (r) => state.resumed.push(r.channel));
  client.on("gap", (g) => state.resumed.push(g.channel));
  client.on("message", (m) => state.messages.push(m.channel));
  for (const channel of channels) client.subscribe(channel); // made on connect, rate-limited
  window.limited = { client, state };
  await client.waitOpen();
  return true;
}"""


def test_resubscribing_against_a_subscribe_rate_limit_converges(browser: Browser) -> None:
    """``--subscribe-rate 1``: a new connection may subscribe 2 channels at once, then one a
    second. A client following 4 resubscribes them on its connection, in windows, with
    backoff: two connections in all (the first and one after a cut), every channel followed,
    instead of a reconnect storm."""
    channels = ["rl.a", "rl.b", "rl.c", "rl.d"]
    server = Server(free_port(), ["--subscribe-rate", "1"])
    server.start()
    try:
        page = open_page(browser, f"http://127.0.0.1:{server.port}/demo?name=rl")
        evaluate(browser, page, RATE_LIMITED_CLIENT, {"channels": channels})
        all_followed = (
            f"{json.dumps(channels)}.every("
            "(c) => window.limited.client._tracker.resumeFrom(c) !== null)"
        )
        wait_for(browser, page, all_followed, seconds=30)
        evaluate(browser, page, "() => window.limited.client._ws.close(4000, 'cut')")
        wait_for(
            browser,
            page,
            f"new Set(window.limited.state.resumed).size === {len(channels)}",
            seconds=30,
        )
        deadline = time.monotonic() + 20
        for n, channel in enumerate(channels):
            publish(server.port, channel, f"to {channel}", f"rl-{n}", deadline)
        wait_for(browser, page, f"window.limited.state.messages.length === {len(channels)}")
        state = evaluate(
            browser,
            page,
            "() => ({ ...window.limited.state, connects: window.limited.client.connects })",
        )
        assert sorted(state["messages"]) == channels
        assert state["connects"] == 2, state
        assert state["sockets"] == 2, state
        # The limit was met (refused subscribes were sent again), and it was not a storm (the
        # old client sent thousands in as many connections, and never got all four).
        assert 2 * len(channels) < state["subscribes"] < 10 * len(channels), state
    finally:
        server.stop()


STORM_CLIENTS = """async ({ count, base }) => {
  const { connect } = await import("/triows.js");
  window.storm = [];
  for (let n = 0; n < count; n++) {
    const record = { made: [], closed: [] };
    class Recording extends WebSocket {
      constructor(url) {
        super(url);
        record.made.push(performance.now());
        this.addEventListener("close", () => record.closed.push(performance.now()));
      }
    }
    record.client = connect(`ws://${location.host}/`, { WebSocket: Recording, backoffBase: base });
    window.storm.push(record);
  }
  await Promise.all(window.storm.map((r) => r.client.waitOpen()));
  return true;
}"""

STORM_DELAYS = """() => window.storm.map(({ made, closed }) => {
  const next = made.find((t) => t > closed[0]);
  return (next - closed[0]) / 1000;
})"""


def test_twenty_clients_come_back_spread_out_after_a_restart(browser: Browser) -> None:
    """The server shuts down (1001 to everyone) and starts again: 20 clients reconnect after
    random waits in [0, backoffBase], not all in the same instant. The property is the
    spread of each client's own wait from its close to its next attempt: with 20 draws it
    is under 0.3 s only by a one-in-a-billion chance; the old client's were all 0."""
    server = Server(free_port(), [])
    server.start()
    try:
        page = open_page(browser, f"http://127.0.0.1:{server.port}/demo?name=storm")
        evaluate(browser, page, STORM_CLIENTS, {"count": 20, "base": 1.0})
        server.stop()  # SIGTERM: a graceful shutdown, 1001 to every client
        server.start()
        wait_for(
            browser,
            page,
            "window.storm.every((r) => r.client.connects === 2 && r.client.state === 'open')",
            seconds=40,
        )
        delays = evaluate(browser, page, STORM_DELAYS)
        assert len(delays) == 20
        assert all(0 <= d <= 1.5 for d in delays), delays
        assert max(delays) - min(delays) >= 0.3, sorted(delays)
    finally:
        server.stop()


def test_a_page_of_another_origin_imports_triows_js(browser: Browser, tmp_path: Path) -> None:
    """docs/browser.md tells an application served elsewhere (Django on :8000, a static
    site) to ``import`` the client from the triows server: that needs CORS on /triows.js."""
    import http.server

    server = Server(free_port(), [])
    server.start()
    page_html = (
        "<!doctype html><script type=module>"
        f"import('http://127.0.0.1:{server.port}/triows.js')"
        ".then((m) => { window.loaded = typeof m.TriowsClient; })"
        ".catch((e) => { window.loaded = 'failed: ' + e; });"
        "</script>"
    )
    (tmp_path / "index.html").write_text(page_html)
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *a, directory=str(tmp_path)
    )
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        page = open_page(browser, f"http://127.0.0.1:{site.server_address[1]}/index.html")
        wait_for(browser, page, "window.loaded !== undefined")
        assert evaluate(browser, page, "() => window.loaded") == "function"
    finally:
        site.shutdown()
        site.server_close()
        server.stop()


def api_post(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        found: dict[str, Any] = json.load(answer)
        return found


SHOWN_SEQS = (
    "[...document.querySelectorAll('#messages li[data-seq]')].map((li) => Number(li.dataset.seq))"
)


def test_a_late_joiner_sees_the_last_20_and_the_server_can_disconnect_a_page(
    browser: Browser,
) -> None:
    """Names in presence, rewind for a late joiner, "load older" through history, and a
    visible notice when the server ends a subscription or disconnects the page."""
    server = Server(free_port(), [])
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/demo"
        early = open_page(browser, f"{url}?name=ann")
        wait_for(browser, early, "window.triows.state === 'open'")
        deadline = time.monotonic() + 30
        seqs = [
            publish(server.port, "chat.lobby", f"m{n}", f"late-{n}", deadline) for n in range(25)
        ]
        assert seqs == list(range(1, 26))
        late = open_page(browser, f"{url}?name=bea")
        wait_for(browser, late, f"{SHOWN_SEQS}.length === 20")
        assert evaluate(browser, late, f"() => {SHOWN_SEQS}") == list(range(6, 26))
        # The names the pages gave are what presence shows.
        wait_for(
            browser,
            early,
            "[...document.querySelectorAll('#members li')].map((li) => li.textContent).sort()"
            ".join() === 'ann,bea'",
        )
        evaluate(browser, late, "() => document.getElementById('older').click()")
        wait_for(browser, late, f"{SHOWN_SEQS}.length === 25")
        assert evaluate(browser, late, f"() => {SHOWN_SEQS}") == list(range(1, 26))
        assert evaluate(browser, late, "() => document.getElementById('older').hidden") is True
        # The server ends the early page's subscription: said on the page.
        early_id = evaluate(browser, early, "() => window.triows.clientId")
        body = {"client": early_id, "channel": "chat.lobby", "reason": "moderated"}
        assert api_post(server.port, "/api/unsubscribe", body) == {"unsubscribed": 1}
        wait_for(browser, early, "document.querySelector('#messages .notice.server') !== null")
        notice = evaluate(
            browser, early, "() => document.querySelector('#messages .notice.server').textContent"
        )
        assert "moderated" in notice
        # The server disconnects the late page ("do not reconnect"): said, and it stops.
        late_id = evaluate(browser, late, "() => window.triows.clientId")
        body = {"client": late_id, "reason": "kicked by the test"}
        assert api_post(server.port, "/api/disconnect", body) == {"disconnected": 1}
        wait_for(browser, late, "document.getElementById('state').textContent === 'closed'")
        shown = evaluate(
            browser,
            late,
            """() => ({
              notices: [...document.querySelectorAll('#messages .notice.server')]
                .map((li) => li.textContent),
              error: document.getElementById('error').textContent,
            })""",
        )
        assert shown["notices"] == [
            "disconnected by the server: kicked by the test (4600, not reconnecting)"
        ], shown
        assert "kicked by the test" in shown["error"]
    finally:
        server.stop()
