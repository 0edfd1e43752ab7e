"""The WebSocket opening handshake (RFC 6455 §4.2), server side, as plain functions.

Why not h11/wsproto's handshake: a general HTTP/1.1 state machine per connection costs more
CPU than the rest of a connection's setup and keeps its buffers for as long as the connection
lives. An upgrade request is one bounded block of header lines; parsing it is a few string
operations, and once the answer is written nothing of it stays but what the server kept on
purpose (:class:`HandshakeRequest` goes to the ``authenticate`` hook and is then dropped).

Rules: the head is at most :data:`MAX_HEAD` bytes, every line included (431); the request
line must be ``GET <target> HTTP/1.1``; header lines are ``name: value`` with no obsolete line
folding; a field sent on several lines is one comma-separated list, in order (RFC 9110 §5.3),
except the fields in :data:`SINGLETONS`, which a second line makes a 400 (two ``Content-Length``
lines are a request-smuggling vector, RFC 9112 §6.3; two ``Host`` lines, RFC 9112 §3.2).
``Host``, ``Upgrade: websocket``, ``Connection: upgrade``, ``Sec-WebSocket-Version: 13`` and a
``Sec-WebSocket-Key`` of 16 base64-encoded bytes are required. Anything else is refused with a
status and a reason a person can read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from http import HTTPStatus
from typing import Final

import attrs

from .numbers import ascii_int

#: Largest request head (request line and headers) the server reads before refusing: 431.
MAX_HEAD: Final = 16 * 1024
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Fields that must not be repeated: the server could not tell which line to believe.
SINGLETONS: Final = frozenset(
    {
        "host",
        "content-length",
        "authorization",
        "origin",
        "x-api-key",
        "sec-websocket-key",
        "sec-websocket-version",
    }
)
_CONTROL: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


class HandshakeError(Exception):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = headers


@attrs.frozen
class HttpRequest:
    """A request head: the method, the target (path and query) and the headers."""

    method: str
    target: str
    #: Header names in lower case; a field on several lines is joined with ", " (cookies
    #: with "; "), in the order the lines came.
    headers: dict[str, str]
    version: str = "HTTP/1.1"

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


def head_end(buffer: bytes | bytearray) -> int:
    """Where the request head ends (just after its blank line), or -1 when not complete.

    Raises 431 when the head is, or would become, larger than :data:`MAX_HEAD`: checked on
    every call, however the head was split across reads.
    """
    end = buffer.find(b"\r\n\r\n")
    if end >= 0 and end + 4 <= MAX_HEAD:
        return end + 4
    if end >= 0 or len(buffer) >= MAX_HEAD:
        raise HandshakeError(431, f"request head larger than {MAX_HEAD} bytes")
    return -1


def parse_request(head: bytes | bytearray) -> HttpRequest:
    """The request line and headers of a head (up to and including its blank line)."""
    lines = bytes(head).decode("latin-1").split("\r\n")  # latin-1 decodes any byte
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise HandshakeError(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HandshakeError(505, "HTTP/1.1 is spoken here")
    if not target.startswith("/"):
        raise HandshakeError(400, "request target must be a path")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            break
        name, colon, value = line.partition(":")
        if not colon or not name or not _TOKEN_CHARS.issuperset(name):
            raise HandshakeError(400, "malformed header line")
        name, value = name.lower(), value.strip(" \t")
        if _CONTROL.search(value):  # a bare LF or CR, NUL: RFC 9110 §5.5 allows none
            raise HandshakeError(400, f"control character in the {name} header")
        before = headers.get(name)
        if before is None:
            headers[name] = value
        elif name in SINGLETONS:
            raise HandshakeError(400, f"{name} header sent more than once")
        else:
            headers[name] = f"{before}{'; ' if name == 'cookie' else ', '}{value}"
    if version == "HTTP/1.1" and "host" not in headers:
        raise HandshakeError(400, "missing Host header")  # RFC 9112 §3.2
    return HttpRequest(method=method, target=target, headers=headers, version=version)


def wants_upgrade(request: HttpRequest) -> bool:
    """Whether the request asks for a WebSocket (anything else is plain HTTP)."""
    return "websocket" in _tokens(request.headers.get("upgrade", ""))


def upgrade_key(request: HttpRequest) -> str:
    """Check a request that asks for a WebSocket; its ``Sec-WebSocket-Key``."""
    headers = request.headers
    if request.version != "HTTP/1.1":
        raise HandshakeError(505, "WebSocket needs HTTP/1.1")
    if request.method != "GET":
        raise HandshakeError(405, "WebSocket handshakes use GET", (("Allow", "GET"),))
    if "host" not in headers:
        raise HandshakeError(400, "missing Host header")
    if "upgrade" not in _tokens(headers.get("connection", "")):
        raise HandshakeError(400, "missing Connection: Upgrade")
    if headers.get("sec-websocket-version") != "13":
        raise HandshakeError(
            426, "unsupported WebSocket version (13 is)", (("Sec-WebSocket-Version", "13"),)
        )
    key = headers.get("sec-websocket-key", "")
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise HandshakeError(400, "invalid Sec-WebSocket-Key")
    return key


def content_length(request: HttpRequest, limit: int) -> int:
    """The body length a plain request announces: 0 without one; 411 for a chunked body
    (the length must be known to bound it), 413 above ``limit``."""
    headers = request.headers
    if "transfer-encoding" in headers:
        raise HandshakeError(411, "send the body with a Content-Length, not chunked")
    text = headers.get("content-length")
    if text is None:
        return 0
    length = ascii_int(text)
    if length is None:
        if text and set(text) <= set("0123456789"):  # only too long to read
            raise HandshakeError(413, f"request body is larger than {limit} bytes")
        raise HandshakeError(400, "Content-Length must be a whole number of bytes")
    if length > limit:
        raise HandshakeError(413, f"request body is larger than {limit} bytes")
    return length


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def accept_response(key: str, extensions: str | None = None) -> bytes:
    """The 101 answer, with the extensions accepted (``Sec-WebSocket-Extensions``) if any. No
    subprotocol is negotiated."""
    extension_line = "" if extensions is None else f"Sec-WebSocket-Extensions: {extensions}\r\n"
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n{extension_line}\r\n"
    ).encode()


def http_response(
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A complete HTTP/1.1 response that ends the connection."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    lines = [
        f"HTTP/1.1 {status} {phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@attrs.frozen(kw_only=True)
class HandshakeRequest:
    """What the client asked for in its HTTP upgrade request; given to ``authenticate``.

    Header names are lower-case. ``query`` holds the first value of each parameter. Its repr
    shows header names and query keys, never their values: an application that logs a request
    must not leak the token it carries.
    """

    path: str
    query: dict[str, str] = attrs.field(repr=lambda query: f"<keys {sorted(query)}>")
    headers: dict[str, str] = attrs.field(repr=lambda headers: f"<names {sorted(headers)}>")
    remote: str
    #: The client's address without its port (what per-address limits count).
    ip: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())
