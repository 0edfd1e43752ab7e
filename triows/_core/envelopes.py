"""JSON out: what the server writes, as bytes, from templates where the shape is fixed.

Rules of this file:

- Output is compact JSON with finite numbers only, UTF-8 (ASCII escapes only for a string with
  a lone surrogate, which has no UTF-8 form): a client in any language can parse it.
- A template gives exactly the bytes :func:`encode` gives for the same object (tests hold
  ``ack_payload`` and ``message_payload`` to that): they exist because the ack and the
  message envelope are written once per request and per publication.
"""

from __future__ import annotations

import _json as _c_json  # CPython's C accelerator of the json module
import json
from typing import Any, Final

from . import compiled_json
from .frames import SHORT_TEXT_HEADERS, medium_text_header, text_frame

RequestId = str | int

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_ascii_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def encode(frame: Any) -> bytes:
    """Compact UTF-8 JSON, ready to be framed.

    JSON lets a client send a lone surrogate escape (``"\\ud800"``), which has no UTF-8 form;
    such a frame falls back to ASCII escapes instead of failing, so any value that was accepted
    can be delivered.
    """
    text = _encoder.encode(frame)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _ascii_encoder.encode(frame).encode("ascii")


#: What triows' own clients write: compact, as JSON.stringify does (ASCII escapes, NaN left to
#: the server to refuse, as before).
_request_encoder = json.JSONEncoder(separators=(",", ":"))


def request_text(frame: dict[str, Any]) -> str:
    """A request as triows' clients send it: compact JSON text, with no spaces after ``,``
    and ``:``, as JSON.stringify writes it (fewer bytes on the wire and to decode)."""
    return _request_encoder.encode(frame)


def encode_value(value: Any) -> bytes:
    """The JSON of a published ``data`` value, encoded once per broadcast."""
    return encode(value)


def encode_parsed(value: Any) -> bytes:
    """:func:`encode` of a value decoded from a client's JSON, by msgspec (compiled_json): the
    same JSON at a fifth of the cost or less, but for some floats' spelling (``1e-7``, not
    ``1e-07``: the same number). A string with a lone surrogate is written in ASCII escapes,
    as :func:`encode` writes it."""
    try:
        return compiled_json.encode(value)
    except UnicodeEncodeError:
        return _ascii_encoder.encode(value).encode("ascii")


_encode_string = _c_json.encode_basestring


def _json_string(value: str) -> bytes:
    """A JSON string as :func:`encode` writes it: UTF-8, or ASCII escapes for a lone
    surrogate."""
    try:
        return _encode_string(value).encode("utf-8")
    except UnicodeEncodeError:
        return _c_json.encode_basestring_ascii(value).encode("ascii")


def _json_id(request_id: RequestId) -> bytes:
    return b"%d" % request_id if type(request_id) is int else _json_string(str(request_id))


def ack_payload(request_id: RequestId, seq: int) -> bytes:
    """``encode({"type": "ack", "id": request_id, "seq": seq})``, from a template."""
    return b'{"type":"ack","id":%s,"seq":%d}' % (_json_id(request_id), seq)


def ack_frame(request_id: RequestId, seq: int) -> bytes:
    """The ack's text frame: :func:`ack_payload`, framed (once per publish, in one call)."""
    if type(request_id) is int:
        payload = b'{"type":"ack","id":%d,"seq":%d}' % (request_id, seq)
    else:
        payload = b'{"type":"ack","id":%s,"seq":%d}' % (_json_string(str(request_id)), seq)
    length = len(payload)
    return SHORT_TEXT_HEADERS[length] + payload if length < 126 else text_frame(payload)


def message_payload(
    *,
    channel: str,
    data_json: bytes,
    sender: str | None,
    timestamp_ms: int,
    seq: int,
    message_id: str,
) -> bytes:
    """The ``message`` frame, spliced from parts instead of re-encoding ``data``.

    Equal to ``encode({"type": "message", "channel": ..., "data": ..., ...})`` (a test holds
    it to that); channel names and message ids are validated ASCII that JSON leaves as is.
    """
    return _MESSAGE % (
        channel.encode("ascii"),
        data_json,
        b"null" if sender is None else _json_string(sender),
        timestamp_ms,
        seq,
        message_id.encode("ascii"),
    )


_MESSAGE: Final = (
    b'{"type":"message","channel":"%s","data":%s,"from":%s,"timestamp":%d,"seq":%d,"id":"%s"}'
)


