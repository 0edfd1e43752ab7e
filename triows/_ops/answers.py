"""What an HTTP endpoint answers: a :class:`Response`, or an :class:`HttpError` to send as
JSON ``{"error": message, ...}`` with its status."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import attrs

from .._core.handshake import HttpRequest
from .._core.numbers import ascii_int

JSON = "application/json"


@attrs.frozen
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.extra = extra


def json_response(status: int, value: Any) -> Response:
    return Response(status, json.dumps(value, separators=(",", ":")).encode() + b"\n")


#: ``(request, body) -> response``; the body is empty for a GET (never read).
Handler = Callable[[HttpRequest, bytes], Awaitable[Response]]


def int_parameter(request: HttpRequest, name: str, default: int) -> int:
    values = dict(parse_qsl(request.query))
    text = values.get(name)
    if text is None:
        return default
    value = ascii_int(text)
    if value is None:
        raise HttpError(400, f"{name} must be a whole number of at most 18 digits")
    return value
