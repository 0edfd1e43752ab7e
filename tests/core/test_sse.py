"""The SSE event format and the ids that resume a stream (triows._core.sse)."""

from __future__ import annotations

import pytest

from triows._core import protocol, sse
from triows._core.frames import frame, text_frame

CHANNELS = ["news", "chat.room-1", "prices"]


def test_id_round_trip_and_compact() -> None:
    positions: list[sse.Position] = [("a41c09de.1", 1000), None, ("a41c09de.12", 0)]
    text = sse.encode_id(CHANNELS, positions)
    assert text.startswith("1:")
    assert sse.decode_id(text, CHANNELS) == positions
    # One node's epochs share a prefix: written once.
    assert "a41c09de.1~*12" in text
    assert text.endswith(":0.rs,,1.0")  # 1000 in base 36 is "rs"


def test_id_with_epochs_of_different_nodes() -> None:
    positions: list[sse.Position] = [("aa.1", 5), ("bb.1", 6), ("aa.1", 7)]
    text = sse.encode_id(CHANNELS, positions)
    assert sse.decode_id(text, CHANNELS) == positions
    assert text.split(":")[2] == "aa.1~bb.1"  # distinct epochs once each


def test_nothing_known_yet() -> None:
    text = sse.encode_id(["a"], [None])
    assert sse.decode_id(text, ["a"]) == [None]


def test_id_is_bounded_by_the_channel_count() -> None:
    channels = [f"channel-{i}" for i in range(100)]
    positions: list[sse.Position] = [(f"{i:08x}.{i}", sse.MAX_SEQ) for i in range(100)]
    text = sse.encode_id(channels, positions)
    assert len(text) <= 100 * (sse.MAX_EPOCH_LENGTH + 20)
    assert sse.decode_id(text, channels) == positions


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "4 fields"),
        ("hello", "4 fields"),
        ("2:x:a.1:0.1", "version"),
        ("1:wrong:a.1:0.1,,", "another list"),
        ("x" * (sse.MAX_ID_LENGTH + 1), "longer"),
    ],
)
def test_garbled_ids_are_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(sse.LastEventIdError, match=why):
        sse.decode_id(text, CHANNELS)


@pytest.mark.parametrize(
    ("table", "entries", "why"),
    [
        ("a.1", "0.1,0.2", "2 positions for 3"),
        ("a.1", "0.1,0.2,0.3,0.4", "4 positions for 3"),
        ("a.1", "1.1,,", "epoch index 1 beyond"),
        ("a.1", "0.-1,,", "base-36"),
        ("a.1", "0.+1,,", "base-36"),
        ("a.1", "0.1_0,,", "base-36"),
        ("a.1", "0. 1,,", "base-36"),
        ("a.1", "0.A,,", "base-36"),
        ("a.1", "01,,", "bad position"),
        ("a.1", "0.zzzzzzzzzzzzz,,", "out of range"),
        ("a.1", "0." + "1" * 14 + ",,", "base-36"),
        ("a b", "0.1,,", "bad epoch"),
        ("*1", "0.1,,", "abbreviated"),
        ("x" * 65, "0.1,,", "bad epoch"),
        ("a.1~", "0.1,,", "bad epoch"),
    ],
)
def test_hostile_positions_are_refused(table: str, entries: str, why: str) -> None:
    text = f"1:{sse.fingerprint(CHANNELS)}:{table}:{entries}"
    with pytest.raises(sse.LastEventIdError, match=why):
        sse.decode_id(text, CHANNELS)


def test_an_epoch_an_id_cannot_hold_is_no_position() -> None:
    assert sse.encode_id(["a"], [("with space", 3)]).endswith(":")
    assert not sse.epoch_allowed("x" * 65)


def test_channel_list_keeps_order_and_drops_repeats() -> None:
    assert sse.channels_of(["b", "a", "b"]) == ["b", "a"]
    assert sse.fingerprint(["a", "b"]) != sse.fingerprint(["b", "a"])


