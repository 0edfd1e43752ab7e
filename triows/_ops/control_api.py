"""The HTTP API's hands on connections and channels: ``/api/disconnect``, ``/api/unsubscribe``,
``/api/subscribe``, ``/api/revoke``, ``/api/history``, ``/api/channel``, ``/api/presence``, and
``/api/channels`` (every node's, with Redis).

Each body is a JSON object checked whole before anything is done: an unknown field, a bad
channel name, neither or both of ``user`` and ``client``, a number over its cap: 400 with the
reason, and nothing applied. What they do is the server's (``ServerView``'s methods, the same
as ``Server.disconnect`` and friends); with Redis each acts on, or reads, the whole cluster.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from .._brokers.seam import BrokerUnavailableError
from .._core.close_codes import DISCONNECTED
from .._core.handshake import HttpRequest
from .._core.history import DEFAULT_HISTORY_LIMIT
from .answers import Handler, HttpError, Response, int_parameter, json_response
from .api import DEFAULT_CHANNEL_LIMIT, object_body
from .view import ControlFailed, ServerView

_TARGET = ("user", "client")


class ControlApi:
    def __init__(self, view: ServerView) -> None:
        self._view = view

    def routes(self) -> dict[str, Handler]:
        return {
            "/api/disconnect": self.disconnect,
            "/api/unsubscribe": self.unsubscribe,
            "/api/subscribe": self.subscribe,
            "/api/revoke": self.revoke,
            "/api/history": self.history,
            "/api/channel": self.channel,
            "/api/presence": self.presence,
        }

    async def disconnect(self, request: HttpRequest, body: bytes) -> Response:
        found = object_body(body, required=(), optional=(*_TARGET, "code", "reason"))
        count = await _answer(
            lambda: self._view.disconnect(
                user=found.get("user"),
                client=found.get("client"),
                code=found.get("code", DISCONNECTED),
                reason=found.get("reason", "disconnected by the server"),
            )
        )
        return json_response(200, {"disconnected": count})

    async def unsubscribe(self, request: HttpRequest, body: bytes) -> Response:
        found = object_body(body, required=("channel",), optional=(*_TARGET, "reason"))
        count = await _answer(
            lambda: self._view.unsubscribe(
                found["channel"],
                user=found.get("user"),
                client=found.get("client"),
                reason=found.get("reason", "unsubscribed by the server"),
            )
        )
        return json_response(200, {"unsubscribed": count})

    async def subscribe(self, request: HttpRequest, body: bytes) -> Response:
        found = object_body(body, required=("channel",), optional=_TARGET)
        count = await _answer(
            lambda: self._view.subscribe(
                found["channel"], user=found.get("user"), client=found.get("client")
            )
        )
        return json_response(200, {"subscribed": count})

    async def revoke(self, request: HttpRequest, body: bytes) -> Response:
        found = object_body(body, required=("user",), optional=("before",))
        count = await _answer(lambda: self._view.revoke(found["user"], found.get("before")))
        return json_response(200, {"disconnected": count})

    async def history(self, request: HttpRequest, body: bytes) -> Response:
        found = object_body(body, required=("channel",), optional=("limit", "since", "reverse"))
        page = await _answer(
            lambda: self._view.history(
                found["channel"],
                limit=found.get("limit", DEFAULT_HISTORY_LIMIT),
                since=found.get("since"),
                reverse=found.get("reverse", False),
            )
        )
        return json_response(
            200,
            {
                "channel": page.channel,
                "epoch": page.epoch,
                "seq": page.seq,
                "messages": page.messages,
            },
        )

    async def channel(self, request: HttpRequest, body: bytes) -> Response:
        found = object_body(body, required=("channel",), optional=())
        info = await _answer(lambda: self._view.channel(found["channel"]))
        return json_response(
            200,
            {
                "channel": info.channel,
                "epoch": info.epoch,
                "seq": info.seq,
                "subscribers": info.subscribers,
            },
        )

    async def presence(self, request: HttpRequest, body: bytes) -> Response:
        found = object_body(body, required=("channel",), optional=())
        return json_response(
            200, await _answer(lambda: self._view.channel_presence(found["channel"]))
        )

    async def channels(self, request: HttpRequest, body: bytes) -> Response:
        """Every node's channels, the most followed first (``?limit=N``, 1000 by default)."""
        limit = int_parameter(request, "limit", DEFAULT_CHANNEL_LIMIT)
        listed = await _answer(self._view.channels)
        listed.sort(key=lambda c: (-c["subscribers"], c["channel"]))
        return json_response(200, {"channels": listed[:limit], "total": len(listed)})


T = TypeVar("T")


async def _answer(call: Callable[[], Awaitable[T]]) -> T:
    """The server's answer; its refusals as HTTP errors."""
    try:
        return await call()
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    except (BrokerUnavailableError, ControlFailed) as exc:
        raise HttpError(503, str(exc)) from None
