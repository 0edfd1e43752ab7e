"""Handshake refusals as close codes, for clients that ask (``refusal=close``): a browser cannot
read a refused handshake's HTTP status, but it reads a close code (docs/protocol.md, "Refusals
as close codes"). Clients that do not ask keep the HTTP status."""

from __future__ import annotations

import pytest
import trio
from wsproto.events import Request

from triows.testing import ConnectionRejected, MemoryListener, open_test_server

from .conftest import SECRET, make_token
from .rawclient import RawClient


async def refused_by_close(
    listener: MemoryListener, target: str, *, peer: str | None = None, origin: str | None = None
) -> tuple[int, str | None, bool]:
    """Handshake at ``target``: the close code and reason the server answers with, and whether
    a welcome came first (it must not)."""
    client = RawClient(await listener.connect(peer=peer))
    headers = [(b"origin", origin.encode())] if origin else []
    request = Request(host="t", target=target, extra_headers=headers)
    await client.stream.send_all(client.ws.send(request))
    code = await client.read_until_closed(timeout=10)
    return code, client.close_reason, bool(client.messages)


async def test_a_bad_token_is_a_close_with_4501_for_a_client_that_asks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(jwt_secret=SECRET) as harness:
        for target in ("/?refusal=close", "/?refusal=close&token=garbage"):
            code, reason, welcomed = await refused_by_close(harness.listener, target)
            assert (code, welcomed) == (4501, False)
            assert reason in ("missing token", "invalid token: DecodeError"), reason
        stats = harness.server.statistics()
        assert (stats.rejected, stats.connections_total) == ({401: 2}, 0)
        # Without the opt-in: the HTTP status, as before.
        with pytest.raises(ConnectionRejected) as info:
            async with harness.connect("/?token=garbage"):
                pass
        assert info.value.status_code == 401
        # A good token with the opt-in is an ordinary connection.
        async with harness.connect(f"/?refusal=close&token={make_token('alice')}") as client:
            assert client.welcome["type"] == "welcome"


async def test_transient_refusals_are_in_the_reconnect_range(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(max_connections_per_ip=1, max_connections=3) as harness:
        async with harness.connect(peer="10.0.0.1"):
            code, _, welcomed = await refused_by_close(
                harness.listener, "/?refusal=close", peer="10.0.0.1"
            )
            assert (code, welcomed) == (4429, False)  # HTTP 429: reconnect allowed
            async with harness.connect(peer="10.0.0.2"), harness.connect(peer="10.0.0.3"):
                code, _, _ = await refused_by_close(
                    harness.listener, "/?refusal=close", peer="10.0.0.4"
                )
                assert code == 4453  # HTTP 503 (--max-connections): reconnect allowed
        assert harness.server.statistics().rejected == {429: 1, 503: 1}


async def test_permanent_refusals_are_in_the_do_not_reconnect_range(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(path="/ws", allow_origins=["https://ok.test"]) as harness:
        code, _, _ = await refused_by_close(harness.listener, "/elsewhere?refusal=close")
        assert code == 4504
        code, _, _ = await refused_by_close(
            harness.listener, "/ws?refusal=close", origin="https://evil.test"
        )
        assert code == 4503


async def test_a_refused_client_that_never_answers_the_close_is_let_go(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The refusal waits for the client's close frame only within the handshake's bounds."""
    async with open_test_server(jwt_secret=SECRET, handshake_timeout=5) as harness:
        stream = await harness.listener.connect()
        client = RawClient(stream)
        await stream.send_all(client.ws.send(Request(host="t", target="/?refusal=close")))
        with trio.fail_after(10):
            while await stream.receive_some(65536):
                pass  # read, never answer: the server closes the stream itself
        await trio.sleep(1)
        assert harness.server.statistics().connections == 0
