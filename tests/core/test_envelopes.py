"""Templates and fast paths of the wire codec give exactly what the general path gives."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from triows._core import envelopes, protocol
from triows._core.frames import text_frame
from triows._core.protocol import ProtocolError, parse_request

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)
request_ids = st.integers(-(2**53) + 1, 2**53 - 1) | st.text(min_size=1, max_size=128)


@given(request_ids, st.integers(0, 2**53))
def test_the_ack_template_is_the_encoded_ack(request_id: str | int, seq: int) -> None:
    assert protocol.ack_payload(request_id, seq) == protocol.encode(
        {"type": "ack", "id": request_id, "seq": seq}
    )


def test_an_id_with_a_lone_surrogate_is_acked_in_ascii_escapes() -> None:
    request = parse_request('{"type":"publish","channel":"a","data":1,"id":"\\ud800x"}')
    assert request.id is not None
    ack = protocol.ack_payload(request.id, 3)
    assert ack == b'{"type":"ack","id":"\\ud800x","seq":3}'
    assert ack == protocol.encode({"type": "ack", "id": request.id, "seq": 3})


@given(json_values)
def test_a_parsed_value_encodes_as_encode_does(data: Any) -> None:
    """The same JSON; only a float the standard library spells with an exponent is spelt
    otherwise by msgspec (``1e-7`` against ``1e-07``), the same number."""
    parsed = protocol.decode_json(json.dumps(data))
    fast, standard = protocol.encode_parsed(parsed), protocol.encode(parsed)
    assert typed(json.loads(fast)) == typed(json.loads(standard)) == typed(parsed)
    if not any("e" in repr(leaf) for leaf in floats(parsed)):
        assert fast == standard


def floats(value: Any) -> list[float]:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [leaf for item in value for leaf in floats(item)]
    return [value] if isinstance(value, float) else []


def typed(value: Any) -> Any:
    """``value`` with every number tagged by its type and floats by their bits: 1, 1.0,
    True, 0.0 and -0.0 all differ (== would not tell them apart)."""
    if isinstance(value, dict):
        return ("dict", [(key, typed(item)) for key, item in value.items()])
    if isinstance(value, list):
        return ("list", [typed(item) for item in value])
    if isinstance(value, float):
        return ("float", value.hex())
    return (type(value).__name__, value)


def test_a_parsed_value_with_a_lone_surrogate_stays_deliverable() -> None:
    parsed = protocol.decode_json('{"a":"\\udc00é"}')
    assert protocol.encode_parsed(parsed) == protocol.encode(parsed) == b'{"a":"\\udc00\\u00e9"}'


@given(
    json_values,
    st.sampled_from(["c1", None, 'c"lient', "é"]),
    st.integers(0, 2**53),
    st.sampled_from(["ab.1", "k3x9a.4", ""]),
)
def test_the_numbered_template_is_the_message_template(
    data: Any, sender: str | None, seq: int, epoch: str
) -> None:
    data_json = protocol.encode_value(data)
    assert protocol.numbered_payload(
        "room:1", data_json, sender, 1700000000000, seq, epoch
    ) == protocol.message_payload(
        channel="room:1",
        data_json=data_json,
        sender=sender,
        timestamp_ms=1700000000000,
        seq=seq,
        message_id=f"{epoch}:{seq}",
    )


@given(
    st.sampled_from(
        [b"1", b'"' + b"x" * 90 + b'"', b'"' + b"y" * 200 + b'"', b"[" + b"0," * 40000 + b"0]"]
    ),
    st.sampled_from(["c1", None, 'c"lient', "é", "\ud800"]),
    st.integers(0, 2**53),
)
def test_the_numbered_frame_is_the_framed_numbered_payload(
    data_json: bytes, sender: str | None, seq: int
) -> None:
    """Short, medium and long frames, and a sender with no UTF-8 form (ASCII escapes)."""
    args = ("room:1", data_json, sender, 1700000000000, seq, "ab.1")
    assert envelopes.numbered_frame(*args) == text_frame(protocol.numbered_payload(*args))


@given(
    st.sampled_from(
        [b"1", b'"' + b"x" * 90 + b'"', b'"' + b"y" * 200 + b'"', b"[" + b"0," * 40000 + b"0]"]
    ),
    st.sampled_from(["c1", None, 'c"lient', "é", "\ud800"]),
    st.integers(0, 2**53),
    st.sampled_from(["room:1", "a", "x" * 100]),
    st.sampled_from(["ab.1", "k3x9a.4", ""]),
)
def test_the_message_framed_from_parts_is_the_numbered_frame(
    data_json: bytes, sender: str | None, seq: int, channel: str, epoch: str
) -> None:
    """The in-process broker's frame from parts made once per channel and sender."""
    framed = envelopes.framed_message(
        envelopes.message_head(channel),
        data_json,
        envelopes.sender_json(sender),
        1700000000000,
        seq,
        epoch.encode("ascii"),
    )
    assert framed == envelopes.numbered_frame(channel, data_json, sender, 1700000000000, seq, epoch)


