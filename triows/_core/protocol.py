"""Protocol v1 codec: turn client frames into typed requests and replies into JSON text.

Rules of this file:

- Parsing never raises anything but :class:`ProtocolError`, whatever bytes arrive. Every
  rejection carries the error code the client sees (400, 413) and the request ``id`` when one
  could be read, so a bad frame costs the client one ``error`` reply and never its connection.
- Values are checked here once, so the rest of the server can trust a :data:`Request`.
- Output is compact JSON with finite numbers only: a client in any language can parse it.

No I/O and no clock: the shell passes timestamps in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, Final

from . import compiled_json
from .envelopes import ack_payload as ack_payload
from .envelopes import encode as encode
from .envelopes import encode_parsed as encode_parsed
from .envelopes import encode_value as encode_value
from .envelopes import error_frame as error_frame
from .envelopes import message_payload as message_payload
from .envelopes import numbered_payload as numbered_payload
from .envelopes import timestamp_of as timestamp_of
from .envelopes import welcome_frame as welcome_frame
from .envelopes import with_id as with_id
from .history import DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT
from .names import ChannelNameError, validate_channel
from .request_types import HistoryQuery as HistoryQuery
from .request_types import Ping as Ping
from .request_types import PresenceQuery as PresenceQuery
from .request_types import Publish as Publish
from .request_types import Refresh as Refresh
from .request_types import Request as Request
from .request_types import Subscribe as Subscribe
from .request_types import Unsubscribe as Unsubscribe

#: Largest integer every JSON client (JavaScript included) represents exactly.
MAX_SAFE_INTEGER: Final = 2**53 - 1
#: Deepest nesting accepted in ``data``; deeper structures are a parser-bomb, not a message.
MAX_DEPTH: Final = 32
MAX_ID_LENGTH: Final = 128
MAX_TOKEN_LENGTH: Final = 8192
MAX_EPOCH_LENGTH: Final = 64

BAD_REQUEST: Final = 400
UNAUTHORIZED: Final = 401
FORBIDDEN: Final = 403
TOO_LARGE: Final = 413
TOO_MANY: Final = 429
INTERNAL: Final = 500
UNAVAILABLE: Final = 503

RequestId = str | int


#: The ``limit`` of a 429 over ``--max-subscriptions``: told apart from a rate, it is not
#: "try again later" but "not while you follow as many channels".
SUBSCRIPTIONS_LIMIT: Final = "subscriptions"


class ProtocolError(Exception):
    """A client frame that cannot be served; becomes an ``error`` reply, not a disconnect.
    ``limit`` names a limit that is no rate (:data:`SUBSCRIPTIONS_LIMIT`)."""

    def __init__(
        self,
        code: int,
        message: str,
        request_id: RequestId | None = None,
        *,
        limit: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.limit = limit

    def frame(self) -> dict[str, Any]:
        """The ``error`` reply."""
        return error_frame(self.code, self.message, self.request_id, limit=self.limit)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"field {_short(key)!r} appears twice")
            seen.add(key)
    return found


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
#: The same, refusing an object that names a field twice (which value would count?). Slower
#: (a Python hook per object): for documents read once per request, not for every frame.
_strict_decoder = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys
)


def depth_exceeds(value: Any, limit: int) -> bool:
    """Iterative depth check: a recursive one is exactly what a deep document would crash."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _request_id(frame: dict[str, Any]) -> RequestId | None:
    raw = frame.get("id")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise ProtocolError(BAD_REQUEST, "'id' must be a string or an integer")
    if isinstance(raw, int) and abs(raw) > MAX_SAFE_INTEGER:
        raise ProtocolError(BAD_REQUEST, "'id' is outside the safe integer range")
    if isinstance(raw, str) and not 0 < len(raw) <= MAX_ID_LENGTH:
        raise ProtocolError(BAD_REQUEST, f"'id' must be 1 to {MAX_ID_LENGTH} characters")
    return raw


#: Channel names already found valid: a dict lookup instead of the pattern, per frame. Bounded
#: (emptied when full): it is a cache, never a rule.
_valid_channels: dict[str, None] = {}
_VALID_CHANNELS_KEPT: Final = 4096


