"""WebSocket framing for what the server sends (RFC 6455 §5.2), done once per message.

A server's frames are never masked, and permessage-deflate is only ever negotiated without
context takeover (:mod:`triows._core.extensions`), so the bytes of a frame depend on its opcode
and payload alone: a broadcast is framed once, and compressed at most once
(:mod:`triows._core.deflate`), and the same ``bytes`` object is written to every subscriber.
``tests/core/test_frames.py`` checks the output against wsproto.
"""

from __future__ import annotations

import functools
import struct
from typing import Final

TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA

_FIN: Final = 0x80
#: The first reserved bit: set on the first frame of a compressed message (RFC 7692 §6).
RSV1: Final = 0x40
_SHORT: Final = struct.Struct("!BB")
_MEDIUM: Final = struct.Struct("!BBH")
_LONG: Final = struct.Struct("!BBQ")
#: Largest payload of a control frame (ping, pong, close).
MAX_CONTROL_PAYLOAD: Final = 125


def frame(opcode: int, payload: bytes, *, rsv1: bool = False) -> bytes:
    """One complete, unfragmented, unmasked frame (``rsv1``: its payload is compressed)."""
    length = len(payload)
    first = _FIN | opcode | (RSV1 if rsv1 else 0)
    if length < 126:
        header = _SHORT.pack(first, length)
    elif length < 1 << 16:
        header = _MEDIUM.pack(first, 126, length)
    else:
        header = _LONG.pack(first, 127, length)
    return header + payload


def header_length(data: bytes) -> int:
    """How many bytes of an unmasked frame are its header."""
    length = data[1] & 0x7F
    return 2 if length < 126 else 4 if length == 126 else 10


#: The header of every text frame short enough for the length to fit its second byte.
SHORT_TEXT_HEADERS: Final = tuple(bytes((_FIN | TEXT, length)) for length in range(126))
#: The header of a text frame of 126 to 65,535 bytes, in one call: ``(length) -> bytes``.
medium_text_header: Final = functools.partial(_MEDIUM.pack, _FIN | TEXT, 126)


def text_frame(payload: bytes) -> bytes:
    """One complete text frame carrying UTF-8 ``payload``."""
    length = len(payload)
    if length < 126:  # an ack, a small message: its header from the table
        return SHORT_TEXT_HEADERS[length] + payload
    if length < 1 << 16:
        return medium_text_header(length) + payload
    return frame(TEXT, payload)


def close_frame(code: int | None, reason: str = "") -> bytes:
    """A close frame; the reason is cut (on a character boundary) to fit a control frame."""
    if code is None:
        return frame(CLOSE, b"")
    encoded = reason.encode()[: MAX_CONTROL_PAYLOAD - 2]
    payload = code.to_bytes(2, "big") + encoded.decode(errors="ignore").encode()
    return frame(CLOSE, payload)


def text_payload(framed: bytes) -> bytes:
    """The payload of a frame made by :func:`frame` (unmasked, unfragmented): a message kept
    as its frame is read back without a copy of its own."""
    length = framed[1] & 0x7F
    start = 2 if length < 126 else 4 if length == 126 else 10
    return framed[start:]
