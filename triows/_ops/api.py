"""The HTTP publish API: ``/api/publish``, ``/api/broadcast``.

What it promises a backend that retries: an answer as soon as a publication has its number
(never after waiting for ``block`` subscribers, which are waited for in the background); on a
timeout, 202 ``{"outcome": "unknown"}`` and what is known, never a "failed" for something that
was published. With an ``idempotency_key`` a retry is always safe. Bodies are decoded and
checked as WebSocket frames are (:mod:`triows._core.protocol`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Iterator
from typing import Any

import trio

from .._brokers.fanout import Subscriber
from .._brokers.seam import BrokerUnavailableError, DataTooLargeError, OutcomeUnknownError
from .._core import protocol
from .._core.handshake import HttpRequest
from .._core.names import ChannelNameError, validate_channel
from .._core.outbox import SlowConsumerPolicy
from .answers import HttpError, Response, json_response
from .view import ServerView

log = logging.getLogger("triows.http")

#: Channels one ``/api/broadcast`` may name.
MAX_BROADCAST_CHANNELS = 1000
#: Longest ``idempotency_key``.
MAX_IDEMPOTENCY_KEY = 256
#: Channels ``/api/channels`` lists unless ``?limit=N`` asks for another number.
DEFAULT_CHANNEL_LIMIT = 1000
#: HTTP publications to ``block`` channels in flight or whose ``block`` subscribers are still
#: waited for in the background (each holds at most ``block_timeout``). A subscriber is over
#: capacity by one frame per waiting publication, as with waiting WebSocket publishers; beyond
#: this many a publication to a ``block`` channel is refused (503) before it is published.
#: Only a broker that hands ``block`` subscribers back to the publisher needs it (in process).
MAX_BLOCKED_WAITS = 256
#: How long before the request's deadline a publish stops waiting for its number, to answer
#: "unknown" in time (at most this share of ``handshake_timeout``).
ANSWER_MARGIN = 0.25
ANSWER_MARGIN_SHARE = 0.1
#: The body's marker of a publication whose fate is not known yet (202).
_UNKNOWN = {"outcome": "unknown"}


class PublishApi:
    def __init__(self, view: ServerView) -> None:
        self._view = view
        #: Publications whose ``block`` subscribers are being waited for in the background.
        self.blocked_waits = 0
        #: The waits for a number in progress, and when they must end at the latest (the
        #: server is stopping: :meth:`stopping`).
        self._waits: set[trio.CancelScope] = set()
        self._stop_at = math.inf

    def stopping(self, deadline: float) -> None:
        """The server stops by ``deadline``: every publish still waiting for its number stops
        waiting in time to answer 202 "unknown" before the server cancels what is left (a
        dropped connection would tell the backend nothing)."""
        margin = min(ANSWER_MARGIN, self._view.config.shutdown_timeout * ANSWER_MARGIN_SHARE)
        self._stop_at = deadline - margin
        for scope in self._waits:
            scope.deadline = min(scope.deadline, self._stop_at)

    @contextlib.contextmanager
    def _waiting_for_numbers(self) -> Iterator[trio.CancelScope]:
        """The scope a request waits for its numbers in: ends a little before the request's
        own deadline, or before the server stops."""
        with trio.move_on_at(min(self._answer_deadline(), self._stop_at)) as scope:
            self._waits.add(scope)
            try:
                yield scope
            finally:
                self._waits.discard(scope)

    async def publish(self, request: HttpRequest, body: bytes) -> Response:
        payload = object_body(body, required=("channel", "data"), optional=("idempotency_key",))
        channel = _channel(payload["channel"])
        key = _idempotency_key(payload.get("idempotency_key"))
        try:
            with self._waiting_for_numbers():
                return json_response(200, await self._publish_one(channel, payload["data"], key))
        except OutcomeUnknownError:
            pass
        return json_response(202, {**_UNKNOWN, "channel": channel, "error": self._unknown_reason()})

    async def broadcast(self, request: HttpRequest, body: bytes) -> Response:
        payload = object_body(body, required=("channels", "data"), optional=("idempotency_key",))
        channels = payload["channels"]
        if not isinstance(channels, list) or not channels:
            raise HttpError(400, "channels must be a non-empty list of channel names")
        if len(channels) > MAX_BROADCAST_CHANNELS:
            raise HttpError(400, f"at most {MAX_BROADCAST_CHANNELS} channels per broadcast")
        names = [_channel(name) for name in channels]
        if len(set(names)) != len(names):
            raise HttpError(400, "channels must not repeat a name")
        key = _idempotency_key(payload.get("idempotency_key"))
        results: list[dict[str, Any]] = []
        with self._waiting_for_numbers():
            for name in names:
                try:
                    results.append(await self._publish_one(name, payload["data"], key))
                except OutcomeUnknownError:
                    break
                except HttpError as exc:
                    # What was published stays published: say which, so that a retry (with
                    # the same idempotency key) is safe.
                    raise HttpError(
                        exc.status,
                        exc.message,
                        outcome="partial" if results else "not_published",
                        results=results,
                        not_published=names[len(results) :],
                    ) from None
            else:
                return json_response(200, {"results": results})
        # Out of time while one channel waited for its number (or the server stopped before
        # it knew): that one may yet be published, the rest were not.
        return json_response(
            202,
            {
                **_UNKNOWN,
                "results": results,
                "unknown": [names[len(results)]],
                "not_published": names[len(results) + 1 :],
                "error": self._unknown_reason(),
            },
        )

    def _answer_deadline(self) -> float:
        """When a publish stops waiting for its number: a little before the request's own
        deadline (``serve`` answers 504 at that deadline, which would read as a failure)."""
        timeout = self._view.config.handshake_timeout
        margin = min(ANSWER_MARGIN, timeout * ANSWER_MARGIN_SHARE)
        return trio.current_effective_deadline() - margin

    def _unknown_reason(self) -> str:
        view = self._view
        why = (
            "the server is stopping"
            if view.closing
            else view.broker.statistics().reason or "the broker is down"
            if not view.broker.up.value
            else "the broker is slow"
        )
        return (
            f"not numbered in time ({why}); it may still be published: retry with the same "
            "idempotency_key to learn its seq without publishing it twice"
        )

    async def _publish_one(self, channel: str, data: Any, key: str | None) -> dict[str, Any]:
        """Publish and answer once numbered; the ``block`` subscribers it filled up are waited
        for in the background (a slot of :data:`MAX_BLOCKED_WAITS`, reserved first, when the
        channel is a ``block`` one and the broker hands such subscribers back)."""
        view = self._view
        may_block = (
            view.broker.hands_back_blocked
            and view.config.policy_for(channel) is SlowConsumerPolicy.BLOCK
        )
        if may_block and self.blocked_waits >= MAX_BLOCKED_WAITS:
            raise HttpError(
                503,
                f"{self.blocked_waits} HTTP publications to 'block' channels are waiting for "
                "their subscribers to make room; try again later",
            )
        if may_block:
            self.blocked_waits += 1
        handed_over = False  # the reserved slot went to a background wait, which releases it
        try:
            published, blocked = await self._view.publish_numbered(
                channel, data, idempotency_key=key
            )
            handed_over = may_block and self._wait_in_background(blocked)
        except DataTooLargeError as exc:
            raise HttpError(413, str(exc)) from None
        except OutcomeUnknownError:
            raise  # not a refusal: the caller answers "unknown"
        except BrokerUnavailableError as exc:
            raise HttpError(503, str(exc)) from None
        except TypeError as exc:  # cannot happen with data decoded from JSON; kept honest
            raise HttpError(400, str(exc)) from None
        finally:
            if may_block and not handed_over:
                self.blocked_waits -= 1
        return {"channel": published.channel, "seq": published.seq, "epoch": published.epoch}

    def _wait_in_background(self, blocked: list[Subscriber]) -> bool:
        """Start waiting for ``blocked`` in a task the server owns (which then releases the
        reserved slot); False when there is nothing to wait for, or the server stops."""
        return bool(blocked) and self._view.spawn(
            functools.partial(self._wait_for_blocked, blocked)
        )

    async def _wait_for_blocked(self, blocked: list[Subscriber]) -> None:
        try:
            await self._view.fanout.wait_for_blocked(blocked)
        except Exception:  # a bug of ours must not reach the server
            log.exception("waiting for block subscribers after an HTTP publish failed")
        finally:
            self.blocked_waits -= 1


def object_body(
    body: bytes, *, required: tuple[str, ...], optional: tuple[str, ...]
) -> dict[str, Any]:
    """A JSON object body, decoded and checked as WebSocket frames are (one validation)."""
    try:
        payload = protocol.decode_json(body.decode("utf-8"), unique_keys=True)
    except UnicodeDecodeError:
        raise HttpError(400, "body is not valid JSON: not UTF-8") from None
    except protocol.ProtocolError as exc:
        raise HttpError(400, f"body is {exc.message}") from None
    if not isinstance(payload, dict):
        raise HttpError(400, "body must be a JSON object")
    missing = [name for name in required if name not in payload]
    if missing:
        raise HttpError(400, f"missing field {missing[0]!r}")
    unknown = sorted(set(payload) - set(required) - set(optional))
    if unknown:
        raise HttpError(400, f"unknown field {unknown[0]!r}")
    if "data" in payload:
        try:
            protocol.check_data(payload["data"])
        except protocol.ProtocolError as exc:
            raise HttpError(400, exc.message) from None
    return payload


def _channel(name: Any) -> str:
    if not isinstance(name, str):
        raise HttpError(400, "a channel name must be a string")
    try:
        return validate_channel(name)
    except ChannelNameError as exc:
        raise HttpError(400, str(exc)) from None


def _idempotency_key(key: Any) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise HttpError(
            400, f"idempotency_key must be a string of 1 to {MAX_IDEMPOTENCY_KEY} characters"
        )
    return key
