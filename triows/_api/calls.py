"""The HTTP API's calls, without I/O: what to send, how to read the answer, when to retry.

Both clients (:mod:`triows._api.sync`, :mod:`triows._api.asynchronous`) send a :class:`Call`
and hand the answer to :func:`judge`; one rule for both. Every call may be retried: publishes
and broadcasts carry an ``idempotency_key`` (made here once, when the caller gives none, so
that every try sends the same one), the others are reads or converge (disconnecting a user
twice leaves it disconnected).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import attrs

from .._core.backoff import full_jitter
from .errors import ApiError, RequestError, UnavailableError, UnknownOutcomeError
from .results import (
    BroadcastResult,
    ChannelInfo,
    ChannelList,
    HistoryPage,
    MalformedReplyError,
    Presence,
    PublishResult,
    count,
)

T = TypeVar("T")


@attrs.frozen
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    body: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    #: A publish's key: a failure after sending leaves its outcome unknown, not "failed".
    idempotency_key: str | None = None


@attrs.define
class Retries:
    """How often and how long to try again: ``retries`` more tries, full-jitter backoff from
    ``backoff`` doubling up to ``max_backoff`` seconds (:mod:`triows._core.backoff`)."""

    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 8.0
    rand: Callable[[], float] = random.random

    def delay(self, attempt: int) -> float:
        return full_jitter(attempt, self.backoff, self.max_backoff, self.rand)


def new_key() -> str:
    return uuid.uuid4().hex


def judge(call: Call[T], status: int, text: str) -> T:
    """The result of a 200, or the error the answer means (``UnavailableError`` and its
    subclass are worth a retry; the others are not)."""
    try:
        body = json.loads(text) if text else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    error = body.get("error")
    reason = error if isinstance(error, str) else (text.strip()[:200] or f"HTTP {status}")
    if status == 200:
        try:
            return call.parse(body)
        except MalformedReplyError as exc:
            raise ApiError(status, str(exc), body) from None
    if status == 202 and call.idempotency_key is not None:
        raise UnknownOutcomeError(status, reason, body, idempotency_key=call.idempotency_key)
    if status == 429 or status >= 500:
        raise UnavailableError(status, reason, body)
    if 400 <= status < 500:
        raise RequestError(status, reason, body)
    raise ApiError(status, f"unexpected answer: {reason}", body)


def no_answer(call: Call[Any], problem: str, *, sent: bool) -> UnavailableError:
    """No answer came: for a publish that was (or may have been) sent, its outcome is
    unknown; one that never left (the connection was refused) was not published."""
    reason = f"no answer: {problem}"
    if sent and call.idempotency_key is not None:
        return UnknownOutcomeError(None, reason, idempotency_key=call.idempotency_key)
    return UnavailableError(None, reason)


def may_have_published(error: UnavailableError) -> bool:
    """Whether the try that ended in ``error`` may have published: an unknown outcome, or a
    5xx that triows itself never answers (a proxy's 502 or 504 after passing it on); not
    triows' 503 (refused before publishing) nor 429 (not served)."""
    if isinstance(error, UnknownOutcomeError):
        return True
    return error.status is not None and error.status >= 500 and error.status != 503


def final(call: Call[Any], error: UnavailableError, maybe_sent: bool) -> UnavailableError:
    """The error to raise once the retries are spent: a publish that any try may have made
    is "unknown", even if the last try only found the server down."""
    key = call.idempotency_key
    if key is None or not maybe_sent or isinstance(error, UnknownOutcomeError):
        return error
    reason = f"{error.reason} (an earlier try may have published it)"
    return UnknownOutcomeError(error.status, reason, error.body, idempotency_key=key)


# -- the calls ------------------------------------------------------------------------------


def _target(user: str | None, client: str | None) -> dict[str, str]:
    if (user is None) == (client is None):
        raise ValueError("give exactly one of user= and client=")
    return {"user": user} if user is not None else {"client": client}  # type: ignore[dict-item]


def _given(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def publish(channel: str, data: Any, idempotency_key: str | None) -> Call[PublishResult]:
    key = idempotency_key or new_key()
    body = {"channel": channel, "data": data, "idempotency_key": key}
    return Call("POST", "/api/publish", PublishResult.from_json, body, idempotency_key=key)


def broadcast(
    channels: Iterable[str], data: Any, idempotency_key: str | None
) -> Call[BroadcastResult]:
    key = idempotency_key or new_key()
    names = [channels] if isinstance(channels, str) else list(channels)
    body = {"channels": names, "data": data, "idempotency_key": key}
    return Call("POST", "/api/broadcast", BroadcastResult.from_json, body, idempotency_key=key)


def channels(limit: int | None) -> Call[ChannelList]:
    params = None if limit is None else {"limit": str(limit)}
    return Call("GET", "/api/channels", ChannelList.from_json, params=params)


def disconnect(
    user: str | None, client: str | None, code: int | None, reason: str | None
) -> Call[int]:
    body = {**_target(user, client), **_given(code=code, reason=reason)}
    return Call("POST", "/api/disconnect", count("disconnected"), body)


def unsubscribe(
    channel: str, user: str | None, client: str | None, reason: str | None
) -> Call[int]:
    body = {"channel": channel, **_target(user, client), **_given(reason=reason)}
    return Call("POST", "/api/unsubscribe", count("unsubscribed"), body)


def subscribe(channel: str, user: str | None, client: str | None) -> Call[int]:
    body = {"channel": channel, **_target(user, client)}
    return Call("POST", "/api/subscribe", count("subscribed"), body)


def revoke(user: str, before: float | None) -> Call[int]:
    body = {"user": user, **_given(before=before)}
    return Call("POST", "/api/revoke", count("disconnected"), body)


def history(channel: str, limit: int | None, since: int | None, reverse: bool) -> Call[HistoryPage]:
    body = {"channel": channel, **_given(limit=limit, since=since, reverse=reverse or None)}
    return Call("POST", "/api/history", HistoryPage.from_json, body)


def channel(name: str) -> Call[ChannelInfo]:
    return Call("POST", "/api/channel", ChannelInfo.from_json, {"channel": name})


def presence(name: str) -> Call[Presence]:
    return Call("POST", "/api/presence", Presence.from_json, {"channel": name})