@given(request_ids | st.sampled_from(["\ud800", "x" * 128, '"' * 128]), st.integers(0, 2**53))
def test_the_ack_frame_is_the_framed_ack(request_id: str | int, seq: int) -> None:
    assert envelopes.ack_frame(request_id, seq) == text_frame(protocol.ack_payload(request_id, seq))


@given(json_values, st.sampled_from(["c1", None, 'c"lient', "é"]))
def test_the_message_template_is_the_encoded_message(data: Any, sender: str | None) -> None:
    payload = protocol.message_payload(
        channel="room:1",
        data_json=protocol.encode_value(data),
        sender=sender,
        timestamp_ms=1700000000000,
        seq=7,
        message_id="ab.1:7",
    )
    assert payload == protocol.encode(
        {
            "type": "message",
            "channel": "room:1",
            "data": data,
            "from": sender,
            "timestamp": 1700000000000,
            "seq": 7,
            "id": "ab.1:7",
        }
    )


@pytest.mark.parametrize("text", ['  {"a":1}', '{"a":1}\n', '\t{"a":1} '])
def test_whitespace_around_a_document_is_accepted(text: str) -> None:
    assert protocol.decode_json(text) == {"a": 1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a":1} x', "Extra data"),
        ('{"a":1}{"b":2}', "Extra data"),
        ('{"a":NaN}', "NaN is not a JSON number"),
        ('{"a":1e999}', "number out of range"),
        ("", "Expecting value"),
    ],
)
def test_what_the_fast_decode_refuses_is_told_as_before(text: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        protocol.decode_json(text)


def test_depth_is_checked_when_the_frame_has_more_brackets_than_the_limit() -> None:
    shallow_but_bracketed = '{"type":"publish","channel":"a","data":"' + "{[" * 40 + '"}'
    assert parse_request(shallow_but_bracketed).data == "{[" * 40  # type: ignore[union-attr]
    depth = protocol.MAX_DEPTH
    at_limit = '{"type":"publish","channel":"a","data":' + "[" * depth + "]" * depth + "}"
    assert parse_request(at_limit).channel == "a"  # type: ignore[union-attr]
    over = '{"type":"publish","channel":"a","data":' + "[" * (depth + 1) + "]" * (depth + 1) + "}"
    with pytest.raises(ProtocolError, match="nested deeper"):
        parse_request(over)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ({"type": "publish", "channel": "a b", "data": 1}, "may only contain"),
        ({"type": "publish", "channel": ["a"], "data": 1}, "must be a string"),
        ({"type": "publish", "channel": "a", "data": 1, "id": True}, "'id' must be"),
        ({"type": "publish", "channel": "a", "data": 1, "id": 2**53}, "safe integer"),
        ({"type": "publish", "channel": "a", "data": 1, "echo": 1}, "'echo' must be"),
        ({"type": "publish", "channel": "a", "data": 1, "echo": None}, "'echo' must be"),
    ],
)
def test_the_publish_fast_path_refuses_what_the_rules_refuse(
    frame: dict[str, Any], message: str
) -> None:
    parse_request('{"type":"publish","channel":"a","data":1}')  # "a" is now a known name
    with pytest.raises(ProtocolError, match=message):
        parse_request(json.dumps(frame))


def test_the_cache_of_valid_names_stays_bounded() -> None:
    for n in range(protocol._VALID_CHANNELS_KEPT + 10):
        parse_request(json.dumps({"type": "publish", "channel": f"c{n}", "data": 1}))
    assert len(protocol._valid_channels) <= protocol._VALID_CHANNELS_KEPT
