"""Tokens from identity providers, end to end: a public key from a PEM file, and a key set
served over real HTTP on loopback by the test (real clock: the fetch runs in a thread)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from trio_websocket import ConnectionRejected

from triows import Config, Principal
from triows._cli.options import parse_config
from triows._server.token_keys import fetch_over_http
from triows.testing import open_test_server

from .conftest import SECRET
from .core.test_jwt_keys import forged_hs256

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC_PEM = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def rs256(kid: str | None = "r1", key: Any = RSA_KEY, **claims: Any) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode({"sub": "ann", **claims}, key, algorithm="RS256", headers=headers)


def es256(kid: str = "e1", **claims: Any) -> str:
    return jwt.encode({"sub": "eve", **claims}, EC_KEY, algorithm="ES256", headers={"kid": kid})


def jwk(private: Any, kid: str) -> dict[str, Any]:
    kind = jwt.algorithms.RSAAlgorithm if isinstance(private, rsa.RSAPrivateKey) else None
    text = (kind or jwt.algorithms.ECAlgorithm).to_jwk(private.public_key())
    return {**json.loads(text), "kid": kid}


class IdentityProvider:
    """A JWKS endpoint on 127.0.0.1: counts requests; can hang (until released)."""

    def __init__(self) -> None:
        self.keys = [jwk(RSA_KEY, "r1"), jwk(EC_KEY, "e1")]
        self.requests = 0
        self.hang = False
        self.release = threading.Event()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.requests += 1
                if provider.hang:
                    provider.release.wait(10)
                    return
                body = json.dumps({"keys": provider.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"


@pytest.fixture
def provider() -> Iterator[IdentityProvider]:
    idp = IdentityProvider()
    thread = threading.Thread(target=idp.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield idp
    finally:
        idp.release.set()
        idp.server.shutdown()
        idp.server.server_close()
        thread.join(10)


async def refused(harness: Any, token: str) -> tuple[int, str]:
    with pytest.raises(ConnectionRejected) as info:
        async with harness.connect(token=token):
            pass
    return info.value.status_code, (info.value.body or b"").decode().strip()


async def test_a_public_key_accepts_its_tokens_and_refuses_confusion(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(jwt_public_key=PUBLIC_PEM, jwt_audience="chat") as harness:
        async with harness.connect(token=rs256(aud="chat", channels=["room.*"])) as client:
            reply = await client.request({"type": "subscribe", "channel": "room.1", "id": 1})
            assert reply["type"] == "subscribed"
        forged = forged_hs256({"sub": "mallory", "aud": "chat"}, PUBLIC_PEM.encode())
        assert await refused(harness, forged) == (401, "invalid token: algorithm not allowed")
        assert await refused(harness, rs256(aud="other")) == (401, "invalid token: wrong audience")
        assert await refused(harness, rs256(aud="chat", exp=time.time() - 5)) == (
            401,
            "token expired",
        )
        # A token signed by another key.
        stranger = rs256(key=rsa.generate_private_key(65537, 2048), aud="chat")
        assert (await refused(harness, stranger))[0] == 401


async def test_refresh_with_a_public_key(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(
        jwt_public_key=PUBLIC_PEM, heartbeat_interval=1000, idle_timeout=0
    ) as harness:
        async with harness.connect(token=rs256(exp=time.time() + 60)) as client:
            later = int(time.time()) + 3600
            reply = await client.request({"type": "refresh", "token": rs256(exp=later), "id": 1})
            assert (reply["type"], reply["exp"]) == ("refreshed", int(later))
            forged = forged_hs256({"sub": "ann"}, PUBLIC_PEM.encode())
            reply = await client.request({"type": "refresh", "token": forged, "id": 2})
            assert (reply["type"], reply["code"]) == ("error", 401)


@pytest.mark.real_socket
async def test_a_key_set_over_http(provider: IdentityProvider) -> None:
    async with open_test_server(
        jwt_jwks_url=provider.url,
        jwt_issuer="https://id.example",
        jwt_audience="chat",
        jwt_jwks_min_interval=0.05,
    ) as harness:
        with trio.fail_after(20):
            good = {"iss": "https://id.example", "aud": "chat"}
            async with harness.connect(token=rs256(**good)) as ann:
                assert ann.welcome["type"] == "welcome"
            async with harness.connect(token=es256(**good)) as eve:
                assert eve.welcome["type"] == "welcome"
            assert await refused(harness, rs256(kid="nope", **good)) == (
                401,
                "invalid token: no key for its 'kid'",
            )
            assert await refused(harness, rs256(iss="https://evil.example", aud="chat")) == (
                401,
                "invalid token: wrong issuer",
            )
            assert await refused(harness, rs256(iss="https://id.example", aud="shop")) == (
                401,
                "invalid token: wrong audience",
            )
            assert await refused(harness, rs256(exp=time.time() - 5, **good)) == (
                401,
                "token expired",
            )
            forged = forged_hs256({"sub": "mallory", **good}, b"r1")
            header = jwt.get_unverified_header(forged)
            assert header["alg"] == "HS256"
            # A kid-less HS256 token: the set has two keys, so it names none; with a kid of
            # a real key, the key's algorithm (RS256) refuses it.
            assert (await refused(harness, forged))[0] == 401
            pem_forged = forged_hs256({"sub": "mallory", **good}, PUBLIC_PEM.encode())
            _head, body, sig = pem_forged.split(".")
            with_kid = jwt.utils.base64url_encode(
                json.dumps({"alg": "HS256", "kid": "r1"}).encode()
            ).decode()
            assert await refused(harness, f"{with_kid}.{body}.{sig}") == (
                401,
                "invalid token: algorithm not allowed",
            )
            # Rotation: a new key is fetched when a token names it.
            rotated = rsa.generate_private_key(65537, 2048)
            provider.keys.append(jwk(rotated, "r2"))
            await trio.sleep(0.1)  # past the (short) interval
            async with harness.connect(token=rs256(kid="r2", key=rotated, **good)) as new:
                assert new.welcome["type"] == "welcome"
                subscribed = await new.request({"type": "subscribe", "channel": "room.1"})
                assert subscribed["type"] == "subscribed"
                narrower = rs256(kid="r2", key=rotated, channels=["other"], **good)
                reply = await new.request({"type": "refresh", "token": narrower, "id": 1})
                assert reply["type"] == "refreshed"
                dropped = await new.receive_type("unsubscribed")
                assert dropped["channel"] == "room.1"
                unknown = rs256(kid="gone", key=rotated, **good)
                reply = await new.request({"type": "refresh", "token": unknown, "id": 2})
                assert (reply["type"], reply["code"]) == ("error", 401)


@pytest.mark.real_socket
async def test_unknown_kids_do_not_hammer_the_provider(provider: IdentityProvider) -> None:
    async with open_test_server(jwt_jwks_url=provider.url, jwt_jwks_min_interval=3600) as harness:
        with trio.fail_after(20):
            async with harness.connect(token=rs256()) as ann:
                assert ann.welcome["type"] == "welcome"
            for index in range(30):
                assert await refused(harness, rs256(kid=f"bad-{index}")) == (
                    401,
                    "invalid token: no key for its 'kid'",
                )
    assert provider.requests == 1


@pytest.mark.real_socket
async def test_an_unreachable_or_hanging_provider_is_a_503_not_a_hang(
    provider: IdentityProvider,
) -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{closed_port}/jwks.json"
    async with open_test_server(jwt_jwks_url=url, jwt_jwks_timeout=0.5) as harness:
        with trio.fail_after(20):
            status, reason = await refused(harness, rs256())
            assert status == 503
            assert reason.startswith("token keys unavailable (")
            assert "try again" in reason

    def let_in(request: object) -> Principal:
        return Principal(user_id="ann")

    async with open_test_server(
        jwt_jwks_url=url, jwt_jwks_timeout=0.5, authenticate=let_in, idle_timeout=0
    ) as harness:
        with trio.fail_after(20):
            async with harness.connect() as ann:
                reply = await ann.request({"type": "refresh", "token": rs256(), "id": 1})
                assert (reply["type"], reply["code"]) == ("error", 503)
                assert "token keys unavailable" in reply["message"]
    provider.hang = True
    async with open_test_server(jwt_jwks_url=provider.url, jwt_jwks_timeout=0.5) as harness:
        with trio.fail_after(20):
            assert await refused(harness, rs256()) == (
                503,
                "token keys unavailable (no answer within 0.5s); try again",
            )
            # The event loop was never blocked: the server answers meanwhile.
            assert harness.server.statistics().rejected == {503: 1}
    provider.release.set()


def test_one_way_to_check_tokens_at_a_time(tmp_path: Path) -> None:
    pem = tmp_path / "idp.pem"
    pem.write_text(PUBLIC_PEM)
    url = "https://id.example/.well-known/jwks.json"
    for given in (
        {"jwt_secret": SECRET, "jwt_public_key": PUBLIC_PEM},
        {"jwt_secret": SECRET, "jwt_jwks_url": url},
        {"jwt_public_key": PUBLIC_PEM, "jwt_jwks_url": url},
    ):
        with pytest.raises(ValueError, match="cannot be used together"):
            Config(**given)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be an http"):
        Config(jwt_jwks_url="file:///etc/passwd")
    assert parse_config(["--jwt-public-key", str(pem)], {}).config.jwt_public_key == PUBLIC_PEM
    env = {"TRIOWS_JWT_JWKS_URL": url, "TRIOWS_JWT_JWKS_MIN_INTERVAL": "60"}
    config = parse_config([], env).config
    assert (config.jwt_jwks_url, config.jwt_jwks_min_interval) == (url, 60)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--jwt-secret", SECRET, "--jwt-jwks-url", "https://id.example/jwks"],
            "--jwt-secret (TRIOWS_JWT_SECRET) and --jwt-jwks-url cannot be used together",
        ),
        (["--jwt-public-key", "/nonexistent.pem"], "cannot read '/nonexistent.pem'"),
        (["--jwt-jwks-url", "ftp://x/y"], "--jwt-jwks-url (TRIOWS_JWT_JWKS_URL) must be an http"),
        (["--jwt-jwks-min-interval", "0"], "--jwt-jwks-min-interval"),
    ],
)
def test_bad_token_flags_stop_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(argv, {})
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_private_key_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pem = tmp_path / "private.pem"
    pem.write_bytes(
        RSA_KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(SystemExit):
        parse_config(["--jwt-public-key", str(pem)], {})
    assert "is a private key" in capsys.readouterr().err


def test_keys_over_plain_http_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    from triows._server.banner import warn_about

    for url, warned in (
        ("http://idp.internal/jwks.json", True),
        ("https://idp.example/jwks.json", False),
        ("http://127.0.0.1:9000/jwks.json", False),
    ):
        caplog.clear()
        warn_about(Config(jwt_jwks_url=url), [])
        assert ("plain http" in caplog.text) is warned, url


class HostileProvider:
    """A JWKS endpoint on 127.0.0.1 that answers 200 and then a body that never ends (fast),
    drips one byte at a time, or nests a JSON array 100,000 levels deep."""

    def __init__(self, body: str) -> None:
        self.body = body
        self.sent = 0
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/jwks.json"
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        peer, _ = self.listener.accept()
        with peer:
            peer.recv(65536)
            try:
                peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
                if self.body == "deep":
                    peer.sendall(b"[" * 100_000)
                    return  # the body ends with the connection
                while not self.stop.is_set():
                    chunk = b'{"keys":[' if self.sent == 0 else b" " * 65536
                    if self.body == "drip":
                        chunk = chunk[:1]
                        self.stop.wait(0.2)
                    peer.sendall(chunk)
                    self.sent += len(chunk)
            except OSError:
                pass  # the fetcher hung up: what it should do

    def __enter__(self) -> HostileProvider:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(10)


@pytest.mark.real_socket
@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        ("endless", r"more than 1048576 bytes"),
        ("drip", r"no whole answer within 1s"),
        ("deep", r"not JSON.*nested too deeply"),
    ],
)
async def test_a_hostile_key_set_endpoint_is_a_bounded_failure(body: str, refusal: str) -> None:
    # PyJWKClient read the whole body with json.load: an endless one grew in memory without
    # end (a socket timeout never fires while bytes keep coming) and a drip kept its thread
    # forever, long after the fetch had been given up; a deep one raised RecursionError,
    # which the refresher did not expect.
    threads = threading.active_count()
    with HostileProvider(body) as hostile:
        fetch = fetch_over_http(hostile.url, timeout=1)
        with trio.fail_after(5), pytest.raises(ValueError, match=refusal):
            await fetch()
        # It hung up: the endpoint's writes fail and it stops (stop is not set yet).
        await trio.to_thread.run_sync(hostile.thread.join, 5)
        assert not hostile.thread.is_alive()
    for _ in range(100):  # the worker thread has ended too, not abandoned
        if threading.active_count() <= threads:
            break
        await trio.sleep(0.05)
    assert threading.active_count() <= threads
