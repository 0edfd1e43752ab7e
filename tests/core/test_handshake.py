"""The opening handshake: what is accepted, and the status every refusal gets."""

from __future__ import annotations

import pytest

from triows._core.handshake import (
    HandshakeError,
    HttpRequest,
    accept_key,
    accept_response,
    head_end,
    http_response,
    parse_request,
    upgrade_key,
    wants_upgrade,
)


def parse_upgrade(data: bytes) -> tuple[HttpRequest, str]:
    """What the transport does with a head: parse it, then check it as an upgrade."""
    request = parse_request(data)
    assert wants_upgrade(request)
    return request, upgrade_key(request)


KEY = "dGhlIHNhbXBsZSBub25jZQ=="
GOOD = {
    "Host": "example.com",
    "Upgrade": "websocket",
    "Connection": "keep-alive, Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
}


def head(line: str = "GET /chat?token=t HTTP/1.1", **headers: str | None) -> bytes:
    merged = {**GOOD, **headers}
    lines = [line, *(f"{k}: {v}" for k, v in merged.items() if v is not None)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_rfc_6455_example_key() -> None:
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in accept_response(KEY)


def test_a_valid_request() -> None:
    request, key = parse_upgrade(head(Origin="https://a.example", **{"X-Twice": "1"}))
    assert request.target == "/chat?token=t"
    assert key == KEY
    assert request.headers["origin"] == "https://a.example"
    assert request.headers["upgrade"] == "websocket"


def test_header_names_are_case_insensitive_and_repeated_lines_are_one_list() -> None:
    # RFC 9110 §5.3: a proxy that appends its own X-Forwarded-For line must not let the
    # client's first line win.
    data = head().replace(
        b"\r\n\r\n", b"\r\nx-a: 1\r\nX-A: 2\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n"
    )
    headers = parse_request(data).headers
    assert headers["x-a"] == "1, 2"
    assert headers["cookie"] == "a=1; b=2"


@pytest.mark.parametrize(
    "name", ["Host", "Content-Length", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Origin"]
)
def test_a_field_that_must_be_single_is_refused_twice(name: str) -> None:
    value = {"Content-Length": "0", "Origin": "https://a.example"}.get(name, GOOD.get(name))
    data = head().replace(b"\r\n\r\n", f"\r\n{name}: {value}\r\n\r\n".encode())
    if name in ("Content-Length", "Origin"):
        data = data.replace(b"\r\n\r\n", f"\r\n{name}: {value}\r\n\r\n".encode())
    with pytest.raises(HandshakeError) as refused:
        parse_upgrade(data)
    assert refused.value.status == 400
    assert name.lower() in refused.value.reason


def test_two_different_content_lengths_are_refused() -> None:
    from triows._core.handshake import parse_request

    with pytest.raises(HandshakeError) as refused:
        parse_request(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\n"
        )
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (head("POST / HTTP/1.1"), 405),
        (head("GET / HTTP/1.0"), 505),
        (head("GET /"), 400),
        (head("GET http://x/ HTTP/1.1"), 400),
        (head(Host=None), 400),
        (head(Connection="keep-alive"), 400),
        (head(**{"Sec-WebSocket-Version": "8"}), 426),
        (head(**{"Sec-WebSocket-Key": "short"}), 400),
        (head().replace(f"Sec-WebSocket-Key: {KEY}\r\n".encode(), b""), 400),
        (head().replace(b"Host:", b"Ho st:"), 400),
        (head().replace(b"\r\nHost", b"\r\n Host"), 400),
    ],
)
def test_refusals(data: bytes, status: int) -> None:
    with pytest.raises(HandshakeError) as refused:
        parse_upgrade(data)
    assert refused.value.status == status
    assert refused.value.reason


@pytest.mark.parametrize("upgrade", [None, "h2c"])
def test_a_request_that_does_not_ask_for_a_websocket_is_plain_http(upgrade: str | None) -> None:
    assert not wants_upgrade(parse_request(head(Upgrade=upgrade)))


def test_head_end() -> None:
    assert head_end(b"GET / HTTP/1.1\r\nHost: x\r\n") == -1
    data = head() + b"\x81\x80frame"
    assert data[head_end(data) :] == b"\x81\x80frame"


@pytest.mark.parametrize("size", [17 * 1024, 31 * 1024])
def test_a_head_over_the_cap_is_431_however_it_arrives(size: int) -> None:
    from triows._core.handshake import MAX_HEAD

    long_value = head(**{"X-Long": "v" * size})
    with pytest.raises(HandshakeError) as whole:
        head_end(long_value)  # the whole head in one read, blank line included
    assert whole.value.status == 431
    with pytest.raises(HandshakeError) as growing:
        head_end(long_value[: MAX_HEAD + 1])  # no blank line yet, already too long
    assert growing.value.status == 431
    long_path = head(f"GET /{'p' * size} HTTP/1.1")
    with pytest.raises(HandshakeError):
        head_end(long_path)


def test_http_response_is_complete() -> None:
    response = http_response(426, b"upgrade\n", headers=(("Upgrade", "websocket"),))
    head_part, body = response.split(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert b"Content-Length: 8" in head_part
    assert b"Upgrade: websocket" in head_part
    assert body == b"upgrade\n"


def test_a_request_without_upgrade_is_plain_http() -> None:
    from triows._core.handshake import content_length, parse_request, wants_upgrade

    request = parse_request(
        b"POST /api/publish?x=1 HTTP/1.0\r\nContent-Length: 12\r\nX-API-Key: k\r\n\r\n"
    )
    assert (request.method, request.path, request.query) == ("POST", "/api/publish", "x=1")
    assert not wants_upgrade(request)
    assert content_length(request, 100) == 12
    with pytest.raises(HandshakeError) as over:
        content_length(request, 10)
    assert over.value.status == 413
    chunked = parse_request(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(HandshakeError) as refused:
        content_length(chunked, 100)
    assert refused.value.status == 411


@pytest.mark.parametrize(
    ("value", "status"),
    [("\u00b2", 400), ("\u00b9", 400), ("-1", 400), ("", 400), ("1 2", 400), ("9" * 4400, 413)],
)
def test_content_length_reads_ascii_digits_only(value: str, status: int) -> None:
    from triows._core.handshake import content_length, parse_request

    # Bytes on the wire are read as latin-1: b"\xb2" is "²", which str.isdigit() accepts.
    request = parse_request(
        f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n".encode("latin-1")
    )
    with pytest.raises(HandshakeError) as refused:
        content_length(request, 100)
    assert refused.value.status == status


@pytest.mark.parametrize(
    "line", [b"X-A: a\nX-B: b", b"X-A: a\x00b", b"X-A: \x7f", b"Host: x\rX-B: y"]
)
def test_control_characters_in_a_header_are_refused(line: bytes) -> None:
    from triows._core.handshake import parse_request

    with pytest.raises(HandshakeError) as refused:
        parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n\r\n")
    assert refused.value.status == 400
    assert parse_request(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\tb\r\n\r\n").headers["x-a"] == "a\tb"


def test_http_1_1_needs_a_host_and_1_0_does_not() -> None:
    from triows._core.handshake import parse_request

    with pytest.raises(HandshakeError) as refused:
        parse_request(b"GET /health HTTP/1.1\r\n\r\n")
    assert refused.value.status == 400
    assert parse_request(b"GET /health HTTP/1.0\r\n\r\n").path == "/health"
