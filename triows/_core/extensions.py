"""Negotiating permessage-deflate (RFC 7692) from a ``Sec-WebSocket-Extensions`` header.

Sans-I/O: :func:`negotiate` reads what the client offered and returns what the server answers,
or None to answer without the extension. The server's answer always carries
``server_no_context_takeover`` and ``client_no_context_takeover`` (§7.1.1.1, §7.1.1.2 let the
server add both unasked): every message is compressed on its own, so no connection keeps a
zlib context between messages, and one compressed broadcast frame serves every subscriber.

Rules, in the RFC's terms:

- The header is ``1#extension``, ``extension = token *( ";" param )``, ``param = token [ "="
  (token | quoted-string) ]`` (RFC 6455 §9.1), on one or several lines. A header that does not
  parse is :class:`MalformedExtensions` (the handshake answers 400, RFC 6455 §4.2.1).
- Offers are tried in the client's order of preference; other extensions are ignored. An
  offer is *declined* (the next one is tried; with none left, no compression) when it has an
  unknown parameter, a parameter twice, or a bad value (§7.1): ``server_no_context_takeover``
  and ``client_no_context_takeover`` take no value, ``server_max_window_bits`` takes 8..15 and
  ``client_max_window_bits`` takes no value or 8..15 (digits, no leading zero, quoted or not).
- ``server_max_window_bits=N`` offered is answered with the same N (§7.1.2.1). The server
  compresses each message with the smallest window that covers it, so a compressed frame is
  only sent to that client when the message is at most ``2**N`` bytes (see
  :attr:`Deflate.max_payload`); larger ones go uncompressed, which the extension allows.
- ``client_max_window_bits`` is not answered: the server inflates with a 32 KiB window, which
  reads a stream made with any smaller one, and nothing of it outlives a message.
"""

from __future__ import annotations

from typing import Final

import attrs

NAME: Final = "permessage-deflate"
#: The largest LZ77 window (bits) DEFLATE has; the server's compressor never uses more.
MAX_WINDOW_BITS: Final = 15
_WINDOW_VALUES: Final = {str(bits): bits for bits in range(8, MAX_WINDOW_BITS + 1)}
_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_OWS: Final = " \t"
#: No payload is that large: "any size".
UNLIMITED: Final = 1 << 62

Param = tuple[str, str | None]
Extension = tuple[str, list[Param]]


class MalformedExtensions(ValueError):
    """The ``Sec-WebSocket-Extensions`` header does not follow RFC 6455 §9.1."""


@attrs.frozen
class Deflate:
    """permessage-deflate as accepted for one connection."""

    #: The ``Sec-WebSocket-Extensions`` value of the 101 answer.
    response: str
    #: Largest payload the server may send this client compressed (``2**N`` when it asked for
    #: ``server_max_window_bits=N`` below 15, else any).
    max_payload: int = UNLIMITED


def parse(header: str) -> list[Extension]:
    """The extensions of a header value, in order, with their parameters (names in lower case;
    a quoted value unquoted)."""
    extensions: list[Extension] = []
    pos, end = 0, len(header)

    def skip_ows() -> None:
        nonlocal pos
        while pos < end and header[pos] in _OWS:
            pos += 1

    def token() -> str:
        nonlocal pos
        start = pos
        while pos < end and header[pos] in _TOKEN_CHARS:
            pos += 1
        if pos == start:
            raise MalformedExtensions(f"expected a token at position {start}")
        return header[start:pos]

    def quoted() -> str:
        nonlocal pos
        pos += 1  # the opening quote
        chars: list[str] = []
        while pos < end:
            char = header[pos]
            if char == '"':
                pos += 1
                return "".join(chars)
            if char == "\\":
                pos += 1
                if pos == end:
                    break
                char = header[pos]
            chars.append(char)
            pos += 1
        raise MalformedExtensions("unterminated quoted-string")

    while True:
        skip_ows()
        if pos < end and header[pos] == ",":  # empty list elements are allowed (RFC 9110 §5.6.1)
            pos += 1
            continue
        if pos == end:
            break
        name = token().lower()
        params: list[Param] = []
        skip_ows()
        while pos < end and header[pos] == ";":
            pos += 1
            skip_ows()
            key = token().lower()
            skip_ows()
            value: str | None = None
            if pos < end and header[pos] == "=":
                pos += 1
                skip_ows()
                if pos < end and header[pos] == '"':
                    value = quoted()
                    if not value or not _TOKEN_CHARS.issuperset(value):
                        # RFC 6455 §9.1: unquoted, it must still be a token.
                        raise MalformedExtensions(f"quoted value of {key} is not a token")
                else:
                    value = token()
                skip_ows()
            params.append((key, value))
        extensions.append((name, params))
        if pos < end and header[pos] != ",":
            raise MalformedExtensions(f"unexpected {header[pos]!r} at position {pos}")
    if not extensions:
        raise MalformedExtensions("no extension in the header")
    return extensions


def _accept(params: list[Param]) -> Deflate | None:
    """The answer to one permessage-deflate offer, or None when it must be declined."""
    seen: set[str] = set()
    server_bits: int | None = None
    for key, value in params:
        if key in seen:
            return None  # §7.1: a parameter twice
        seen.add(key)
        if key in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
        elif key == "server_max_window_bits":
            if value not in _WINDOW_VALUES:
                return None
            server_bits = _WINDOW_VALUES[value]
        elif key == "client_max_window_bits":
            if value is not None and value not in _WINDOW_VALUES:
                return None
        else:
            return None  # §7.1: a parameter not defined for an offer
    response = f"{NAME}; server_no_context_takeover; client_no_context_takeover"
    if server_bits is None:
        return Deflate(response)
    limit = UNLIMITED if server_bits == MAX_WINDOW_BITS else 1 << server_bits
    return Deflate(f"{response}; server_max_window_bits={server_bits}", limit)


def negotiate(header: str | None) -> Deflate | None:
    """What to answer to the offers in ``header``: the first acceptable permessage-deflate
    offer, or None. Raises :class:`MalformedExtensions` for a header that does not parse."""
    if header is None or not header.strip(" \t"):
        return None
    for name, params in parse(header):
        if name == NAME:
            accepted = _accept(params)
            if accepted is not None:
                return accepted
    return None
