"""triows.api against a real server on real sockets, for the endpoints that act on connections
and read channels (disconnect, unsubscribe, subscribe, revoke, history, channel, presence):
the sync client (in a thread, as Django or Celery call it) and the async one (on Trio), the
server's refusals as ``RequestError`` with its reason, and a retry after a lost answer that
reuses the idempotency key (through a proxy that drops the first answer)."""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

import triows
from triows.api import AsyncClient, ChannelInfo, Client, Member, RequestError

from .test_http_control import KEY, channel_name, nodes, ws_client

pytestmark = pytest.mark.real_socket

Call = Callable[..., Awaitable[Any]]


@asynccontextmanager
async def api_calls(
    mode: str, url: str, key: str = KEY, **options: Any
) -> AsyncIterator[tuple[Any, Call]]:
    """The client of ``mode`` and a way to call its methods from Trio: the sync one in a
    worker thread (as a Django view would), the async one awaited."""
    if mode == "sync":
        client = Client(url, key, **options)

        async def call_sync(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            return await trio.to_thread.run_sync(functools.partial(method, *args, **kwargs))

        try:
            yield client, call_sync
        finally:
            client.close()
    else:
        async with AsyncClient(url, key, **options) as aclient:

            async def call_async(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
                return await method(*args, **kwargs)

            yield aclient, call_async


def url_of(server: triows.Server) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_each_endpoint_through_the_client(mode: str) -> None:
    channel = channel_name()
    async with (
        nodes(1, presence=["ctl-*"]) as (server,),
        api_calls(mode, url_of(server)) as (api, call),
    ):
        async with ws_client(server, "alice", info={"name": "Alice"}) as alice:
            async with ws_client(server, "bob") as bob:
                await alice.request({"type": "subscribe", "channel": channel})
                empty = await call(api.channel, channel)
                assert (empty.seq, empty.subscribers) == (0, 1)
                published = [await call(api.publish, channel, {"n": n}) for n in range(3)]
                assert [p.seq for p in published] == [1, 2, 3]
                delivered = [await alice.receive_type("message") for _ in range(3)]

                page = await call(api.history, channel, limit=2, reverse=True)
                assert (page.channel, page.seq, page.epoch) == (channel, 3, published[0].epoch)
                assert list(page.messages) == delivered[:0:-1]  # exactly as delivered
                older = await call(api.history, channel, since=1)
                assert list(older.messages) == delivered[1:]
                assert await call(api.channel, channel) == ChannelInfo(
                    channel, 1, 3, published[0].epoch
                )
                found = await call(api.presence, channel)
                assert (found.channel, found.count) == (channel, 1)
                assert found.members == (Member(alice.client_id, "alice", {"name": "Alice"}),)

                assert await call(api.subscribe, channel, client=bob.client_id) == 1
                reply = await bob.receive()
                assert (reply["type"], reply["channel"], reply["server"]) == (
                    "subscribed",
                    channel,
                    True,
                )
                assert await call(api.subscribe, channel, user="bob") == 0  # already follows
                members = (await call(api.presence, channel)).members
                assert {m.user_id for m in members} == {"alice", "bob"}
                assert await call(api.unsubscribe, channel, user="bob", reason="kicked") == 1
                assert await bob.receive() == {
                    "type": "unsubscribed",
                    "channel": channel,
                    "reason": "kicked",
                }
                assert await call(api.disconnect, user="bob", code=4000, reason="again") == 1
                assert await bob.closed() == (4000, "again")
                assert await call(api.disconnect, user="bob") == 0
            assert await call(api.revoke, "alice") == 1
            assert await alice.closed() == (4601, "token revoked")
        assert (await call(api.channel, channel)).subscribers == 0


#: Bad input through the client: what is asked, and what the server's reason says.
REFUSED: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
    ("disconnect", (), {"user": "bob", "code": 1000}, "code must be"),
    ("disconnect", (), {"client": "x", "reason": "r" * 500}, "reason"),
    ("unsubscribe", ("a b",), {"user": "bob"}, "channel name"),
    ("subscribe", ("*",), {"user": "bob"}, "channel name"),
    ("revoke", ("",), {}, "user"),
    ("history", ("ok",), {"limit": 1001}, "cap"),
    ("history", ("ok",), {"since": -1}, "since"),
    ("history", ("bad name!",), {}, "channel name"),
    ("channel", ("bad name!",), {}, "channel name"),
    ("presence", ("ok",), {}, "presence is off"),
]


class Counting(httpx.AsyncBaseTransport, httpx.BaseTransport):
    """A real transport that counts the requests it sends, per path."""

    def __init__(self) -> None:
        self.sync = httpx.HTTPTransport()
        self.asynchronous = httpx.AsyncHTTPTransport()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return self.sync.handle_request(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await self.asynchronous.handle_async_request(request)

    def close(self) -> None:
        self.sync.close()

    async def aclose(self) -> None:
        await self.asynchronous.aclose()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_bad_input_raises_the_servers_reason_once_and_changes_nothing(mode: str) -> None:
    transport = Counting()
    async with (
        nodes(1) as (server,),
        api_calls(mode, url_of(server), transport=transport, backoff=0) as (api, call),
    ):
        async with ws_client(server, "bob") as bob:
            await bob.request({"type": "subscribe", "channel": "ok"})
            for method, args, kwargs, reason in REFUSED:
                asked = len(transport.paths)
                with pytest.raises(RequestError) as refused:
                    await call(getattr(api, method), *args, **kwargs)
                assert refused.value.status == 400, (method, args, kwargs)
                assert reason in refused.value.reason, (method, refused.value.reason)
                assert refused.value.body["error"] == refused.value.reason
                assert len(transport.paths) == asked + 1, "a refusal is not retried"
            # Nothing was applied: bob is still connected, subscribed, not revoked.
            assert (await bob.request({"type": "ping"}))["type"] == "pong"
            assert (await call(api.channel, "ok")).subscribers == 1
            assert len(server.access.revocations) == 0
        async with api_calls(mode, url_of(server), "wrong-key-wrong-key") as (wrong, call):
            with pytest.raises(RequestError) as denied:
                await call(wrong.disconnect, user="bob")
            assert (denied.value.status, denied.value.reason) == (401, "wrong API key")


class LosingProxy:
    """A TCP proxy to ``port`` that passes the first ``lose`` requests on to the server but
    never hands their answers back (the connection closes instead): the server did it, the
    client cannot know."""

    def __init__(self, port: int, lose: int = 1) -> None:
        self.port = port
        self.lose = lose
        self.connections = 0
        self.received = b""

    async def handle(self, downstream: trio.SocketStream) -> None:
        self.connections += 1
        losing = self.connections <= self.lose
        upstream = await trio.open_tcp_stream("127.0.0.1", self.port)
        async with upstream, downstream:

            async def requests() -> None:
                async for chunk in downstream:
                    self.received += chunk
                    await upstream.send_all(chunk)

            async def answers(cancel: trio.CancelScope) -> None:
                async for chunk in upstream:
                    if losing:
                        break  # the server answered; the client never hears it
                    await downstream.send_all(chunk)
                cancel.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(requests)
                nursery.start_soon(answers, nursery.cancel_scope)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_lost_answer_is_retried_with_the_same_key_and_published_once(mode: str) -> None:
    channel = channel_name()
    async with nodes(1) as (server,), trio.open_nursery() as nursery:
        proxy = LosingProxy(server.port)
        listeners = await nursery.start(trio.serve_tcp, proxy.handle, 0)
        proxy_url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        async with ws_client(server, "carol") as carol:
            await carol.request({"type": "subscribe", "channel": channel})
            async with api_calls(mode, proxy_url, backoff=0) as (api, call):
                published = await call(api.publish, channel, {"order": 42})
            assert proxy.connections == 2  # the answer to the first was lost
            keys = re.findall(rb'"idempotency_key":"(\w+)"', proxy.received)
            assert len(keys) == 2
            assert keys[0] == keys[1]  # the same key both times
            assert published.seq == 1
            message = await carol.receive_type("message")
            assert (message["seq"], message["data"]) == (1, {"order": 42})
            async with api_calls(mode, url_of(server)) as (api, call):
                # Published once: the channel is at seq 1, its history holds one message.
                assert (await call(api.channel, channel)).seq == 1
                assert len((await call(api.history, channel)).messages) == 1
        nursery.cancel_scope.cancel()
