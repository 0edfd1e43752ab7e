"""The server's frame parser against what wsproto's client sends, in any chunking."""

from __future__ import annotations

import itertools
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, XorMaskerSimple

from triows._core.frame_parser import (
    Close,
    Event,
    Failure,
    FrameParser,
    Message,
    Ping,
    Pong,
    unmask,
    valid_close_code,
)

from ..wireclient import encode_frame

messages = st.one_of(
    st.text(max_size=400).filter(lambda t: not any(0xD800 <= ord(c) <= 0xDFFF for c in t)),
    st.binary(max_size=400),
)


def client_bytes(items: list[str | bytes | tuple[str, bytes]], fragment: int) -> bytes:
    """What a wsproto client sends: messages (in fragments of ``fragment`` bytes), pings."""
    proto = FrameProtocol(client=True, extensions=[])
    out = bytearray()
    for item in items:
        if isinstance(item, tuple):
            out += proto.ping(item[1])
            continue
        raw = item.encode() if isinstance(item, str) else item
        parts = [raw[i : i + fragment] for i in range(0, len(raw), fragment)] or [b""]
        pieces: list[str | bytes] = list(parts)
        if isinstance(item, str):
            # wsproto takes str per text fragment: split where every piece is whole UTF-8,
            # else send the message in one frame.
            try:
                pieces = [part.decode() for part in parts]
            except UnicodeDecodeError:
                pieces = [item]
        for index, piece in enumerate(pieces):
            out += proto.send_data(piece, index == len(pieces) - 1)
    return bytes(out)


def events_of(parser: FrameParser, data: bytes, cuts: list[int]) -> list[object]:
    events: list[object] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in itertools.pairwise(points):
        events.extend(parser.feed(data[start:end]))
    return events


@given(
    st.lists(st.one_of(messages, st.tuples(st.just("ping"), st.binary(max_size=125)))),
    st.integers(1, 64),
    st.lists(st.integers(0, 10_000), max_size=20),
)
def test_any_chunking_of_valid_frames_gives_the_same_events(
    items: list[str | bytes | tuple[str, bytes]], fragment: int, cuts: list[int]
) -> None:
    data = client_bytes(items, fragment)
    events = events_of(FrameParser(1 << 20), data, cuts)
    expected = [("ping", i[1]) if isinstance(i, tuple) else ("message", i) for i in items]
    got = [
        ("ping", e.payload) if isinstance(e, Ping) else ("message", e.data)
        for e in events
        if isinstance(e, Ping | Message)
    ]
    assert got == expected
    assert not any(isinstance(e, Failure) for e in events)


@given(st.binary(max_size=2000), st.binary(min_size=4, max_size=4))
def test_unmask_matches_wsproto(payload: bytes, key: bytes) -> None:
    assert unmask(payload, key) == bytes(XorMaskerSimple(key).process(bytearray(payload)))


def feed_frames(*frames: bytes, limit: int = 1 << 20) -> list[Event]:
    return FrameParser(limit).feed(b"".join(frames))


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([encode_frame(0x1, b"\xff")], 1007),
        ([encode_frame(0x1, b"a\xff", fin=False)], 1007),  # refused at the fragment
        ([encode_frame(0x8, (1004).to_bytes(2, "big"))], 1002),
        ([encode_frame(0x8, (2999).to_bytes(2, "big"))], 1002),
        ([encode_frame(0x8, b"\x03")], 1002),
        ([encode_frame(0x8, (1000).to_bytes(2, "big") + b"\xff")], 1007),
        ([encode_frame(0x1, b"{}", mask=False)], 1002),
        ([encode_frame(0x9, b"x" * 126)], 1002),
        ([encode_frame(0x9, b"", fin=False)], 1002),
        ([encode_frame(0x1, b"", rsv=1)], 1002),
        ([encode_frame(0xB, b"")], 1002),
        ([encode_frame(0x0, b"x")], 1002),
        ([encode_frame(0x1, b"x", fin=False), encode_frame(0x2, b"y")], 1002),
        ([encode_frame(0x2, b"x" * 600, fin=False), encode_frame(0x0, b"x" * 600)], 1009),
    ],
)
def test_protocol_errors_fail_with_their_code(frames: list[bytes], code: int) -> None:
    events = feed_frames(*frames, limit=1000)
    assert isinstance(events[-1], Failure)
    assert events[-1].code == code


