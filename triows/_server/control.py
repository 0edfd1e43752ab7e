"""The application's hands on connections and channels: ``Server.disconnect``,
``unsubscribe``, ``subscribe``, ``revoke``, ``history``, ``channel``, ``presence``, ``channels``
(and the HTTP API's ``/api/...`` endpoints, which call these).

Every request is checked whole before anything is done (a bad one raises ``ValueError`` and
changes nothing). What acts on connections is a *control request* sent through the broker to
every node (``Broker.control``: in process this node alone; with Redis every node of the
cluster, which each act on the connections they hold and answer what they did), so that a
user is disconnected wherever they are connected. Reads come from where the state lives: the
broker's numbering and history, the presence store.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import trio

from .._brokers.presence import Presence
from .._brokers.seam import Broker
from .._core import protocol
from .._core.close_codes import DISCONNECTED, REVOKED, check_disconnect_code
from .._core.frames import text_payload
from .._core.history import DEFAULT_HISTORY_LIMIT
from .._core.ids import check_id, has_utf8_form
from .._core.names import validate_channel
from .._core.revocations import MAX_AHEAD, RevocationsFull
from .._ops.dashboard import CONNECTIONS, connections_answer
from .._ops.view import ChannelInfo, ControlFailed, HistoryResult
from .access import Access
from .connection import Connection
from .sse import SseStream

log = logging.getLogger("triows.server")

#: Connections acted on, and channels listed, between two checkpoints.
CONNECTIONS_PER_STEP = 500
CHANNELS_PER_STEP = 2000
#: Kept revocations taken between two checkpoints (up to the cap of them at every link-up).
REVOCATIONS_PER_STEP = 1000
#: Longest ``reason`` sent with a disconnect (a close frame holds 123 bytes of it).
MAX_REASON = 120
#: Longest user id or client id a request may name.
MAX_ID = 1024
#: What each control request answers, by operation (disconnect and revoke: "disconnected").
_COUNTED = {"subscribe": "subscribed", "unsubscribe": "unsubscribed"}


def target(user: Any, client: Any) -> dict[str, str]:
    """``{"user": U}`` or ``{"client": ID}``: exactly one, a non-empty string."""
    if (user is None) == (client is None):
        raise ValueError("give exactly one of 'user' and 'client'")
    name, value = ("user", user) if user is not None else ("client", client)
    return {name: check_id(value, name, MAX_ID)}


def check_reason(reason: Any) -> str:
    if (
        not isinstance(reason, str)
        or not has_utf8_form(reason)
        or len(reason.encode()) > MAX_REASON
    ):
        raise ValueError(f"'reason' must be a string of at most {MAX_REASON} bytes")
    return reason


def check_time(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e11:
        raise ValueError(f"'{name}' must be unix seconds (a number)")
    return float(value)


class Control:
    def __init__(
        self,
        broker: Broker,
        presence: Presence,
        access: Access,
        *,
        by_user: Callable[[str], Iterable[Connection | SseStream]],
        by_client: Callable[[str], Connection | SseStream | None],
        wall_clock: Callable[[], float],
        timeout: float,
        max_message_size: int,
    ) -> None:
        self._broker = broker
        self._presence = presence
        self._access = access
        self._by_user = by_user
        self._by_client = by_client
        self._wall_clock = wall_clock
        self._timeout = timeout
        self._max_message_size = max_message_size
        broker.on_control = self.serve

    # -- what the application calls -------------------------------------------------------------

    async def disconnect(
        self,
        *,
        user: str | None = None,
        client: str | None = None,
        code: int = DISCONNECTED,
        reason: str = "disconnected by the server",
    ) -> int:
        request = {
            "op": "disconnect",
            **target(user, client),
            "code": check_disconnect_code(code),
            "reason": check_reason(reason),
        }
        return await self._total(request, "disconnected")

    async def unsubscribe(
        self,
        channel: str,
        *,
        user: str | None = None,
        client: str | None = None,
        reason: str = "unsubscribed by the server",
    ) -> int:
        request = {
            "op": "unsubscribe",
            **target(user, client),
            "channel": validate_channel(channel),
            "reason": check_reason(reason),
        }
        return await self._total(request, "unsubscribed")

    async def subscribe(
        self, channel: str, *, user: str | None = None, client: str | None = None
    ) -> int:
        request = {"op": "subscribe", **target(user, client), "channel": validate_channel(channel)}
        return await self._total(request, "subscribed")

    async def revoke(self, user: str, before: float | None = None) -> int:
        now = self._wall_clock()
        start = now if before is None else check_time(before, "before")
        if start > now + MAX_AHEAD:
            raise ValueError(
                f"'before' must be at most {MAX_AHEAD:.0f} seconds after now "
                "(a revocation reaches tokens issued until then)"
            )
        request = {"op": "revoke", **target(user, None), "before": start}
        try:  # a place held first: a refused revocation must be nowhere, not kept in Redis
            with self._access.revocations.reserving(user, self._wall_clock()):
                # Kept where a node started later finds it (Redis), then told to every node.
                lasts = min(start, now) + self._access.revocations.ttl - self._wall_clock()
                if lasts > 0:
                    await self._broker.share_revocation(user, start, lasts)
                return await self._total(request, "disconnected")
        except RevocationsFull as exc:  # raised by reserving alone: nothing was shared
            raise ControlFailed(str(exc)) from None

    async def load_revocations(self) -> int:
        """Take the revocations kept in Redis before this node started; how many."""
        found = await self._broker.shared_revocations()
        now = self._wall_clock()
        for index, (user, before) in enumerate(found):
            if index % REVOCATIONS_PER_STEP == REVOCATIONS_PER_STEP - 1:
                await trio.lowlevel.checkpoint()
            try:
                self._access.revocations.revoke(user, before, now)
            except RevocationsFull:
                log.warning("revocations full: %d kept ones not taken", len(found))
                break
        return len(found)

    async def history(
        self,
        channel: str,
        *,
        limit: int = DEFAULT_HISTORY_LIMIT,
        since: int | None = None,
        reverse: bool = False,
    ) -> HistoryResult:
        fields = {"channel": channel, "limit": limit, "since": since, "reverse": reverse}
        try:
            query = protocol.parse_history(fields)
        except protocol.ProtocolError as exc:
            raise ValueError(exc.message) from None
        found = await self._broker.history(
            query.channel,
            since=query.since,
            limit=query.limit,
            reverse=query.reverse,
            max_bytes=self._max_message_size,
        )
        return HistoryResult(
            channel=query.channel,
            epoch=found.epoch,
            seq=found.seq,
            messages=[json.loads(payload) for payload in found.payloads],
        )

    async def channel(self, channel: str) -> ChannelInfo:
        name = validate_channel(channel)
        seq, epoch = await self._broker.numbering(name)
        subscribers = await self._total({"op": "subscribers", "channel": name}, "subscribers")
        return ChannelInfo(channel=name, epoch=epoch, seq=seq, subscribers=subscribers)

    async def presence(self, channel: str) -> dict[str, Any]:
        name = validate_channel(channel)
        if self._presence.mode(name) is None:
            raise ValueError(f"presence is off for '{name}' (the server's --presence patterns)")
        answer = json.loads(text_payload(await self._presence.frame(name, None)))
        return {key: answer[key] for key in ("channel", "count", "members")}

    async def channels(self) -> list[dict[str, Any]]:
        """Every node's channels with their subscribers here and there, summed."""
        merged: dict[str, dict[str, Any]] = {}
        merging = 0
        for answer in await self._broker.control({"op": "channels"}, self._timeout):
            for name, subscribers, seq, epoch, *counts in answer.get("channels", ()):
                merging += 1
                if merging % CHANNELS_PER_STEP == 0:
                    await trio.lowlevel.checkpoint()  # every node's, summed: as many again
                entry = merged.setdefault(
                    name, {"channel": name, "subscribers": 0, "seq": seq, "epoch": epoch}
                )
                entry["subscribers"] += subscribers
                if seq > entry["seq"]:
                    entry["seq"], entry["epoch"] = seq, epoch
                # What the dashboard adds: publications seen and history held by the node
                # that saw the most (every node following a channel sees its publications).
                for key, value in zip(("published", "history"), counts, strict=False):
                    entry[key] = max(entry.get(key, 0), value)
        return list(merged.values())

    async def _total(self, request: dict[str, Any], key: str) -> int:
        answers = await self._broker.control(request, self._timeout)
        for answer in answers:
            if "error" in answer:
                raise ControlFailed(answer["error"])
        return sum(int(answer.get(key, 0)) for answer in answers)

    # -- what each node does --------------------------------------------------------------------

    async def serve(self, request: dict[str, Any]) -> dict[str, Any]:
        """Serve a control request on this node's connections; its answer."""
        op = request.get("op")
        if op == "channels":
            # History held here (in process); with Redis it is in the streams: not counted.
            local = self._broker.statistics().kind == "memory"
            listed: list[list[Any]] = []
            for index, held in enumerate(list(self._broker.hub.channels())):
                if index % CHANNELS_PER_STEP == CHANNELS_PER_STEP - 1:
                    await trio.lowlevel.checkpoint()  # many channels must not stall the rest
                listed.append(
                    [held.name, len(held.members), held.seq, held.epoch, held.published]
                    + ([len(held.history)] if local else [])
                )
            return {"channels": listed}
        if op == CONNECTIONS:  # the dashboard's lookup
            return connections_answer(self._targets(request), trio.current_time())
        if op == "subscribers":
            state = self._broker.hub.channel(request["channel"])
            return {"subscribers": 0 if state is None else len(state.members)}
        if op == "revoke":
            try:
                self._access.revocations.revoke(
                    request["user"], request["before"], self._wall_clock()
                )
            except RevocationsFull as exc:
                return {"error": str(exc)}
        done = 0
        for index, conn in enumerate(self._targets(request)):
            if index % CONNECTIONS_PER_STEP == CONNECTIONS_PER_STEP - 1:
                await trio.lowlevel.checkpoint()
            done += self._act(op, request, conn)
        return {_COUNTED.get(str(op), "disconnected"): done}

    def _targets(self, request: dict[str, Any]) -> list[Connection | SseStream]:
        if "client" in request:
            conn = self._by_client(request["client"])
            return [] if conn is None else [conn]
        return list(self._by_user(request["user"]))

    def _act(self, op: Any, request: dict[str, Any], conn: Connection | SseStream) -> int:
        if conn.close_code is not None:
            return 0
        if op == "disconnect":
            conn.close(request["code"], request["reason"])
            return 1
        if isinstance(conn, SseStream):
            # An SSE stream's channels are its URL's: the server can end it (disconnect,
            # revoke), not change what it follows.
            return int(op == "revoke" and self._close_revoked(conn))
        if op == "unsubscribe":
            return int(conn.unsubscribe_by_server(request["channel"], request["reason"]))
        if op == "subscribe":
            return int(conn.subscribe_by_server(request["channel"]))
        return int(op == "revoke" and self._close_revoked(conn))

    def _close_revoked(self, conn: Connection | SseStream) -> bool:
        if not self._access.is_revoked(conn.principal):
            return False
        conn.close(REVOKED, "token revoked")
        return True