def _known_channel(frame: dict[str, Any], request_id: RequestId | None) -> str:
    """``frame``'s channel, checked by the full rule, and remembered as valid."""
    channel = _channel(frame, request_id)
    if len(_valid_channels) >= _VALID_CHANNELS_KEPT:
        _valid_channels.clear()
    _valid_channels[channel] = None
    return channel


def _channel(frame: dict[str, Any], request_id: RequestId | None) -> str:
    if "channel" not in frame:
        raise ProtocolError(BAD_REQUEST, "missing field 'channel'", request_id)
    try:
        return validate_channel(frame["channel"])
    except ChannelNameError as exc:
        raise ProtocolError(BAD_REQUEST, str(exc), request_id) from None


def _optional_int(frame: dict[str, Any], key: str, request_id: RequestId | None) -> int | None:
    value = frame.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SAFE_INTEGER:
        raise ProtocolError(
            BAD_REQUEST, f"'{key}' must be an integer from 0 to {MAX_SAFE_INTEGER}", request_id
        )
    return value


def _optional_str(
    frame: dict[str, Any], key: str, limit: int, request_id: RequestId | None
) -> str | None:
    value = frame.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise ProtocolError(
            BAD_REQUEST, f"'{key}' must be a string of 1 to {limit} characters", request_id
        )
    return value


def decode_json(text: str, *, unique_keys: bool = False) -> Any:
    """Decode JSON as every client-written document is decoded (frames, HTTP API bodies):
    finite numbers only (no ``NaN``, ``Infinity`` or ``1e999``, which could not be sent on),
    a nesting bomb refused, never anything but :class:`ProtocolError`. ``unique_keys``: an
    object naming a field twice is refused too."""
    if unique_keys:
        return _standard_decode(text, _strict_decoder.decode)
    # msgspec where it answers exactly as the standard path (see compiled_json); the rest,
    # errors included, takes the standard path.
    return _standard_decode(text, _compiled_or_standard)


def _compiled_or_standard(text: str) -> Any:
    return compiled_json.loads(text, _decoder.decode)


