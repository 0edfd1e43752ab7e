"""examples/llm_stream.py against the real server: a completion streamed over SSE, resumed
mid-stream by its last event id, published in process or through the HTTP API."""

from __future__ import annotations

import json
import socket
import struct

import attrs
import pytest
import trio

import triows

from .sseclient import SseClient
from .test_examples import load

pytestmark = pytest.mark.real_socket


async def read_completion(client: SseClient, until_done: bool = True) -> tuple[str, list[int]]:
    text, seqs = "", []
    while True:
        event = await client.next()
        assert event is not None
        if event.name != "message":
            assert event.name == "subscribed", event
            continue
        message = event.json()
        seqs.append(message["seq"])
        if message["data"].get("done"):
            return text, seqs
        text += message["data"]["text"]
        if not until_done and len(seqs) == 10:
            return text, seqs


async def test_a_completion_resumes_mid_stream() -> None:
    example = load("llm_stream")
    config = attrs.evolve(example.config(), host="127.0.0.1", port=0)
    async with trio.open_nursery() as nursery:
        server: triows.Server = await nursery.start(triows.serve, config)
        with trio.fail_after(20):
            first = await SseClient.open(server.port, "channel=completion.c1")
            await first.events(1)  # subscribed: the stream starts before the generation
            done = trio.Event()

            async def run() -> None:
                await example.generate(server, "c1", "why?", delay=0.002)
                done.set()

            nursery.start_soon(run)
            head, seqs = await read_completion(first, until_done=False)
            last_id = first.last_id
            await first.aclose()  # a reload, mid-stream
            await done.wait()
            again = await SseClient.open(server.port, "channel=completion.c1", last_id=last_id)
            tail, more = await read_completion(again)
            assert head + tail == example.ANSWER + " "  # nothing missed, nothing twice
            assert seqs + more == list(range(1, len(seqs) + len(more) + 1))
            await again.aclose()
            await server.aclose()


async def test_the_page_and_generate_endpoint() -> None:
    example = load("llm_stream")
    config = attrs.evolve(example.config(), host="127.0.0.1", port=0)
    async with trio.open_nursery() as nursery:
        server: triows.Server = await nursery.start(triows.serve, config)
        with trio.fail_after(20):
            page_port = _free_port()
            nursery.start_soon(
                example.serve_page, server, nursery, page_port, f"http://127.0.0.1:{server.port}"
            )
            page = None
            while page is None:  # until it listens
                await trio.sleep(0.02)
                page = await _request(page_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"EventSource" in page
            assert f"http://127.0.0.1:{server.port}".encode() in page
            answer = await _request(page_port, b"POST /generate?prompt=hi HTTP/1.1\r\n\r\n")
            assert answer is not None
            completion = json.loads(answer.partition(b"\r\n\r\n")[2])["completion"]
            client = await SseClient.open(server.port, f"channel=completion.{completion}")
            # Generated in the background (50 ms a word); whatever was published before the
            # stream opened is not replayed (no last id), but the end always comes.
            while (event := await client.next()) is not None:
                if event.name == "message" and event.json()["data"].get("done"):
                    break
            assert event is not None
            await client.aclose()
            nursery.cancel_scope.cancel()


def _free_port() -> int:
    from .redisserver import free_port

    return free_port()


async def _request(port: int, data: bytes) -> bytes | None:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return None
    async with stream:
        await stream.send_all(data)
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
        return answer


async def test_chunks_published_over_http() -> None:
    example = load("llm_stream")
    config = attrs.evolve(example.config(), host="127.0.0.1", port=0)
    async with trio.open_nursery() as nursery:
        server: triows.Server = await nursery.start(triows.serve, config)
        with trio.fail_after(20):
            client = await SseClient.open(server.port, "channel=completion.h1")
            await client.events(1)
            base = f"http://127.0.0.1:{server.port}"
            key = config.api_key
            chunks: list[object] = [{"text": "Hello "}, {"text": "world"}, {"done": True}]
            for n, chunk in enumerate(chunks):
                seq = await trio.to_thread.run_sync(
                    example.publish_over_http, base, key, "h1", chunk, n
                )
                assert seq == n + 1
            # The same key again (a retry after a timeout): not published twice.
            assert (
                await trio.to_thread.run_sync(
                    example.publish_over_http, base, key, "h1", chunks[0], 0
                )
                == 1
            )
            text, seqs = await read_completion(client)
            assert (text, seqs) == ("Hello world", [1, 2, 3])
            await client.aclose()
            await server.aclose()


async def test_a_bad_or_vanished_client_does_not_bring_the_page_server_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The example is what users copy: one client's garbage must cost that client only.
    example = load("llm_stream")
    monkeypatch.setattr(example, "MAX_GENERATING", 1)
    config = attrs.evolve(example.config(), host="127.0.0.1", port=0)
    async with trio.open_nursery() as nursery:
        server: triows.Server = await nursery.start(triows.serve, config)
        with trio.fail_after(20):
            page_port = _free_port()
            nursery.start_soon(
                example.serve_page, server, nursery, page_port, f"http://127.0.0.1:{server.port}"
            )
            while await _request(page_port, b"GET / HTTP/1.1\r\n\r\n") is None:  # noqa: ASYNC110 - until it listens
                await trio.sleep(0.02)
            garbage = await _request(page_port, b"garbage\r\n\r\n")
            assert garbage is not None
            assert garbage.startswith(b"HTTP/1.1 400 ")
            # Generations at once are bounded: one more is told to come back.
            first = await _request(page_port, b"POST /generate HTTP/1.1\r\n\r\n")
            busy = await _request(page_port, b"POST /generate HTTP/1.1\r\n\r\n")
            assert first is not None
            assert first.startswith(b"HTTP/1.1 200 ")
            assert busy is not None
            assert busy.startswith(b"HTTP/1.1 503 ")
            for _ in range(20):  # asks for the page and leaves with a reset at once
                stream = await trio.open_tcp_stream("127.0.0.1", page_port)
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await stream.send_all(b"GET / HTTP/1.1\r\n\r\n")
                await stream.aclose()
            page = await _request(page_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert page is not None
            assert b"EventSource" in page
            await server.aclose()
            nursery.cancel_scope.cancel()
