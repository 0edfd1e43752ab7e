"""The Redis layout helpers agree with the protocol's message frame."""

from __future__ import annotations

import json

from triows._core import protocol
from triows._core import redis_format as fmt
from triows._core.feed import Entry


def payload(seq: int, message_id: str, data: bytes = b'{"a":[1,",\\"seq\\":"]}') -> bytes:
    return protocol.message_payload(
        channel="c",
        data_json=data,
        sender="me",
        timestamp_ms=5,
        seq=seq,
        message_id=message_id,
    )


def test_the_script_completes_the_head_into_the_same_payload() -> None:
    head = fmt.payload_head(payload(0, ""))
    # What PUBLISH_SCRIPT appends: seq, then the id from epoch and seq.
    completed = head + b'7,"id":"e.1:7"}'
    assert completed == payload(7, "e.1:7")
    assert json.loads(completed)["data"] == {"a": [1, ',"seq":']}


def test_published_messages_round_trip() -> None:
    body = payload(3, "e:3")
    data = f"3 e {fmt.origin('node:1f', 'client-1')}\n".encode() + body
    assert fmt.parse_published(data) == Entry(3, "e", body, "node:1f", "client-1")
    anonymous = f"4 e {fmt.origin('node:2', None)}\n".encode() + body
    assert fmt.parse_published(anonymous).sender is None


def test_stream_entries_carry_seq_origin_and_time() -> None:
    fields = {b"p": b"{}", b"t": b"1234", b"o": fmt.origin("n:9", "cid").encode()}
    entry, at = fmt.parse_stream_entry(b"42-0", fields, "e")
    assert (entry, at) == (Entry(42, "e", b"{}", "n:9", "cid"), 1234)
