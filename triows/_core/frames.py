"""WebSocket framing for what the server sends (RFC 6455 §5.2), done once per message.

A server's frames are never masked and triows negotiates no extension, so the bytes of a text
frame depend on the payload alone: a broadcast is framed once and the same ``bytes`` object is
written to every subscriber. ``tests/core/test_frames.py`` checks the output against wsproto.
"""

from __future__ import annotations

import struct
from typing import Final

_FIN_TEXT: Final = 0x81
_SHORT: Final = struct.Struct("!BB")
_MEDIUM: Final = struct.Struct("!BBH")
_LONG: Final = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """One complete, unfragmented, unmasked text frame carrying UTF-8 ``payload``."""
    length = len(payload)
    if length < 126:
        header = _SHORT.pack(_FIN_TEXT, length)
    elif length < 1 << 16:
        header = _MEDIUM.pack(_FIN_TEXT, 126, length)
    else:
        header = _LONG.pack(_FIN_TEXT, 127, length)
    return header + payload
