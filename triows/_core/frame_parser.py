"""Parsing what a WebSocket client sends (RFC 6455 §5), as strictly as the RFC asks.

Sans-I/O: :meth:`FrameParser.feed` takes whatever bytes the socket gave and returns the
events they complete. A peer that breaks the protocol gets a :class:`Failure` event carrying
the close code the server must send (1002 protocol error, 1007 invalid UTF-8, 1009 too big),
after the events that came before the fault, and the parser takes nothing more.

Why not wsproto's parser: it allocates several objects per frame, builds an incremental UTF-8
decoder per text message and reads through a generator, which cost more than the rest of a
request. This one works on the received bytes in place, checks a header as soon as it is
complete (a frame too big is refused before its payload is buffered), decodes a message that
fits one frame in one call, and only a fragmented text message gets an incremental decoder
(so invalid UTF-8 is refused at the fragment that carries it). Messages are at most
``max_message_size`` bytes, fragments included. With permessage-deflate negotiated
(``inflate=True``), RSV1 on a message's first frame marks it compressed: its frames are inflated
as they come by a :class:`~triows._core.deflate.Inflater` made for that message, so the limit
applies to the inflated size (a deflate bomb is 1009, never memory), and its compressed bytes
may be at most :func:`compressed_limit`. What one call inflates is bounded too: after
:data:`INFLATE_STEP` bytes of inflated output the rest of the read waits in the buffer
(:attr:`FrameParser.pending`), so a read of tiny frames that each inflate to a whole message
costs one step's memory and work, not a thousand times its size. Any other reserved bit, or
RSV1 without the extension, on a continuation or on a control frame, is 1002.
``tests/core/test_frame_parser.py`` checks it against wsproto's client.
"""

from __future__ import annotations

import codecs
from typing import Final

from .deflate import InflateError, Inflater
from .frames import BINARY, CLOSE, PING, PONG, RSV1, TEXT

CONTINUATION: Final = 0x0

PROTOCOL_ERROR: Final = 1002
INVALID_DATA: Final = 1007
TOO_BIG: Final = 1009
#: What a close frame without a code means (RFC 6455 §7.1.5); never sent on the wire.
NO_STATUS: Final = 1005
#: Inflated bytes one :meth:`FrameParser.feed` produces before it leaves the rest of its data
#: for the next call: DEFLATE inflates up to ~1000x, so a 16 KiB read of small compressed
#: frames would otherwise be ~16 MiB of messages at once (plain frames are never more than
#: the bytes read, and are not counted).
INFLATE_STEP: Final = 64 * 1024