def test_events_before_a_fault_are_kept_and_nothing_after_it() -> None:
    parser = FrameParser(1000)
    events = parser.feed(encode_frame(0x1, b"ok") + encode_frame(0x1, b"\xff"))
    assert isinstance(events[0], Message)
    assert events[0].data == "ok"
    assert isinstance(events[1], Failure)
    assert parser.done
    assert parser.feed(encode_frame(0x1, b"more")) == []


def test_a_frame_too_big_is_refused_from_its_header() -> None:
    header = encode_frame(0x2, b"x" * 70_000)[:14]  # 64-bit length, key; no payload yet
    events = FrameParser(65_536).feed(header)
    assert isinstance(events[0], Failure)
    assert events[0].code == 1009


def test_non_minimal_lengths_are_refused() -> None:
    frame = bytes([0x81, 0x80 | 126, 0, 5]) + b"\0\0\0\0" + b"hello"
    assert isinstance(FrameParser(1000).feed(frame)[0], Failure)


def test_close_pong_and_what_follows_a_close() -> None:
    parser = FrameParser(1000)
    events = parser.feed(
        encode_frame(0xA, b"p")
        + encode_frame(0x8, (4000).to_bytes(2, "big") + "bye é".encode())
        + encode_frame(0x1, b"after")
    )
    assert isinstance(events[0], Pong)
    assert events[0].payload == b"p"
    assert isinstance(events[1], Close)
    assert (events[1].code, events[1].reason) == (4000, "bye é")
    assert len(events) == 2
    assert parser.done
    assert isinstance(empty := FrameParser(10).feed(encode_frame(0x8, b""))[0], Close)
    assert empty.code == 1005


def test_a_large_frame_in_small_pieces_is_buffered_once() -> None:
    parser = FrameParser(1 << 22)
    data = encode_frame(0x2, bytes(range(256)) * 8192)
    for start in range(0, len(data), 1000):
        events = parser.feed(data[start : start + 1000])
        assert events == [] or start + 1000 >= len(data)
    assert isinstance(events[0], Message)
    assert events[0].data == bytes(range(256)) * 8192
    assert parser.buffered == 0


def held_while_fragmented(parser: FrameParser, first: bytes, more: bytes, count: int) -> int:
    """Bytes traced while ``parser`` holds a message started with ``first`` and continued by
    ``count`` frames ``more`` (fed 2000 at a time)."""
    tracemalloc.start()
    try:
        assert parser.feed(first) == []
        for _ in range(count // 2000):
            assert parser.feed(more * 2000) == []
        return tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def test_a_message_in_one_byte_fragments_holds_about_its_size() -> None:
    """A list of 1-byte ``bytes`` held ~40 bytes per byte: a 60 KB message was 2.4 MiB."""
    parser = FrameParser(64 * 1024)
    more = encode_frame(0x0, b"a", fin=False)
    held = held_while_fragmented(parser, encode_frame(0x1, b"a", fin=False), more, 60_000)
    assert held < 3 * 60_000, held
    events = parser.feed(encode_frame(0x0, b"z"))
    assert isinstance(events[0], Message)
    assert events[0].data == "a" * 60_001 + "z"


def test_empty_fragments_hold_nothing() -> None:
    """Empty continuation frames never reach the size limit: each held a list slot, for ever."""
    parser = FrameParser(64 * 1024)
    more = encode_frame(0x0, b"", fin=False)
    held = held_while_fragmented(parser, encode_frame(0x2, b"x", fin=False), more, 100_000)
    assert held < 16 * 1024, held
    events = parser.feed(encode_frame(0x0, b""))
    assert isinstance(events[0], Message)
    assert events[0].data == b"x"


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999])
def test_valid_close_codes(code: int) -> None:
    assert valid_close_code(code)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000])
def test_invalid_close_codes(code: int) -> None:
    assert not valid_close_code(code)
