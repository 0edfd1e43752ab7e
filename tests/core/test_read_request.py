"""The common publish's fast read (``read_request``) against the full parse: same answers.

``read_request`` hands the commonest request over as its fields, checked by its own code;
everything it does not take, errors included, goes to ``parse_request``. Whatever a client
writes, the two must agree: the same publish, or the same error (code, message, id, limit).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triows._core import compiled_json, protocol
from triows._core.protocol import ProtocolError, parse_request, read_request

CHANNELS = ["rpc", "room.1", "a" * 255, "", "a b", "news.*", "é", "a" * 256]
WARM = [name for name in CHANNELS[:3]]


def outcome(parse: Any, raw: str | bytes) -> tuple[Any, ...]:
    try:
        request = parse(raw)
    except ProtocolError as exc:
        return ("error", exc.code, exc.message, repr(exc.request_id), exc.limit)
    if isinstance(request, tuple):
        channel, data, request_id, echo = request
        request = protocol.Publish(channel=channel, data=data, id=request_id, echo=echo)
    # repr tells 1 from 1.0 from True, which == does not.
    return ("ok", type(request).__name__, repr(request))


def warm_channels() -> None:
    """Names seen valid once are in the fast path's table, as in a running server."""
    for name in WARM:
        parse_request(json.dumps({"type": "publish", "channel": name, "data": 0}))


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)
request_ids = st.one_of(
    st.none(),
    st.integers(min_value=-(2**54), max_value=2**54),
    st.sampled_from([2**53 - 1, -(2**53) + 1, 2**53, -(2**53), 0, True, False, 1.5, 1.0]),
    st.text(max_size=130),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
MISSING = object()


def deep(levels: int, opener: str) -> str:
    closer = "]" if opener == "[" else "}"
    inner = "0" if opener == "[" else '{"a":0}'
    if opener == "{":
        return '{"a":' * levels + "0" + "}" * levels
    return opener * levels + inner + closer * levels


@st.composite
def frames(draw: st.DrawFn) -> str | bytes:
    fields: dict[str, Any] = {}
    kind = draw(st.sampled_from(["publish"] * 6 + ["subscribe", "ping", "", 7, None, MISSING]))
    if kind is not MISSING:
        fields["type"] = kind
    channel = draw(st.one_of(st.sampled_from([*CHANNELS, MISSING, 5, None]), st.text(max_size=8)))
    if channel is not MISSING:
        fields["channel"] = channel
    if draw(st.integers(0, 9)):
        fields["data"] = draw(json_value)
    request_id = draw(request_ids)
    if request_id is not None or draw(st.booleans()):
        fields["id"] = request_id
    echo = draw(st.sampled_from([MISSING, MISSING, True, False, None, 1, 0, "true"]))
    if echo is not MISSING:
        fields["echo"] = echo
    if draw(st.booleans()):
        fields["extra"] = draw(json_value)
    items = list(fields.items())
    draw(st.randoms()).shuffle(items)
    separators = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    text = "{" + separators[0].join(
        json.dumps(key) + separators[1] + json.dumps(value, separators=separators)
        for key, value in items
    )
    # Hostile variations: a field named twice, nesting, brackets in strings, cut or padded text.
    if draw(st.integers(0, 5)) == 0:
        text += separators[0] + '"type":"publish"' if items else '"type":"publish"'
    if draw(st.integers(0, 5)) == 0:
        levels = draw(st.sampled_from([30, 31, 32, 33, 2000]))
        opener = draw(st.sampled_from(["[", "{"]))
        text += (separators[0] if items else "") + '"data":' + deep(levels, opener)
    text += "}"
    if draw(st.integers(0, 7)) == 0:
        text = (
            draw(st.sampled_from([" ", "\n", ""])) + text + draw(st.sampled_from([" ", "x", "{}"]))
        )
    if draw(st.integers(0, 9)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    if draw(st.integers(0, 9)) == 0:
        text = text.replace("0", "NaN", 1).replace("1", "1e999", 1)
    if draw(st.integers(0, 19)) == 0:
        return text.encode()
    return text


@settings(max_examples=3000, deadline=None)
@given(frames())
def test_the_fast_read_answers_as_the_full_parse(raw: str | bytes) -> None:
    warm_channels()
    assert outcome(read_request, raw) == outcome(parse_request, raw)


@st.composite
def client_frames(draw: st.DrawFn) -> str:
    """Publishes in the order clients write them (``type``, ``channel``, ``data``, ``id``),
    compact, the shape read without a dict of fields; with what may follow ``data`` or
    stand in the id's place in hostile frames."""
    channel = draw(st.sampled_from([*CHANNELS, "never.seen", 'q"x', "a\\u0062"]))
    text = '{"type":"publish","channel":' + json.dumps(channel)[:-1]
    if draw(st.integers(0, 9)) == 0:
        text += draw(st.sampled_from(["\\", "\\u00e9", "\x01"]))
    text += '","data":'
    if draw(st.integers(0, 5)) == 0:
        text += deep(draw(st.sampled_from([30, 31, 32, 33, 2000])), draw(st.sampled_from("[{")))
    else:
        text += draw(st.sampled_from(["", " "])) + json.dumps(
            draw(json_value), separators=(",", ":")
        )
    digits = draw(
        st.one_of(
            st.integers(min_value=-(2**54), max_value=2**54).map(str),
            st.sampled_from(
                [str(2**53 - 1), str(-(2**53) + 1), str(2**53), str(-(2**53)), "-0", "01", "-01"]
            ),
            st.sampled_from(["1.5", "1e3", "+1", " 1", "1 ", "true", '"k"', "null", "9" * 25]),
            # String ids as triows.js and the Python client write them, and near them.
            st.sampled_from(
                [
                    '"c3f2a-17"',
                    '""',
                    '"' + "k" * 128 + '"',
                    '"' + "k" * 129 + '"',
                    '"a\\"b"',
                    '"a\\\\b"',
                    '"\\u0041"',
                    '"é€😀"',
                    '"a\x01"',
                    '"a',
                    '"a"b"',
                    '"a}"',
                ]
            ),
        )
    )
    tail = draw(
        st.sampled_from(
            [
                "}",
                ',"id":' + digits + "}",
                ',"id":' + digits + ',"id":2}',
                ',"id":' + digits + ',"echo":true}',
                ',"echo":false}',
                ',"id":' + digits + "} ",
                ',"id":' + digits,
                "} {}",
                ',"type":"ping"}',
                ' ,"id":1}',
            ]
        )
    )
    return text + tail


@settings(max_examples=3000, deadline=None)
@given(client_frames())
def test_the_fast_read_of_the_clients_shape_answers_as_the_full_parse(raw: str) -> None:
    warm_channels()
    assert outcome(read_request, raw) == outcome(parse_request, raw)


@pytest.mark.parametrize(
    "raw",
    [
        '{"type":"publish","channel":"rpc","data":{"n":1},"id":7}',
        '{"type": "publish", "channel": "rpc", "data": [1, "x"], "id": "k-1"}',
        '{"channel":"room.1","data":null,"type":"publish","echo":true}',
        '{"type":"publish","channel":"rpc","data":' + "[" * 31 + "]" * 31 + "}",
        '{"type":"publish","channel":"rpc","data":{"n":1,"pad":"xx"},"id":-9007199254740991}',
        '{"type":"publish","channel":"room.1","data":"}","id":0}',
        ' {"type":"publish","channel":"rpc","data":1} ',
    ],
)
def test_the_common_publish_takes_the_fast_read(raw: str) -> None:
    warm_channels()
    fields = read_request(raw)
    assert isinstance(fields, tuple)
    assert outcome(read_request, raw) == outcome(parse_request, raw)


@pytest.mark.parametrize(
    "raw",
    [
        '{"type":"publish","channel":"never.seen.before","data":1}',  # checked by the full rule
        '{"type":"publish","channel":"rpc","data":1,"id":1.5}',
        '{"type":"publish","channel":"rpc","data":1,"id":""}',
        '{"type":"publish","channel":"rpc","data":1,"echo":1}',
        '{"type":"publish","channel":"rpc","data":' + "[" * 32 + "]" * 32 + "}",
        '{"type":"publish","channel":"rpc"}',
        '{"type":"ping","id":1}',
    ],
)
def test_anything_else_is_the_full_parse(raw: str) -> None:
    warm_channels()
    protocol._valid_channels.pop("never.seen.before", None)
    expected = outcome(parse_request, raw)
    protocol._valid_channels.pop("never.seen.before", None)
    assert not isinstance(read_request_or_error(raw), tuple)
    assert outcome(read_request, raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        # triows.js: JSON.stringify({type, channel, data, id}) with its "<prefix>-<n>" ids.
        '{"type":"publish","channel":"rpc","data":{"rows":[1,2,3]},"id":"c3f2a-17"}',
        '{"type":"publish","channel":"room.1","data":"x","id":"' + "k" * 128 + '"}',
        '{"type":"publish","channel":"rpc","data":[],"id":7}',
        '{"type":"publish","channel":"rpc","data":null}',
        # With the protocol's ``echo`` after the id, or alone.
        '{"type":"publish","channel":"rpc","data":{"n":1},"id":"c3f2a-18","echo":true}',
        '{"type":"publish","channel":"rpc","data":[1],"id":9,"echo":false}',
        '{"type":"publish","channel":"rpc","data":"x","echo":true}',
    ],
)
def test_the_clients_publish_is_decoded_once(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What clients write, string ids included (both triows clients send them), is decoded
    once, by msgspec: not a second time, and never by the standard library's decoder."""
    warm_channels()
    decodes: list[str] = []
    decode = compiled_json.decode

    def counting(text: str) -> Any:
        decodes.append(text)
        return decode(text)

    def standard(text: str) -> Any:
        raise AssertionError(f"decoded by the standard path: {text}")

    monkeypatch.setattr(compiled_json, "decode", counting)
    monkeypatch.setattr(protocol._decoder, "decode", standard)
    fields = read_request(raw)
    assert isinstance(fields, tuple)
    assert decodes == [raw]
    monkeypatch.undo()
    assert outcome(read_request, raw) == outcome(parse_request, raw)


def read_request_or_error(raw: str) -> object:
    try:
        return read_request(raw)
    except ProtocolError as exc:
        return exc
