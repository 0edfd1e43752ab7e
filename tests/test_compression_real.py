"""permessage-deflate over real sockets: negotiated by a real client (websockets, compression on
by default), and a deflate bomb written byte by byte on a raw socket."""

from __future__ import annotations

import json
import zlib

import pytest
import trio
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import connect

import triows

from .wireclient import TEXT, WireClient, encode_frame

pytestmark = pytest.mark.real_socket

DATA = {"items": [{"id": n, "name": f"item {n}", "tags": ["a", "b", "c"]} for n in range(30)]}


async def start_server(nursery: trio.Nursery, **overrides: object) -> triows.Server:
    config = triows.Config(port=0, **overrides)  # type: ignore[arg-type]
    server: triows.Server = await nursery.start(triows.serve, config)
    return server


def websockets_session(url: str, window: int | None, ready: trio.Event) -> dict[str, object]:
    """A websockets client: subscribe, publish a compressed message, read two broadcasts."""
    extensions = (
        None if window is None else [ClientPerMessageDeflateFactory(server_max_window_bits=window)]
    )
    with connect(url, extensions=extensions) as ws:
        assert ws.response is not None
        answered = ws.response.headers.get("Sec-WebSocket-Extensions")
        json.loads(ws.recv())  # welcome
        ws.send(json.dumps({"type": "subscribe", "channel": "c"}))
        json.loads(ws.recv())
        ws.send(json.dumps({"type": "publish", "channel": "other", "data": DATA, "id": 1}))
        ack = json.loads(ws.recv())
        trio.from_thread.run_sync(ready.set)
        messages = [json.loads(ws.recv()) for _ in range(2)]
    return {"extensions": answered, "ack": ack, "messages": messages}


@pytest.mark.parametrize(
    ("window", "answer", "compressed"),
    [
        (None, "", 2),
        # A 512-byte window: only the message that fits it may come compressed.
        (9, "; server_max_window_bits=9", 1),
    ],
)
async def test_websockets_negotiates_and_reads_compressed_broadcasts(
    window: int | None, answer: str, compressed: int
) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery)
        ready = trio.Event()
        result: dict[str, object] = {}

        async def client() -> None:
            url = f"ws://127.0.0.1:{server.port}/"
            result.update(await trio.to_thread.run_sync(websockets_session, url, window, ready))

        with trio.fail_after(20):
            async with trio.open_nursery() as clients:
                clients.start_soon(client)
                await ready.wait()
                await server.publish("c", DATA)  # ~1.5 KiB
                await server.publish("c", {"s": "y" * 300})  # ~450 bytes: under 512, over 256
        assert result["extensions"] == (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover" + answer
        )
        assert result["ack"] == {"type": "ack", "id": 1, "seq": 1}
        messages = result["messages"]
        assert isinstance(messages, list)
        assert [m["data"] for m in messages] == [DATA, {"s": "y" * 300}]
        assert server.fanout.compressed_deliveries == compressed
        await server.aclose()


async def test_a_deflate_bomb_gets_1009() -> None:
    """64 MiB of zeros in ~64 KiB of DEFLATE, against a 64 KiB limit."""
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = bomb.compress(b"\0" * (64 << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, close_timeout=0.2)  # the client sends no close
        with trio.fail_after(20):
            client = await WireClient.connect(server.port, extensions="permessage-deflate")
            await client.send_raw(encode_frame(TEXT, data[:-4], rsv=4))
            await client.read_to_end()
        assert client.close is not None
        assert client.close[0] == 1009
        await client.aclose()
        await server.aclose()


async def test_rsv1_without_negotiation_gets_1002() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, compression=False, close_timeout=0.2)
        with trio.fail_after(20):
            client = await WireClient.connect(server.port, extensions="permessage-deflate")
            assert b"Sec-WebSocket-Extensions" not in client.head
            await client.send_raw(encode_frame(TEXT, b"\x4b\x04\x00", rsv=4))
            await client.read_to_end()
        assert client.close is not None
        assert client.close[0] == 1002
        await client.aclose()
        await server.aclose()


async def test_a_malformed_extensions_header_gets_400() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery)
        with trio.fail_after(20):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            await stream.send_all(
                b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Extensions: permessage-deflate; ;\r\n\r\n"
            )
            answer = b""
            while chunk := await stream.receive_some(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert b"Sec-WebSocket-Extensions" in answer
        await stream.aclose()
        await server.aclose()


async def test_across_redis_a_broadcast_is_compressed_once_on_each_node(redis_url: str) -> None:
    """The Redis feed delivers through the same fan-out: compressed once on the node whose
    deflate subscribers receive it."""
    from triows.testing import open_test_server

    from .rawclient import RawClient
    from .test_redis_cluster import channel_name, wait_until_up

    channel = channel_name("deflate")
    async with (
        open_test_server(redis_url=redis_url) as a,
        open_test_server(redis_url=redis_url) as b,
    ):
        await wait_until_up(a.server)
        await wait_until_up(b.server)
        with trio.fail_after(20):
            readers = [await RawClient.connect(a.listener, deflate=True) for _ in range(3)]
            for reader in readers:
                await reader.subscribe(channel)
            await b.server.publish(channel, DATA)
            for reader in readers:
                await reader.read_until(lambda c: bool(c.of_type("message")))
                assert reader.of_type("message")[0]["data"] == DATA
        fanout = a.server.fanout
        assert (fanout.compressed, fanout.compressed_deliveries) == (1, 3)
