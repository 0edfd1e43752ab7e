"""One connection of the client, from the server's welcome until the connection ends.

Its tasks run in the nursery of the connection attempt, next to trio-websocket's reader::

    reader        frames -> Tracker (dedupe, gaps) -> subscriptions; acks -> publishers
    sender        writes queued publishes in order
    heartbeat     pings at an adaptive interval; a missed pong ends the connection
    resubscriber  subscribes again what the client follows, paced (its first window goes out
                  before the other tasks start, so before any publish)

Every connection gets a new ``Link``, so what belongs to one connection (its socket, its
resubscribe window) cannot leak into the next. What outlives it (subscriptions, the tracker's
cursors, waiting publishes and requests, the heartbeat's interval) is the client's, handed in
explicitly when the link is made.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeGuard

import attrs
import trio

from .._core import compiled_json
from .._core.envelopes import request_text
from .._core.protocol import SUBSCRIPTIONS_LIMIT
from .._core.retry import Pacer
from .._core.tracking import AdaptiveInterval, Join, Leave, Message, Recovered, Tracked, Tracker
from .errors import ClientError, RequestError, UnsubscribedError
from .pending import PendingRequests, PublishQueue
from .subscription import Subscription
from .transport import CloseReason, ConnectionClosed, WebSocketConnection

log = logging.getLogger("triows.client")

#: Prefix of the ids of subscribe frames sent on reconnect.
RESUBSCRIBE = "resubscribe:"
#: Error codes that mean "not now" (e.g. 503 while the server's Redis is away): a resubscribe
#: refused with one is tried again by reconnecting, with growing backoff.
TRANSIENT_ERRORS = frozenset({500, 503})
#: A resubscribe over the server's subscribe rate: sent again on the same connection after a
#: pause (a new connection would meet the same limit, and never get them all). Not over
#: ``--max-subscriptions`` (the error's ``limit``): waiting does not help there.
RATE_LIMITED = 429
#: Publish refusals after which the publish was not numbered: sent again after a pause.
PUBLISH_NOT_NOW = frozenset({429, 503})
#: Resubscribes awaiting their reply at once after a reconnect (as in triows.js).
RESUBSCRIBE_WINDOW = 16


class ResubscribeRefusedForNow(Exception):
    """A resubscribe met a transient error: the supervisor reconnects, with backoff."""


@attrs.define(eq=False)
class Resubscribes:
    """One connection's resubscribes, paced (``triows._core.retry.Pacer``: a window at a time;
    after a 429 one at a time, after a pause), and the wake-ups of the task that sends them."""

    pacer: Pacer[str]
    #: The pause a refusal started, for the sender to sleep first.
    pause: float | None = None
    changed: trio.Event = attrs.field(factory=trio.Event)

    def answered(self, channel: str) -> None:
        self.pacer.answered(channel)
        self.changed.set()

    def rate_limited(self, channel: str) -> None:
        pause = self.pacer.refused(channel)
        if pause is not None:
            self.pause = pause
        self.changed.set()


def is_resubscribe(request_id: object) -> TypeGuard[str]:
    return isinstance(request_id, str) and request_id.startswith(RESUBSCRIBE)


class Link:
    """One open connection's tasks, over the client's state that outlives it."""

    def __init__(
        self,
        ws: WebSocketConnection,
        *,
        tracker: Tracker,
        subscriptions: dict[str, Subscription],
        publishes: PublishQueue,
        requests: PendingRequests,
        forget_subscription: Callable[[str, ClientError | None], bool],
        adopt: Callable[[str], bool],
        heartbeat: AdaptiveInterval,
        ping_timeout: float,
        backoff: tuple[float, float],
    ) -> None:
        self.ws = ws
        self._tracker = tracker
        self._subscriptions = subscriptions
        self._publishes = publishes
        self._requests = requests
        self._forget_subscription = forget_subscription
        self._adopt = adopt
        self._heartbeat = heartbeat
        self._ping_timeout = ping_timeout
        self._backoff = backoff
        #: What the client followed when this connection opened: subscribed again from
        #: where their cursors stand. A subscribe() from now on sends its own request.
        self.resubscribes = Resubscribes(Pacer(RESUBSCRIBE_WINDOW, *backoff))
        for channel in subscriptions:
            self.resubscribes.pacer.add(channel)

    async def run(self, nursery: trio.Nursery) -> CloseReason | None:
        """Start the writers in ``nursery`` and read until the connection is closed: how it
        was closed. A failure of any task (a missed pong, a broken stream) raises instead.

        The first window of resubscribes goes out before any publish (as in triows.js): what
        the application publishes lands after its subscriptions are back."""
        await self._send_resubscribes()
        nursery.start_soon(self._resubscribe)
        nursery.start_soon(self._send_publishes)
        nursery.start_soon(self._keep_alive)
        return await self._read()

    # -- reader -------------------------------------------------------------------------------

    async def _read(self) -> CloseReason | None:
        while True:
            try:
                raw = await self.ws.get_message()
            except ConnectionClosed as closed:
                return closed.reason
            # msgspec where it answers as json.loads (a server's frames are text; bytes
            # from a server that is not one take json.loads).
            frame = compiled_json.loads(raw, json.loads) if type(raw) is str else json.loads(raw)
            kind = frame.get("type")
            if kind == "message":
                self._dispatch(frame.get("channel"), self._tracker.on_message(frame), len(raw))
            elif kind == "ack":
                # Also when the caller stopped waiting: the tracker still expects it.
                self._tracker.receive(frame)
                item = self._publishes.answered(frame.get("id"))
                if item is not None and isinstance(frame.get("seq"), int):
                    item.succeed(frame["seq"])
            elif kind == "subscribed":
                if frame.get("server") is True and isinstance(frame.get("channel"), str):
                    self._adopt(frame["channel"])  # a subscription the server made
                self._dispatch(frame.get("channel"), self._tracker.on_subscribed(frame))
                request_id = frame.get("id")
                if is_resubscribe(request_id):
                    self.resubscribes.answered(request_id.removeprefix(RESUBSCRIBE))
                else:
                    self._requests.answer(frame)
            elif kind == "error":
                self._on_error(frame)
            elif kind in ("join", "leave"):
                event_type = Join if kind == "join" else Leave
                event = event_type(
                    channel=frame["channel"],
                    client_id=frame["clientId"],
                    user_id=frame.get("userId"),
                    info=frame.get("info"),
                )
                self._dispatch(frame["channel"], [event])
            elif kind in ("presence", "history"):
                self._requests.answer(frame)
            elif (
                kind == "unsubscribed" and not self._requests.answer(frame) and frame.get("reason")
            ):
                log.warning(
                    "server ended subscription %s: %s", frame.get("channel"), frame["reason"]
                )
                self._forget_subscription(frame["channel"], UnsubscribedError(frame["reason"]))

    def _dispatch(
        self, channel: object, events: Sequence[Tracked | Join | Leave], size: int = 0
    ) -> None:
        """Hand ``events`` to the channel's subscription; a message counts ``size`` bytes."""
        if not events or not isinstance(channel, str):
            return
        subscription = self._subscriptions.get(channel)
        if subscription is None:
            return
        for event in events:
            if isinstance(event, Recovered):
                log.debug("resumed %s: nothing missed", channel)
            else:  # never waits: see Subscription
                subscription._put(event, size if isinstance(event, Message) else 0)

    def _on_error(self, frame: dict[str, Any]) -> None:
        """An error frame answers a publish, a resubscribe, or a request (in that order)."""
        request_id = frame.get("id")
        if frame.get("code") in PUBLISH_NOT_NOW and self._publishes.refused_for_now(request_id):
            return  # never numbered: sent again with its id (its ack is still expected)
        self._tracker.forget_ack(request_id)
        item = self._publishes.answered(request_id)
        if item is not None:
            item.fail(RequestError(frame["code"], frame["message"]))
        elif is_resubscribe(request_id):
            self._on_resubscribe_refused(request_id.removeprefix(RESUBSCRIBE), frame)
        elif not self._requests.answer(frame):
            log.warning("server error %s: %s", frame.get("code"), frame.get("message"))

    def _on_resubscribe_refused(self, channel: str, frame: dict[str, Any]) -> None:
        """Over the rate: again later on this connection. Transient: again on the next one.
        Anything else (a token that no longer allows it, the subscription limit): the
        subscription ends with the error."""
        code = frame["code"]
        if code == RATE_LIMITED and frame.get("limit") != SUBSCRIPTIONS_LIMIT:
            log.info("resubscribing %s: rate-limited, again after a pause", channel)
            self.resubscribes.rate_limited(channel)
            return
        self.resubscribes.answered(channel)
        if code in TRANSIENT_ERRORS:
            raise ResubscribeRefusedForNow(
                f"resubscribing {channel}: {code} {frame.get('message')}"
            )
        log.warning("resubscribing %s refused: %s", channel, frame.get("message"))
        self._forget_subscription(channel, RequestError(code, frame["message"]))

    # -- writers ------------------------------------------------------------------------------

    async def _send_resubscribes(self) -> None:
        """Send what the resubscribe pacer lets go now (channels unsubscribed meanwhile are
        let go without a frame, and make room for the next ones)."""
        state = self.resubscribes
        while taken := state.pacer.take():
            for channel in taken:
                if channel in self._subscriptions:
                    await self.ws.send_message(request_text(self._subscribe_frame(channel)))
                else:
                    state.pacer.answered(channel)

    async def _resubscribe(self) -> None:
        """Resubscribe what was followed, as the pacer lets it go (replies come through
        _read); done once every channel was answered."""
        state = self.resubscribes
        while len(state.pacer):
            if state.pause is not None:
                pause, state.pause = state.pause, None
                await trio.sleep(pause)
                state.pacer.resume()
            await self._send_resubscribes()
            if len(state.pacer) and state.pause is None:
                state.changed = trio.Event()  # no checkpoint since the checks: no lost wakeup
                await state.changed.wait()

    def _subscribe_frame(self, channel: str) -> dict[str, Any]:
        # The id lets a refusal (say, a token that no longer allows it) find its channel.
        frame: dict[str, Any] = {
            "type": "subscribe",
            "channel": channel,
            "id": RESUBSCRIBE + channel,
        }
        resume = self._tracker.resume_from(channel)
        if resume is not None:
            frame["since"], frame["epoch"] = resume
        elif (subscription := self._subscriptions.get(channel)) is not None and (
            subscription.rewind is not None
        ):
            frame["rewind"] = subscription.rewind  # asked offline: the first subscribe
        return frame

    async def _send_publishes(self) -> None:
        while True:
            for item in await self._publishes.next_batch():
                self._tracker.expect_ack(item.id, item.channel)
                await self.ws.send_message(item.frame)

    async def _keep_alive(self) -> None:
        """Ping at the adaptive interval; no pong within ``ping_timeout`` ends the connection."""
        timeout = self._ping_timeout
        pings = 0
        while True:
            await trio.sleep(self._heartbeat.value)
            pings += 1
            try:
                with trio.fail_after(timeout):
                    await self.ws.ping(pings.to_bytes(8, "big"))
            except trio.TooSlowError:
                self._heartbeat.failure()
                log.info("no pong within %.1fs: reconnecting", timeout)
                raise
            self._heartbeat.success()