def _standard_decode(text: str, decode: Callable[[str], Any] = _decoder.decode) -> Any:
    """``decode(text)``, its errors as the clients' :class:`ProtocolError`."""
    try:
        return decode(text)
    except RecursionError:
        raise ProtocolError(BAD_REQUEST, "not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise ProtocolError(BAD_REQUEST, f"not valid JSON: {_short(exc)}") from None


def check_data(data: Any, request_id: RequestId | None = None) -> Any:
    """``data`` as published: at most :data:`MAX_DEPTH` levels deep (what every subscriber's
    decoder must then take)."""
    if depth_exceeds(data, MAX_DEPTH):
        raise ProtocolError(
            BAD_REQUEST, f"'data' is nested deeper than {MAX_DEPTH} levels", request_id
        )
    return data


def parse_request(raw: str | bytes) -> Request:
    """Decode and validate one client frame.

    Binary frames are refused: the protocol is JSON text so that a browser needs no codec.
    Unknown fields are ignored so that newer clients can talk to this server.
    """
    if isinstance(raw, bytes | bytearray):
        raise ProtocolError(BAD_REQUEST, "binary frames are not supported; send JSON text")
    return _request(decode_json(raw), raw)


#: A ``publish`` as :func:`read_request` hands it over: ``(channel, data, id, echo)``.
PublishFields = tuple[str, Any, RequestId | None, bool]


def read_request(raw: str | bytes) -> PublishFields | Request:
    """:func:`parse_request`, with the commonest request handed over as its fields.

    A ``publish`` on a channel already seen valid, with a valid id or none and no more
    brackets in the frame than the depth limit, comes back as a :data:`PublishFields` tuple,
    checked here by the same rules and decoded once (by msgspec), with no request object
    built. Anything else, every refusal included, is exactly what :func:`parse_request`
    answers (a differential test holds the two to that).
    """
    if type(raw) is str:
        brackets = compiled_json.brackets(raw)
        if brackets > compiled_json.MAX_BRACKETS:
            # For the standard path alone (see compiled_json): parse_request's, counted once.
            return _request(_standard_decode(raw), raw, brackets)
        try:
            frame = compiled_json.decode(raw)
        except compiled_json.REFUSED:
            # Its value or its error as the standard path gives it (not msgspec a second time).
            return _request(_standard_decode(raw), raw, brackets)
        if type(frame) is dict and frame.get("type") == "publish":
            request_id = frame.get("id")
            channel = frame.get("channel")
            echo = frame.get("echo", False)
            if (
                (
                    request_id is None
                    or (
                        type(request_id) is int
                        and -MAX_SAFE_INTEGER <= request_id <= MAX_SAFE_INTEGER
                    )
                    or (type(request_id) is str and 0 < len(request_id) <= MAX_ID_LENGTH)
                )
                and type(channel) is str
                and channel in _valid_channels
                and "data" in frame
                and (echo is False or echo is True)
                and brackets <= MAX_DEPTH
            ):
                return channel, frame["data"], request_id, echo
        return _request(frame, raw, brackets)
    return parse_request(raw)


def _request(frame: Any, raw: str, brackets: int | None = None) -> Request:
    """A decoded frame's request: every field checked, or the error the client is told
    (``brackets``: the frame's count, when the caller made it already)."""
    if not isinstance(frame, dict):
        raise ProtocolError(BAD_REQUEST, "a frame must be a JSON object")
    request_id = frame.get("id")
    # The common ids (a small integer) pass with one test; the rest by the full rule.
    if request_id is not None and not (
        type(request_id) is int and -MAX_SAFE_INTEGER <= request_id <= MAX_SAFE_INTEGER
    ):
        request_id = _request_id(frame)
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(BAD_REQUEST, "missing or non-string field 'type'", request_id)
    if kind == "publish":
        channel = frame.get("channel")
        if type(channel) is not str or channel not in _valid_channels:
            channel = _known_channel(frame, request_id)
        if "data" not in frame:
            raise ProtocolError(BAD_REQUEST, "missing field 'data'", request_id)
        data = frame["data"]
        # A value nests no deeper than the frame has brackets: most frames need no walk.
        if brackets is None:
            brackets = compiled_json.brackets(raw)
        if brackets > MAX_DEPTH:
            check_data(data, request_id)
        echo = frame.get("echo", False)
        if echo is not False and echo is not True:
            raise ProtocolError(BAD_REQUEST, "'echo' must be true or false", request_id)
        return Publish(channel=channel, data=data, id=request_id, echo=echo)
    if kind == "subscribe":
        channel = _channel(frame, request_id)
        since = _optional_int(frame, "since", request_id)
        epoch = _optional_str(frame, "epoch", MAX_EPOCH_LENGTH, request_id)
        rewind = _optional_int(frame, "rewind", request_id)
        return Subscribe(channel=channel, id=request_id, since=since, epoch=epoch, rewind=rewind)
    if kind == "history":
        return parse_history(frame, request_id)
    if kind == "unsubscribe":
        return Unsubscribe(channel=_channel(frame, request_id), id=request_id)
    if kind == "ping":
        return Ping(id=request_id)
    if kind == "presence":
        return PresenceQuery(channel=_channel(frame, request_id), id=request_id)
    if kind == "refresh":
        token = _optional_str(frame, "token", MAX_TOKEN_LENGTH, request_id)
        if token is None:
            raise ProtocolError(BAD_REQUEST, "missing field 'token'", request_id)
        return Refresh(token=token, id=request_id)
    raise ProtocolError(BAD_REQUEST, f"unknown type {_short(kind)!r}", request_id)


def parse_history(frame: dict[str, Any], request_id: RequestId | None = None) -> HistoryQuery:
    """A ``history`` request's fields (the frame's, or an HTTP body's)."""
    channel = _channel(frame, request_id)
    limit = frame.get("limit", DEFAULT_HISTORY_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise ProtocolError(
            BAD_REQUEST,
            f"'limit' must be an integer from 1 to {MAX_HISTORY_LIMIT} (the cap)",
            request_id,
        )
    since = _optional_int(frame, "since", request_id)
    reverse = frame.get("reverse", False)
    if not isinstance(reverse, bool):
        raise ProtocolError(BAD_REQUEST, "'reverse' must be true or false", request_id)
    return HistoryQuery(channel=channel, limit=limit, since=since, reverse=reverse, id=request_id)


def _short(value: object, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"
