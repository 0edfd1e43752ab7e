"""Chromium's own ``EventSource`` follows a channel through a server restart and a page reload.

The page is examples/llm_stream.html, served from another origin (a cross-origin stream, as
when the page comes from the application and events from triows). Python publishes 30 chunks
through the HTTP API; after the 10th the server restarts, after the 20th the page reloads (it
opens a new EventSource with the last id it kept). With Redis the page must show every chunk
once, in order; in process, where the restart lost the history and began a new epoch, the
old epoch in order, exactly one gap "epoch changed", then the new epoch in order.
"""

from __future__ import annotations

import functools
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .redisserver import RedisServer, free_port
from .test_browser import Browser, Server, evaluate, open_page, publish, wait_for
from .test_browser import browser as browser  # the fixture

pytestmark = pytest.mark.real_socket

PAGE = Path(__file__).resolve().parent.parent / "examples" / "llm_stream.html"


class _Page(http.server.BaseHTTPRequestHandler):
    def __init__(self, *args: Any, body: bytes, **kwargs: Any) -> None:
        self.body = body
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def page_server() -> Iterator[tuple[int, Server]]:
    """The page on a port of its own, pointing at a triows port the test starts later."""
    triows_port, page_port = free_port(), free_port()
    body = PAGE.read_text().replace("__SSE_BASE__", f"http://127.0.0.1:{triows_port}").encode()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", page_port), functools.partial(_Page, body=body)
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield page_port, Server(triows_port, ["--sse-retry", "0.3"])
    finally:
        httpd.shutdown()
        thread.join(timeout=10)


def follow_through_restart(
    browser: Browser,
    page_port: int,
    server: Server,
    completion: str,
    *,
    crash: bool,
    publisher: Server | None = None,
) -> tuple[list[int], dict[str, Any]]:
    """Publish 30 chunks (through ``publisher``, or the page's server); the page's server
    restarts after the 10th (chunks 10-14 are published while it is down when another node
    publishes them); after the 20th the page stops reading, 5 more are published, and it
    reloads."""
    page = open_page(browser, f"http://127.0.0.1:{page_port}/?completion={completion}")
    wait_for(browser, page, "window.view.subscribed >= 1")
    channel = f"completion.{completion}"
    deadline = time.monotonic() + 60
    seqs = []
    for n in range(30):
        if n == 10:
            if crash:
                server.kill()
            else:
                server.stop()  # SIGTERM: the graceful path, an `event: close` to the page
            if publisher is None:
                server.start()
        if n == 15 and publisher is not None:
            server.start()
        if n == 20:
            evaluate(browser, page, "() => source.close()")  # the tab is away
        if n == 25:
            browser(cmd="reload", page=page)  # comes back: a new EventSource, the kept id
            wait_for(browser, page, "window.view.subscribed >= 1")
        port = (publisher or server).port
        seqs.append(publish(port, channel, f"t{n} ", f"{completion}-{n}", deadline))
        time.sleep(0.02)
    last = seqs[-1]
    wait_for(browser, page, f"window.view.seqs.includes({last}) && window.view.seqs.length >= 2")
    # Nothing more comes: what the page shows now is final.
    time.sleep(0.3)
    view: dict[str, Any] = evaluate(browser, page, "() => window.view")
    return seqs, view


def test_event_source_follows_a_restart_and_a_reload_with_nothing_lost(
    browser: Browser, page_server: tuple[int, Server], redis_server: RedisServer
) -> None:
    page_port, server = page_server
    server.command += ["--redis-url", redis_server.url]
    server.start()
    publisher = Server(free_port(), ["--redis-url", redis_server.url])
    publisher.start()
    completion = f"redis{int(time.time() * 1000)}"
    try:
        seqs, view = follow_through_restart(
            browser, page_port, server, completion, crash=True, publisher=publisher
        )
        assert seqs == list(range(1, 31))  # numbering lives in Redis: the restart kept it
        assert view["seqs"] == seqs, view  # every chunk once, in order, across both
        assert view["gaps"] == [], view
        assert view["text"] == "".join(f"t{n} " for n in range(30)), view
    finally:
        server.stop()
        publisher.stop()


def test_event_source_shows_the_exact_gap_of_a_restart_that_lost_history(
    browser: Browser, page_server: tuple[int, Server]
) -> None:
    page_port, server = page_server
    server.start()
    try:
        seqs, view = follow_through_restart(browser, page_port, server, "memory", crash=False)
        restart = seqs.index(1, 1)  # a new epoch: numbering starts again
        assert seqs == list(range(1, restart + 1)) + list(range(1, 31 - restart))
        assert view["gaps"] == [
            {"channel": "completion.memory", "first": None, "last": None, "reason": "epoch changed"}
        ], view
        # The graceful stop said so before the connection ended.
        assert view["closes"] == [{"code": 1001, "reason": "Server shutting down"}], view
        shown = view["seqs"]
        before = shown[:restart]
        after = shown[restart:]
        assert before == list(range(1, restart + 1)), view  # the old epoch, all of it
        assert after == list(range(after[0], seqs[-1] + 1)), view  # the new one, in order
    finally:
        server.stop()
