"""The protocol codec: every frame a client can send gets a request or a typed error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from triows._core import protocol
from triows._core.protocol import ProtocolError, parse_request


def error_of(raw: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_request(raw)
    return info.value


def test_parses_each_request_type() -> None:
    assert parse_request('{"type":"subscribe","channel":"a","id":1}') == protocol.Subscribe(
        channel="a", id=1
    )
    assert parse_request(
        '{"type":"subscribe","channel":"a","since":5,"epoch":"e.1"}'
    ) == protocol.Subscribe(channel="a", since=5, epoch="e.1")
    assert parse_request('{"type":"unsubscribe","channel":"a"}') == protocol.Unsubscribe(
        channel="a"
    )
    assert parse_request(
        '{"type":"publish","channel":"a","data":[1,{"b":null}],"id":"k"}'
    ) == protocol.Publish(channel="a", data=[1, {"b": None}], id="k")
    assert parse_request('{"type":"ping"}') == protocol.Ping()
    assert parse_request('{"type":"refresh","token":"t"}') == protocol.Refresh(token="t")


def test_unknown_fields_are_ignored() -> None:
    assert parse_request('{"type":"ping","future":true}') == protocol.Ping()


def test_publish_data_may_be_any_json_value_including_null() -> None:
    assert parse_request('{"type":"publish","channel":"a","data":null}').data is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"type":"ping"}', "binary frames"),
        ("not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1,2]", "JSON object"),
        ('"ping"', "JSON object"),
        ("{}", "'type'"),
        ('{"type":5}', "'type'"),
        ('{"type":"dance"}', "unknown type"),
        ('{"type":"subscribe"}', "missing field 'channel'"),
        ('{"type":"subscribe","channel":""}', "1 to 255"),
        ('{"type":"subscribe","channel":"a b"}', "may only contain"),
        ('{"type":"subscribe","channel":"news.*"}', "may only contain"),
        ('{"type":"subscribe","channel":7}', "must be a string"),
        ('{"type":"subscribe","channel":"' + "x" * 256 + '"}', "1 to 255"),
        ('{"type":"subscribe","channel":"a","since":-1}', "'since'"),
        ('{"type":"subscribe","channel":"a","since":1.5}', "'since'"),
        ('{"type":"subscribe","channel":"a","since":true}', "'since'"),
        ('{"type":"subscribe","channel":"a","epoch":3}', "'epoch'"),
        ('{"type":"publish","channel":"a"}', "missing field 'data'"),
        ('{"type":"publish","channel":"a","data":NaN}', "not valid JSON"),
        ('{"type":"publish","channel":"a","data":1e999}', "not valid JSON"),
        ('{"type":"publish","channel":"a","data":-Infinity}', "not valid JSON"),
        ('{"type":"publish","channel":"a","data":' + "[" * 40 + "]" * 40 + "}", "nested deeper"),
        ('{"type":"ping","id":1.5}', "'id'"),
        ('{"type":"ping","id":true}', "'id'"),
        ('{"type":"ping","id":""}', "'id'"),
        ('{"type":"ping","id":9007199254740992}', "'id'"),
        ('{"type":"ping","id":[1]}', "'id'"),
        ('{"type":"refresh"}', "'token'"),
    ],
)
def test_bad_frames_get_typed_400(raw: str | bytes, fragment: str) -> None:
    error = error_of(raw)
    assert error.code == 400
    assert fragment in error.message


def test_huge_integer_and_deep_nesting_do_not_crash() -> None:
    assert error_of('{"type":"ping","x":' + "9" * 5000 + "}").code == 400
    assert error_of("[" * 100_000 + "]" * 100_000).code == 400


def test_error_carries_request_id_when_readable() -> None:
    error = error_of('{"type":"subscribe","id":"r1"}')
    assert error.request_id == "r1"
    assert error_of('{"type":"dance","id":7}').request_id == 7


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.text() | st.binary())
def test_any_input_yields_request_or_protocol_error(raw: str | bytes) -> None:
    try:
        parse_request(raw)
    except ProtocolError as exc:
        assert exc.code == 400


@given(
    st.dictionaries(
        st.sampled_from(["type", "channel", "data", "id", "since", "epoch", "token", "x"]),
        json_values | st.sampled_from(["publish", "subscribe", "ping", "refresh", "unsubscribe"]),
    )
)
def test_any_object_yields_request_or_protocol_error(frame: dict[str, Any]) -> None:
    try:
        request = parse_request(json.dumps(frame))
    except ProtocolError as exc:
        assert exc.code == 400
    else:
        assert request.id is None or request.id == frame.get("id")


@given(json_values)
def test_encoded_message_equals_json_encoding(data: Any) -> None:
    payload = protocol.message_payload(
        channel="room:1",
        data_json=protocol.encode_value(data),
        sender='c"lient',
        timestamp_ms=1700000000000,
        seq=42,
        message_id="ab.1:42",
    )
    assert json.loads(payload) == {
        "type": "message",
        "channel": "room:1",
        "data": data,
        "from": 'c"lient',
        "timestamp": 1700000000000,
        "seq": 42,
        "id": "ab.1:42",
    }


def test_lone_surrogate_is_still_deliverable() -> None:
    request = parse_request('{"type":"publish","channel":"a","data":"\\ud800"}')
    encoded = protocol.encode_value(request.data)  # type: ignore[union-attr]
    assert encoded == b'"\\ud800"'
    encoded.decode("utf-8")


def test_encode_is_compact_and_keeps_unicode() -> None:
    assert protocol.encode({"a": "é", "b": [1, 2]}) == '{"a":"é","b":[1,2]}'.encode()
