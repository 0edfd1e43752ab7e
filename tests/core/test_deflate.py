"""permessage-deflate's data path: a frame compressed once, inbound frames inflated within the
message limit, and the reserved-bit rules of RFC 7692 §6."""

from __future__ import annotations

import json
import zlib

import pytest
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol

from triows._core.deflate import TAIL, compress, deflated_frame, window_bits
from triows._core.frame_parser import (
    INFLATE_STEP,
    Failure,
    FrameParser,
    Message,
    Ping,
    compressed_limit,
)
from triows._core.frames import BINARY, PING, TEXT, frame, header_length

from ..wireclient import encode_frame

JSON = json.dumps(
    {"type": "message", "channel": "prices", "data": [{"id": n, "px": n * 1.5} for n in range(40)]}
).encode()


def inflate(data: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(data + TAIL)


def test_a_frame_is_compressed_into_its_twin() -> None:
    plain = frame(TEXT, JSON)
    twin = deflated_frame(plain)
    assert twin[0] == 0xC1  # FIN, RSV1, text
    assert len(twin) < len(plain) * 0.45
    start = header_length(twin)
    length = twin[1] if start == 2 else int.from_bytes(twin[2:4], "big")
    assert len(twin) == start + length
    assert inflate(twin[start:]) == JSON


def test_a_large_frame_keeps_its_opcode_and_length_encoding() -> None:
    payload = bytes(range(256)) * 600  # 150 KiB: a 64-bit length before, 16-bit after
    plain = frame(BINARY, payload)
    twin = deflated_frame(plain)
    assert twin[0] == 0xC2
    assert twin[1] == 126
    assert inflate(twin[4:]) == payload


def test_what_does_not_shrink_stays_plain() -> None:
    plain = frame(TEXT, b"ab")
    assert deflated_frame(plain) is plain


@pytest.mark.parametrize(("size", "bits"), [(1, 9), (512, 9), (513, 10), (1024, 10), (40_000, 15)])
def test_the_window_covers_the_message(size: int, bits: int) -> None:
    assert window_bits(size) == bits


def test_what_wsproto_inflates() -> None:
    """A client's own permessage-deflate reads the compressed frame (interoperability)."""
    extension = PerMessageDeflate()
    extension._enabled = True
    extension.finalize("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    client = FrameProtocol(client=True, extensions=[extension])
    client.receive_bytes(deflated_frame(frame(TEXT, JSON)) + frame(TEXT, b"plain"))
    assert [f.payload for f in client.received_frames()] == [JSON.decode(), "plain"]


def compressed_message(payload: bytes, parts: int = 1) -> bytes:
    data = compress(payload)
    step = -(-len(data) // parts)
    chunks = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    out = bytearray()
    for index, chunk in enumerate(chunks):
        first = index == 0
        out += encode_frame(
            TEXT if first else 0, chunk, fin=index == len(chunks) - 1, rsv=4 if first else 0
        )
    return bytes(out)


@pytest.mark.parametrize("parts", [1, 2, 7])
@pytest.mark.parametrize("chunk", [1, 5, 10_000])
def test_compressed_messages_are_inflated(parts: int, chunk: int) -> None:
    parser = FrameParser(64 * 1024, inflate=True)
    data = (
        compressed_message(JSON, parts)
        + encode_frame(PING, b"p")
        + compressed_message(b"", 1)
        + encode_frame(TEXT, b"after")
    )
    events = [e for i in range(0, len(data), chunk) for e in parser.feed(data[i : i + chunk])]
    assert [getattr(e, "data", None) for e in events] == [JSON.decode(), None, "", "after"]
    assert isinstance(events[1], Ping)
    assert parser._inflater is None
    assert parser.buffered == 0


def test_a_deflate_bomb_is_1009_not_memory() -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = bomb.compress(b"\0" * (64 << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    assert len(data) < 100_000  # 64 MiB of zeros in ~64 KiB
    parser = FrameParser(1 << 20, inflate=True)
    events = parser.feed(encode_frame(TEXT, data[:-4], rsv=4))
    assert len(events) == 1
    assert isinstance(events[0], Failure)
    assert events[0].code == 1009


def test_a_fragmented_bomb_is_1009_too() -> None:
    payload = b"{" + b" " * (70 * 1024) + b"}"
    parser = FrameParser(64 * 1024, inflate=True)
    events = parser.feed(compressed_message(payload, parts=30))
    assert len(events) == 1
    assert isinstance(events[0], Failure)
    assert events[0].code == 1009


def test_one_read_of_small_frames_inflates_one_step_at_a_time() -> None:
    """A 16 KiB read of ~100-byte frames that each inflate to 64 KiB was ~9 MiB of messages
    (and ~40 ms of work) in one call: now at most a step's worth, the rest on the next call."""
    payload = b'{"type":"ping","pad":"' + b"a" * (64 * 1024 - 40) + b'"}'
    one = compressed_message(payload)
    count = 16 * 1024 // len(one)
    assert count > 100
    parser = FrameParser(64 * 1024, inflate=True)
    events = parser.feed(one * count + encode_frame(TEXT, b"plain"))
    assert sum(len(e.data) for e in events if isinstance(e, Message)) <= INFLATE_STEP + len(payload)
    assert parser.pending
    steps = 1
    while parser.pending:
        step = parser.feed(b"")
        assert sum(len(e.data) for e in step if isinstance(e, Message)) <= INFLATE_STEP + 64 * 1024
        events += step
        steps += 1
    assert steps > count // 2
    assert [e.data for e in events if isinstance(e, Message)] == [payload.decode()] * count + [
        "plain"
    ]
    assert parser.buffered == 0


def test_bytes_that_arrive_while_pending_are_parsed_after_the_rest() -> None:
    payload = b"x" * 60_000
    parser = FrameParser(64 * 1024, inflate=True)
    events = parser.feed(compressed_message(payload) * 3)
    assert parser.pending
    events += parser.feed(encode_frame(TEXT, b"late"))
    while parser.pending:
        events += parser.feed(b"")
    assert [len(e.data) for e in events if isinstance(e, Message)] == [60_000] * 3 + [4]


def test_the_limit_applies_to_the_inflated_size() -> None:
    payload = b"a" * (64 * 1024)
    exactly = FrameParser(64 * 1024, inflate=True).feed(compressed_message(payload))
    assert isinstance(exactly[0], Message)
    assert len(exactly[0].data) == 64 * 1024
    over = FrameParser(64 * 1024 - 1, inflate=True).feed(compressed_message(payload))
    assert isinstance(over[0], Failure)
    assert over[0].code == 1009


def test_compressed_bytes_over_their_limit_are_refused_from_the_header() -> None:
    parser = FrameParser(4096, inflate=True)
    header_only = encode_frame(TEXT, b"\0" * (compressed_limit(4096) + 1), rsv=4)[:14]
    events = parser.feed(header_only)
    assert isinstance(events[0], Failure)
    assert events[0].code == 1009


@pytest.mark.parametrize(
    ("data", "code"),
    [
        # The other reserved bits, with it.
        (encode_frame(TEXT, b"x", rsv=2), 1002),
        (encode_frame(TEXT, b"x", rsv=1), 1002),
        (encode_frame(TEXT, b"x", rsv=6), 1002),
        # RSV1 on a continuation and on control frames (RFC 7692 §6.1).
        (encode_frame(TEXT, b"ab", fin=False) + encode_frame(0, compress(b"c"), rsv=4), 1002),
        (encode_frame(PING, b"", rsv=4), 1002),
        (encode_frame(0x8, b"\x03\xe8", rsv=4), 1002),
        # Data that is not DEFLATE; compressed bytes of invalid UTF-8.
        (encode_frame(TEXT, b"\xff\xff\xff\xff", rsv=4), 1007),
        (encode_frame(TEXT, compress(b"\xff\xfe"), rsv=4), 1007),
    ],
)
def test_protocol_errors(data: bytes, code: int) -> None:
    parser = FrameParser(64 * 1024, inflate=True)
    events = parser.feed(data)
    assert isinstance(events[-1], Failure), events
    assert events[-1].code == code


def test_rsv1_is_a_protocol_error_without_negotiation() -> None:
    data = encode_frame(TEXT, compress(b"hello"), rsv=4)
    events = FrameParser(64 * 1024).feed(data)
    assert isinstance(events[0], Failure)
    assert events[0].code == 1002
    assert isinstance(FrameParser(64 * 1024, inflate=True).feed(data)[0], Message)