class Message:
    """A complete data message: ``str`` for a text message, ``bytes`` for a binary one."""

    __slots__ = ("data",)

    def __init__(self, data: str | bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Message({self.data!r:.60})"


class Ping:
    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Pong:
    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Close:
    """The peer's close frame. ``code`` is 1005 when it carried none."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class Failure:
    """The peer broke the protocol: fail the connection with ``code``.

    ``in_close`` when the fault was in the peer's close frame: the peer has closed already,
    so no close frame will follow and the server need not wait for one.
    """

    __slots__ = ("code", "in_close", "reason")

    def __init__(self, code: int, reason: str, *, in_close: bool = False) -> None:
        self.code = code
        self.reason = reason
        self.in_close = in_close

    def __repr__(self) -> str:
        return f"Failure({self.code}, {self.reason!r})"


Event = Message | Ping | Pong | Close | Failure


class _Fault(Exception):
    def __init__(self, code: int, reason: str, *, in_close: bool = False) -> None:
        self.code = code
        self.reason = reason
        self.in_close = in_close


def valid_close_code(code: int) -> bool:
    """Codes a peer may send (RFC 6455 §7.4, IANA registry): 1004-1006 and 1015 are local
    meanings and 1016-2999 are reserved."""
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


def compressed_limit(max_message: int) -> int:
    """Most compressed bytes a message may take on the wire: DEFLATE can grow data that does
    not compress by a few bytes per 16 KiB block, so a little over the message limit."""
    return max_message + (max_message >> 10) + 64


def unmask(payload: bytes | bytearray | memoryview, key: bytes | bytearray) -> bytes:
    """XOR ``payload`` with the 4-byte masking ``key`` (as one big-integer operation: fast in
    C for any size, where a Python loop would cost a microsecond per few bytes)."""
    size = len(payload)
    if not size:
        return b""
    keystream = (bytes(key) * ((size + 3) >> 2))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(keystream, "little")).to_bytes(
        size, "little"
    )


class FrameParser:
    """Frames from one client, in; events out. Server side: every frame must be masked."""

    __slots__ = (
        "_buffer",
        "_decoder",
        "_fragments",
        "_inflater",
        "_need",
        "_opcode",
        "_size",
        "_wire",
        "done",
        "inflate",
        "max_message",
        "pending",
    )

    def __init__(self, max_message_size: int, *, inflate: bool = False) -> None:
        self.max_message = max_message_size
        #: permessage-deflate was negotiated: RSV1 marks a compressed message.
        self.inflate = inflate
        #: The compressed message in progress (made on need, dropped after its last frame),
        #: and its compressed bytes so far.
        self._inflater: Inflater | None = None
        self._wire = 0
        #: The start of a frame not complete yet (None when there is none: idle connections
        #: hold no buffer), and how long it must grow before parsing can make progress.
        self._buffer: bytearray | None = None
        self._need = 0
        self._opcode: int | None = None  # of the fragmented message in progress
        #: A fragmented message so far, made on need: one buffer (a list of the fragments
        #: held ~40 bytes per 1-byte fragment, and a slot per empty one, never refused).
        self._fragments: bytearray | None = None
        self._size = 0  # bytes of the fragmented message so far
        self._decoder: codecs.IncrementalDecoder | None = None
        #: A close frame or a fault ended the stream: nothing after it is parsed.
        self.done = False
        #: The last call stopped after :data:`INFLATE_STEP` inflated bytes with complete frames
        #: left in its buffer: call ``feed(b"")`` (after letting others run) before reading more.
        self.pending = False

    def feed(self, data: bytes | bytearray) -> list[Event]:
        if self.done:
            return []
        buffer = self._buffer
        if buffer is not None:
            buffer += data  # amortised: a large frame arriving in pieces is copied once
            if len(buffer) < self._need:
                return []
            data = buffer
        events: list[Event] = []
        try:
            used = self._parse(data, events)
        except _Fault as fault:
            self.done = True
            self.pending = False
            self._buffer = None
            self._fragments = None
            self._inflater = None
            events.append(Failure(fault.code, fault.reason, in_close=fault.in_close))
            return events
        if used == len(data):
            self._buffer = None
        elif buffer is not None:
            del buffer[:used]
        else:
            self._buffer = bytearray(data[used:])
        return events

    @property
    def buffered(self) -> int:
        """Bytes held for frames not complete yet (a fragmented message counts too)."""
        return (0 if self._buffer is None else len(self._buffer)) + self._size

    def _parse(self, data: bytes | bytearray, events: list[Event]) -> int:
        pos = 0
        end = len(data)
        self._need = 2
        self.pending = False
        inflated = 0
        while not self.done and end - pos >= 2:
            if inflated >= INFLATE_STEP:
                self.pending = True
                self._need = 0  # the next feed, even of no bytes, parses what is left
                break
            first, second = data[pos], data[pos + 1]
            if first & 0x70 and (first & 0x70 != RSV1 or not self.inflate):
                raise _Fault(PROTOCOL_ERROR, "reserved bits set")
            if not second & 0x80:
                raise _Fault(PROTOCOL_ERROR, "client frame not masked")
            fin = first & 0x80
            opcode = first & 0x0F
            length = second & 0x7F
            header = 6
            if length == 126:
                header = 8
                if end - pos < header:
                    self._need = header
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                if length < 126:
                    raise _Fault(PROTOCOL_ERROR, "payload length not minimally encoded")
            elif length == 127:
                header = 14
                if end - pos < header:
                    self._need = header
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                if length < 1 << 16 or length >> 63:
                    raise _Fault(PROTOCOL_ERROR, "invalid 64-bit payload length")
            compressed = first & RSV1
            self._check_header(fin, opcode, length, compressed)
            if end - pos < header + length:
                self._need = header + length
                break
            key = data[pos + header - 4 : pos + header]
            payload = unmask(data[pos + header : pos + header + length], key)
            pos += header + length
            if opcode >= CLOSE:
                self._control(opcode, payload, events)
            else:
                if compressed or self._inflater is not None:
                    payload = self._inflate(fin, opcode, payload)
                    inflated += len(payload)
                self._data(fin, opcode, payload, events)
        return pos

    def _check_header(self, fin: int, opcode: int, length: int, compressed: int) -> None:
        """Refuse a bad frame from its header alone, before its payload arrives."""
        if compressed and opcode in (CONTINUATION, PING, PONG, CLOSE):
            # RFC 7692 §6.1: only a message's first frame says it is compressed.
            raise _Fault(
                PROTOCOL_ERROR,
                "RSV1 set on a continuation or control frame",
                in_close=opcode == CLOSE,
            )
        if opcode >= CLOSE:
            if opcode > PONG:
                raise _Fault(PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
            closing = opcode == CLOSE  # a broken close frame is still the peer's close
            if not fin:
                raise _Fault(PROTOCOL_ERROR, "fragmented control frame", in_close=closing)
            if length > 125:
                raise _Fault(
                    PROTOCOL_ERROR, "control frame payload over 125 bytes", in_close=closing
                )
            return
        if opcode == CONTINUATION:
            if self._opcode is None:
                raise _Fault(PROTOCOL_ERROR, "continuation frame without a message to continue")
        elif opcode in (TEXT, BINARY):
            if self._opcode is not None:
                raise _Fault(PROTOCOL_ERROR, "new message before the fragmented one ended")
        else:
            raise _Fault(PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        if compressed or self._inflater is not None:
            if self._wire + length > compressed_limit(self.max_message):
                raise _Fault(TOO_BIG, f"compressed message over {self.max_message} bytes")
        elif self._size + length > self.max_message:
            raise _Fault(TOO_BIG, f"message over {self.max_message} bytes")

    def _inflate(self, fin: int, opcode: int, payload: bytes) -> bytes:
        """A compressed message's frame, inflated: at most what is left of the size limit."""
        inflater = self._inflater
        if opcode != CONTINUATION:
            inflater = self._inflater = Inflater(self.max_message)
        assert inflater is not None
        try:
            out = inflater.feed(payload, bool(fin))
        except InflateError as error:
            raise _Fault(error.code, error.reason) from None
        if fin:
            self._inflater, self._wire = None, 0
        else:
            self._wire += len(payload)
        return out

    def _data(self, fin: int, opcode: int, payload: bytes, events: list[Event]) -> None:
        # ``payload`` is always ``bytes``: unmask() makes a new object.
        if opcode != CONTINUATION and fin:  # the usual case: a message in one frame
            if opcode == TEXT:
                try:
                    events.append(Message(payload.decode()))
                except UnicodeDecodeError:
                    raise _Fault(INVALID_DATA, "text message is not valid UTF-8") from None
            else:
                events.append(Message(payload))
            return
        if opcode != CONTINUATION:
            self._opcode = opcode
            if opcode == TEXT:
                self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._size += len(payload)
        decoder = self._decoder
        if decoder is not None:
            try:
                decoder.decode(payload, final=bool(fin))
            except UnicodeDecodeError:
                raise _Fault(INVALID_DATA, "text message is not valid UTF-8") from None
        if self._fragments is None:
            self._fragments = bytearray()
        self._fragments += payload
        if fin:
            whole = bytes(self._fragments)
            text = self._opcode == TEXT
            self._fragments = None
            self._opcode, self._decoder, self._size = None, None, 0
            events.append(Message(whole.decode() if text else whole))

    def _control(self, opcode: int, payload: bytes, events: list[Event]) -> None:
        if opcode == PING:
            events.append(Ping(payload))
        elif opcode == PONG:
            events.append(Pong(payload))
        else:
            self.done = True
            try:
                events.append(_close(payload))
            except _Fault as fault:
                fault.in_close = True
                raise


def _close(payload: bytes) -> Close:
    if not payload:
        return Close(NO_STATUS, "")
    if len(payload) == 1:
        raise _Fault(PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if not valid_close_code(code):
        raise _Fault(PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise _Fault(INVALID_DATA, "close reason is not valid UTF-8") from None
    return Close(code, reason)