def test_event_format() -> None:
    assert sse.event(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert sse.event(b"x", name="gap", event_id="1:a::") == b"event: gap\nid: 1:a::\ndata: x\n\n"
    # A line break (never in compact JSON) becomes a data line of its own.
    assert sse.event(b"a\nb\r\nc\rd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"
    assert sse.comment() == b":\n\n"
    assert sse.comment("hi") == b": hi\n\n"
    assert sse.retry_field(1500) == b"retry: 1500\n\n"


def test_retry_jitter_spreads_within_half_the_base() -> None:
    assert sse.retry_with_jitter(2.0, 0.0) == 1000
    assert sse.retry_with_jitter(2.0, 0.5) == 2000
    assert sse.retry_with_jitter(2.0, 0.999999) == 3000
    assert sse.retry_with_jitter(0.0001, 0.0) == 1


@pytest.mark.parametrize("size", [3, 200, 70_000])
def test_payload_of_frames_of_every_length(size: int) -> None:
    payload = b"x" * size
    framed = text_frame(payload)
    assert framed[sse.payload_start(framed) :] == payload
    assert sse.payload_start(frame(0x9, b"ping")) == -1
    assert sse.payload_start(b"") == -1


def test_message_fields_without_decoding() -> None:
    payload = protocol.message_payload(
        channel="c",
        data_json=protocol.encode({"id": "decoy:9", "type": "x", "channel": "d"}),
        sender="s",
        timestamp_ms=5,
        seq=42,
        message_id="ab.1:42",
    )
    framed = text_frame(payload)
    start = sse.payload_start(framed)
    assert sse.frame_type(framed, start) == "message"
    assert sse.message_fields(framed, start) == ("c", "ab.1:42", 42)
    assert sse.message_fields(payload) == ("c", "ab.1:42", 42)
    assert sse.frame_type(b'{"type":"join","channel":"c"}') == "join"
    assert sse.frame_type(b"[]") is None
    assert sse.message_fields(b'{"type":"join","channel":"c"}') is None
    assert sse.message_fields(b'{"type":"message","channel":"c"}') is None
    assert sse.message_fields(b'{"type":"message","channel":"c","id":"e:x"}') is None


def test_a_message_event_copies_the_payload_once() -> None:
    framed = text_frame(b'{"a":1}')
    start = sse.payload_start(framed)
    assert sse.message_event(framed, start, "1:x::") == b'id: 1:x::\ndata: {"a":1}\n\n'
    assert sse.message_event(framed, start, None) == b'data: {"a":1}\n\n'


def test_the_id_writer_moves_as_encode_id_writes() -> None:
    channels = ["a", "b", "c"]
    positions: list[sse.Position] = [None, ("n.1", 0), ("n.2", 5)]
    writer = sse.IdWriter(channels, positions)
    assert writer.text() == sse.encode_id(channels, positions)
    for channel, position in [
        ("a", ("n.1", 1)),
        ("b", ("n.1", 7)),  # the same epoch: one entry rewritten
        ("c", ("m.9", 0)),  # a new epoch: the table rebuilt
        ("a", None),
        ("x", ("n.1", 3)),  # not a channel of the stream: nothing
    ]:
        writer.move(channel, position)
        if channel in channels:
            positions[channels.index(channel)] = position
        assert writer.text() == sse.encode_id(channels, positions)
        assert sse.decode_id(writer.text(), channels) == positions


def test_sse_flags_and_variables() -> None:
    from triows._cli.options import parse_config

    config = parse_config(["--sse-path", "/events", "--sse-keepalive", "5"], {}).config
    assert (config.sse_path, config.sse_keepalive, config.sse_retry) == ("/events", 5, 3)
    config = parse_config([], {"TRIOWS_SSE_PATH": "off", "TRIOWS_SSE_RETRY": "0.5"}).config
    assert (config.sse_path, config.sse_retry) == (None, 0.5)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--sse-path", "events"], "starting with '/'"),
        (["--sse-path", "/api/x"], "HTTP endpoint"),
        (["--sse-keepalive", "0"], "--sse-keepalive"),
    ],
)
def test_bad_sse_flags(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    from triows._cli.options import parse_config

    with pytest.raises(SystemExit) as exited:
        parse_config(argv, {})
    assert exited.value.code == 2
    assert fragment in capsys.readouterr().err
