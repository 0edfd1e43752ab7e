"""permessage-deflate's data path (RFC 7692 §7.2): compress a frame once, inflate with a bound.

Without context takeover (the only way triows negotiates it, :mod:`triows._core.extensions`)
every message is a DEFLATE stream of its own: a compressor is made for one message and
dropped, and so is an inflater. Nothing of zlib outlives a message, so an idle connection
holds no zlib memory, and the compressed form of a broadcast depends on the message alone:
:func:`deflated_frame` makes it once and every subscriber that negotiated the extension gets
the same ``bytes``.

Inbound, :class:`Inflater` never produces more than the message limit (plus one byte to tell
it was exceeded): a small frame that would inflate to gigabytes (a deflate bomb) costs at
most ``max_message_size`` bytes of memory and ends in :class:`InflateError` with 1009.
"""

from __future__ import annotations

import zlib
from typing import Final

from .frames import frame, header_length

#: What a sync flush ends with; removed by the sender, put back by the receiver (§7.2.1-2).
TAIL: Final = b"\x00\x00\xff\xff"
#: zlib's default level: on ~1 KiB of JSON it saves ~10% more than level 1 for ~1 µs.
LEVEL: Final = 6
#: A 4 KiB hash table instead of zlib's default 64 KiB: the same output for messages of a few
#: KiB, and the table is cleared for every message (~8 µs instead of ~20 µs per 1 KiB).
MEM_LEVEL: Final = 5
#: zlib cannot make a raw DEFLATE stream with a 256-byte window (it uses 512).
_MIN_BITS: Final = 9
_MAX_BITS: Final = 15

TOO_BIG: Final = 1009
INVALID_DATA: Final = 1007


def window_bits(size: int) -> int:
    """The smallest window (bits) that covers a message of ``size`` bytes: no back reference
    can reach further than the start of the message, so a larger one gains nothing."""
    return min(_MAX_BITS, max(_MIN_BITS, (size - 1).bit_length()))


def compress(payload: bytes | memoryview) -> bytes:
    """``payload`` as one message's DEFLATE data, without the flush's 4-byte tail."""
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -window_bits(len(payload)), MEM_LEVEL)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]


def deflated_frame(plain: bytes) -> bytes:
    """The compressed twin of an unfragmented data frame made by :func:`frames.frame`, or
    ``plain`` itself when compressing would not make it smaller."""
    start = header_length(plain)
    compressed = frame(plain[0] & 0x0F, compress(memoryview(plain)[start:]), rsv1=True)
    return compressed if len(compressed) < len(plain) else plain


class InflateError(Exception):
    """A compressed message the server refuses: ``code`` is the close code (1009, 1007)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Inflater:
    """One compressed message in, its bytes out, never more than ``limit`` of them.

    Made for the first frame of a compressed message and dropped after its last.
    """

    __slots__ = ("_left", "_zlib")

    def __init__(self, limit: int) -> None:
        self._left = limit
        # The largest window reads a stream made with any client_max_window_bits.
        self._zlib = zlib.decompressobj(-_MAX_BITS)

    def feed(self, data: bytes, final: bool) -> bytes:
        """Inflate one frame's payload (``final``: the message's last frame)."""
        if final:
            data += TAIL
        left = self._left
        try:
            out = self._zlib.decompress(data, left + 1)
        except zlib.error as exc:
            raise InflateError(INVALID_DATA, f"invalid compressed data: {exc}") from None
        if len(out) > left:
            raise InflateError(TOO_BIG, "message over the size limit once inflated")
        self._left = left - len(out)
        return out