def numbered_payload(
    channel: str, data_json: bytes, sender: str | None, timestamp_ms: int, seq: int, epoch: str
) -> bytes:
    """:func:`message_payload` with the message id ``"<epoch>:<seq>"`` written by the template
    itself (the in-process broker's form, once per publication: no id string to build and
    encode, no keywords)."""
    return _NUMBERED % (
        channel.encode("ascii"),
        data_json,
        b"null" if sender is None else _json_string(sender),
        timestamp_ms,
        seq,
        epoch.encode("ascii"),
        seq,
    )


def numbered_frame(
    channel: str, data_json: bytes, sender: str | None, timestamp_ms: int, seq: int, epoch: str
) -> bytes:
    """:func:`numbered_payload`'s text frame, in one call (once per publication)."""
    if sender is None:
        sender_json = b"null"
    else:
        try:
            sender_json = _encode_string(sender).encode("utf-8")
        except UnicodeEncodeError:
            sender_json = _json_string(sender)
    payload = _NUMBERED % (
        channel.encode("ascii"),
        data_json,
        sender_json,
        timestamp_ms,
        seq,
        epoch.encode("ascii"),
        seq,
    )
    length = len(payload)
    if length < 126:
        return SHORT_TEXT_HEADERS[length] + payload
    if length < 1 << 16:  # a message with a little data: the header in one call
        return medium_text_header(length) + payload
    return text_frame(payload)


_NUMBERED: Final = (
    b'{"type":"message","channel":"%s","data":%s,"from":%s,"timestamp":%d,"seq":%d,"id":"%s:%d"}'
)


def message_head(channel: str) -> bytes:
    """What every ``message`` of ``channel`` starts with, up to its ``data``: made once per
    channel for :func:`framed_message` (channel names are validated ASCII)."""
    return b'{"type":"message","channel":"%s","data":' % channel.encode("ascii")


def sender_json(sender: str | None) -> bytes:
    """The ``from`` of a message as :func:`numbered_payload` writes it: made once per sender
    for :func:`framed_message`."""
    return b"null" if sender is None else _json_string(sender)


def framed_message(
    head: bytes, data_json: bytes, sender: bytes, timestamp_ms: int, seq: int, epoch: bytes
) -> bytes:
    """:func:`numbered_frame` from parts made once (``head``: :func:`message_head`,
    ``sender``: :func:`sender_json`, ``epoch`` as ASCII bytes): one template, one header."""
    payload = _FROM_HEAD % (head, data_json, sender, timestamp_ms, seq, epoch, seq)
    length = len(payload)
    if length < 126:
        return SHORT_TEXT_HEADERS[length] + payload
    if length < 1 << 16:
        return medium_text_header(length) + payload
    return text_frame(payload)


_FROM_HEAD: Final = b'%s%s,"from":%s,"timestamp":%d,"seq":%d,"id":"%s:%d"}'
#: The template's own bytes (its seven ``%s``/``%d`` are two bytes each).
_FROM_HEAD_FIXED: Final = len(_FROM_HEAD) - 14


def framed_message_size(
    head: bytes, data_json: bytes, sender: bytes, timestamp_ms: int, seq: int, epoch: bytes
) -> int:
    """``len(framed_message(...))`` without making it: what a history keeping the message
    unframed counts for it."""
    length = (
        _FROM_HEAD_FIXED
        + len(head)
        + len(data_json)
        + len(sender)
        + len(str(timestamp_ms))
        + 2 * len(str(seq))
        + len(epoch)
    )
    return length + (2 if length < 126 else 4 if length < 1 << 16 else 10)


_TIMESTAMP = b',"timestamp":'


def timestamp_of(payload: bytes) -> int | None:
    """The ``timestamp`` of a :func:`message_payload` without decoding it: the envelope's
    fields follow ``data``, so the last occurrence is the envelope's own."""
    at = payload.rfind(_TIMESTAMP)
    if at < 0:
        return None
    start = at + len(_TIMESTAMP)
    end = payload.find(b",", start)
    try:
        return int(payload[start:end])
    except ValueError:
        return None


# -- replies built as objects (rare: encoded by :func:`encode`) ----------------------------


def with_id(frame: dict[str, Any], request_id: RequestId | None) -> dict[str, Any]:
    """Echo the request id in a reply, as the contract promises, only when there was one."""
    if request_id is not None:
        frame["id"] = request_id
    return frame


def error_frame(
    code: int, message: str, request_id: RequestId | None = None, *, limit: str | None = None
) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if limit is not None:
        frame["limit"] = limit
    return with_id(frame, request_id)


def welcome_frame(
    client_id: str, timestamp_ms: int, server_id: str, heartbeat: float
) -> dict[str, Any]:
    return {
        "type": "welcome",
        "data": {
            "clientId": client_id,
            "timestamp": timestamp_ms,
            "serverId": server_id,
            "heartbeat": heartbeat,
        },
    }
