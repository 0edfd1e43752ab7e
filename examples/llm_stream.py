"""Stream generated text (LLM tokens) to a browser over Server-Sent Events; a reload resumes it.

    .venv/bin/python examples/llm_stream.py      # then open http://127.0.0.1:8000/

The page asks the backend (``POST /generate``) for a completion and reads it from triows with
``EventSource`` on the completion's own channel. The backend publishes each chunk as it is
generated, with ``Server.publish`` (in this process) or through ``POST /api/publish`` (a
backend in another process: :func:`publish_over_http`). Every event's id holds the stream's
position; the page keeps the last one (and the text so far) in ``sessionStorage``, so that a
reload opens a new ``EventSource`` with ``last_event_id=`` and the completion goes on where it
was, nothing missed and nothing twice (``EventSource`` itself sends the id back as
``Last-Event-ID`` when the connection drops). A completion's channel keeps its history for 10
minutes (``channel_history``): a page that comes back within that time misses nothing.

The model here is a stand-in that yields words with a delay; put a real one in
:func:`fake_model`'s place.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import trio

import triows

PAGE = Path(__file__).with_name("llm_stream.html")
ANSWER = (
    "Server-Sent Events are a plain HTTP response that never ends: the server writes one "
    "event after another, each with an id. When the connection drops, the browser reconnects "
    "by itself and sends the last id back, and triows resumes every channel from there."
)


def config(port: int = 8080) -> triows.Config:
    return triows.Config(
        port=port,
        # The whole completion stays for a resume: up to 5000 chunks, for 10 minutes.
        channel_history=[("completion.*", 5000, 600.0)],
        api_key="llm-example-api-key",  # for publish_over_http; keep a real one secret
    )


async def fake_model(prompt: str, delay: float) -> AsyncIterator[str]:
    """Tokens, as a model would yield them (words here)."""
    for word in ANSWER.split(" "):
        await trio.sleep(delay)
        yield word + " "


async def generate(
    server: triows.Server, completion: str, prompt: str, *, delay: float = 0.05
) -> int:
    """Publish a completion on ``completion.<id>``, chunk by chunk, then ``{"done": true}``;
    returns the last chunk's seq."""
    channel = f"completion.{completion}"
    async for token in fake_model(prompt, delay):
        await server.publish(channel, {"text": token})
    return await server.publish(channel, {"done": True})


def publish_over_http(base_url: str, api_key: str, completion: str, chunk: object, n: int) -> int:
    """One chunk through the HTTP API, from a backend in another process. The idempotency key
    makes a retry after a timeout safe: it is not published twice."""
    body = json.dumps(
        {
            "channel": f"completion.{completion}",
            "data": chunk,
            "idempotency_key": f"{completion}-{n}",
        }
    ).encode()
    request = urllib.request.Request(
        f"{base_url}/api/publish",
        data=body,
        headers={"X-API-Key": api_key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        return int(json.load(answer)["seq"])


#: Completions generated at once; more asks are answered 503 (each one is a task and a channel).
MAX_GENERATING = 16


async def serve_page(
    server: triows.Server, nursery: trio.Nursery, port: int, sse_base: str
) -> None:
    """The page and ``POST /generate``: a minimal HTTP server for this example only. A client
    that sends garbage or leaves midway costs itself only, never the server."""
    generating = trio.CapacityLimiter(MAX_GENERATING)

    async def generate_one(completion: str, prompt: str) -> None:
        try:
            await generate(server, completion, prompt)
        finally:
            generating.release_on_behalf_of(completion)

    async def respond(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 16384:
            data = await stream.receive_some(4096)
            if not data:
                return
            head += data
        method, _, rest = head.partition(b" ")
        url = urlsplit(rest.partition(b" ")[0].decode("latin-1"))
        status, kind = "200 OK", "text/html; charset=utf-8"
        if method == b"POST" and url.path == "/generate":
            completion = secrets.token_hex(6)
            try:
                generating.acquire_on_behalf_of_nowait(completion)
            except trio.WouldBlock:
                status, body = "503 Service Unavailable", b'{"error":"busy, try again"}'
            else:
                prompt = parse_qs(url.query).get("prompt", [""])[0]
                nursery.start_soon(generate_one, completion, prompt)
                body = json.dumps({"completion": completion}).encode()
            kind = "application/json"
        elif method == b"GET":
            body = PAGE.read_text().replace("__SSE_BASE__", sse_base).encode()
        else:
            status, kind, body = "400 Bad Request", "text/plain", b"GET / or POST /generate\n"
        await stream.send_all(
            f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(10):
                await respond(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client left (a reset): its loss

    await trio.serve_tcp(handle, port, host="127.0.0.1")


async def main(port: int = 8080, page_port: int = 8000) -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    async with trio.open_nursery() as nursery:
        server: triows.Server = await nursery.start(triows.serve, config(port))
        nursery.start_soon(serve_page, server, nursery, page_port, f"http://127.0.0.1:{port}")
        print(f"open http://127.0.0.1:{page_port}/")


if __name__ == "__main__":
    try:
        ports = [int(arg) for arg in sys.argv[1:3]]
        trio.run(functools.partial(main, *ports))
    except KeyboardInterrupt:
        pass
