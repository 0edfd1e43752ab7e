"""Every limit holds under concurrency, from outside: real sockets, many clients at once, several
client addresses (loopback has the whole 127.0.0.0/8), and peers that misbehave on purpose."""

from __future__ import annotations

import base64
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import triows

from .conftest import make_token

pytestmark = pytest.mark.real_socket


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[triows.Server]:
    async with trio.open_nursery() as nursery:
        config = triows.Config(host="127.0.0.1", port=0, **overrides)
        server: triows.Server = await nursery.start(triows.serve, config)
        with trio.fail_after(60):
            yield server
        await server.aclose()


async def open_from(port: int, source: str = "127.0.0.1") -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return sock


def upgrade(headers: dict[str, str] | None = None, path: str = "/") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: triows.test",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def status_of(sock: trio.socket.SocketType) -> int:
    """The status of the answer on ``sock`` (0 when the server closed without one)."""
    data = b""
    while b"\r\n" not in data:
        chunk = await sock.recv(4096)
        if not chunk:
            return 0
        data += chunk
    return int(data.split(b" ", 2)[1])


def _blocking_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return 0
        data += chunk
    return int(data.split(b" ", 2)[1])


async def handshakes_at_once(
    port: int, heads: list[bytes], source: str = "127.0.0.1"
) -> tuple[list[int], list[socket.socket]]:
    """From a thread of its own (outside the server's event loop, as real clients are): open
    one socket per head, send every head before reading any answer, so that the handshakes
    are in progress together, then read every status. The sockets stay open."""

    def run() -> tuple[list[int], list[socket.socket]]:
        socks = []
        for _ in heads:
            sock = socket.create_connection(
                ("127.0.0.1", port), timeout=20, source_address=(source, 0)
            )
            socks.append(sock)
        for sock, head in zip(socks, heads, strict=True):
            sock.sendall(head)
        return [_blocking_status(sock) for sock in socks], socks

    return await trio.to_thread.run_sync(run)


async def slow_authenticate(request: triows.HandshakeRequest) -> triows.Principal:
    """An application hook that looks the user up somewhere (a database): it awaits."""
    await trio.sleep(0.05)
    return triows.Principal(user_id=request.query.get("user"))


@pytest.mark.parametrize("hook", [None, slow_authenticate], ids=["no-auth", "async-auth"])
async def test_concurrent_handshakes_cannot_pass_the_per_address_limit(hook: Any) -> None:
    async with running(max_connections_per_ip=2, authenticate=hook) as server:
        statuses, socks = await handshakes_at_once(server.port, [upgrade() for _ in range(40)])
        assert statuses.count(101) == 2, statuses
        assert set(statuses) == {101, 429}
        assert len(server.connections()) == 2
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("kind", ["jwt", "async-auth"])
async def test_concurrent_handshakes_cannot_pass_the_per_user_limit(kind: str, secret: str) -> None:
    if kind == "jwt":
        options: dict[str, Any] = {"jwt_secret": secret}

        def head(user: str) -> bytes:
            return upgrade({"Authorization": f"Bearer {make_token(user)}"})
    else:
        options = {"authenticate": slow_authenticate}

        def head(user: str) -> bytes:
            return upgrade(path=f"/?user={user}")

    async with running(max_connections_per_user=2, **options) as server:
        statuses, socks = await handshakes_at_once(server.port, [head("ann") for _ in range(40)])
        assert statuses.count(101) == 2, statuses
        assert set(statuses) == {101, 429}
        # Another user is another count.
        other, more = await handshakes_at_once(server.port, [head("bob")])
        assert other == [101]
        for sock in socks + more:
            sock.close()


async def test_idle_sockets_from_one_address_do_not_lock_out_the_others() -> None:
    async with running(max_connections=100, max_pending_per_ip=16, handshake_timeout=30) as server:
        idle = [await open_from(server.port, "127.0.0.2") for _ in range(150)]
        await trio.sleep(0.2)  # accepted, waiting for a request that never comes
        assert server.admission.pending <= 16
        statuses, socks = await handshakes_at_once(server.port, [upgrade()], source="127.0.0.3")
        assert statuses == [101]
        probe = await open_from(server.port, "127.0.0.4")
        await probe.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await status_of(probe) == 200
        for sock in idle + socks + [probe]:
            sock.close()


async def test_slow_bodies_to_health_do_not_make_the_probes_fail() -> None:
    # No per-address bound on waiting streams here: all 300 reach their request.
    async with running(handshake_timeout=30, max_pending_per_ip=0) as server:
        # Each announces a body it will never send: /health must not wait for it.
        slow = [await open_from(server.port, "127.0.0.2") for _ in range(300)]
        for sock in slow:
            await sock.send(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        for source in ("127.0.0.3", "127.0.0.4"):
            for path in ("/health", "/ready"):
                probe = await open_from(server.port, source)
                await probe.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                assert await status_of(probe) == 200
                probe.close()
        assert {await status_of(sock) for sock in slow} == {200}
        for sock in slow:
            sock.close()


async def test_http_requests_are_bounded_per_address_and_in_all() -> None:
    async with running(
        api_key="k" * 16, max_http_requests=8, max_http_requests_per_ip=3, handshake_timeout=30
    ) as server:
        head = (
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: " + b"k" * 16 + b"\r\n"
            b"Content-Length: 100\r\n\r\n"
        )

        async def stuck(source: str) -> trio.socket.SocketType:
            sock = await open_from(server.port, source)
            await sock.send(head)  # the body never comes: the request holds its place
            return sock

        held = [await stuck("127.0.0.2") for _ in range(3)]
        refused = await stuck("127.0.0.2")
        assert await status_of(refused) == 429  # this address has its share
        held += [await stuck(f"127.0.0.{n}") for n in (3, 4, 5, 6, 7)]
        full = await stuck("127.0.0.8")
        assert await status_of(full) == 503  # the server has its share
        probe = await open_from(server.port, "127.0.0.9")
        await probe.send(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await status_of(probe) == 200  # probes are outside the pool
        for sock in [*held, refused, full, probe]:
            sock.close()


async def test_a_repeated_forwarded_for_line_cannot_pick_the_client_address() -> None:
    # A trusted proxy (HAProxy's option forwardfor) appends its own line after the client's.
    async with running(trusted_proxies=["127.0.0.0/8"], max_connections_per_ip=1) as server:
        heads = [
            upgrade({"X-Forwarded-For": f"198.51.100.{n}"}).replace(
                b"\r\n\r\n", b"\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n"
            )
            for n in range(4)
        ]
        statuses, socks = await handshakes_at_once(server.port, heads)
        assert sorted(statuses) == [101, 429, 429, 429]
        (conn,) = server.connection_statistics()
        assert conn.remote == "203.0.113.9"
        for sock in socks:
            sock.close()


async def test_a_refusal_being_written_holds_no_connection_place(secret: str) -> None:
    async with running(jwt_secret=secret, max_connections=2) as server:

        def refused_clients() -> list[socket.socket]:
            """Bad tokens, from clients that read nothing and do not close: their 401s
            linger (the server waits a moment for them to close)."""
            socks = []
            for _ in range(2):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                sock.sendall(upgrade({"Authorization": "Bearer nonsense"}))
                socks.append(sock)
            return socks

        lingering = await trio.to_thread.run_sync(refused_clients)
        await trio.sleep(0.2)  # refused, the answers written
        auth = {"Authorization": f"Bearer {make_token('ann')}"}
        statuses, socks = await handshakes_at_once(server.port, [upgrade(auth)])
        assert statuses == [101]
        for sock in lingering + socks:
            sock.close()


async def test_a_crowd_of_idle_sockets_cannot_lock_out_a_probe() -> None:
    async with running(max_pending=32, max_pending_per_ip=8, handshake_timeout=30) as server:
        idle = [await open_from(server.port, f"127.0.1.{n // 8}") for n in range(32)]
        await trio.sleep(0.2)  # every place taken, by 4 addresses
        probe = await open_from(server.port, "127.0.2.1")
        await probe.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await status_of(probe) == 200  # the oldest idle socket made room
        assert server.admission.refused["evicted"] >= 1
        for sock in [*idle, probe]:
            sock.close()


async def test_requests_without_the_key_or_with_an_unsent_body_to_a_get_hold_no_place() -> None:
    key = "k" * 16
    async with running(api_key=key, max_http_requests=2, handshake_timeout=30) as server:
        held = []
        for head in (
            # A GET reads no body: answered at once whatever it announces.
            b"GET /triows.js HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n",
            b"GET /triows.js HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n",
            # Without the key: refused before it takes a place or waits for its body.
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
        ):
            sock = await open_from(server.port, "127.0.0.2")
            await sock.send(head)
            held.append(sock)
        assert [await status_of(sock) for sock in held] == [200, 200, 401, 401]
        body = b'{"channel":"a","data":1}'
        keyed = await open_from(server.port, "127.0.0.3")
        await keyed.send(
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: " + key.encode() + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        assert await status_of(keyed) == 200
        for sock in [*held, keyed]:
            sock.close()


async def test_a_client_that_resets_mid_body_is_no_server_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = "k" * 16
    async with running(api_key=key) as server:
        for _ in range(5):
            sock = await open_from(server.port)
            await sock.send(
                b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: " + key.encode() + b"\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            await trio.sleep(0.05)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset, mid-body
        await trio.sleep(0.2)
        assert 500 not in server.http_requests
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_clients_of_one_ipv6_network_share_their_per_address_limit() -> None:
    """One subscriber line gets a whole /64: counted per full address, a client could pick a
    new address for each connection."""
    async with running(trusted_proxies=["127.0.0.0/8"], max_connections_per_ip=1) as server:
        heads = [upgrade({"X-Forwarded-For": f"2001:db8:1:2::{n}"}) for n in range(1, 5)]
        heads.append(upgrade({"X-Forwarded-For": "2001:db8:1:3::1"}))  # another /64
        statuses, socks = await handshakes_at_once(server.port, heads)
        assert sorted(statuses) == [101, 101, 429, 429, 429]
        for sock in socks:
            sock.close()
