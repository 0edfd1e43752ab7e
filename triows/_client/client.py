"""The reconnecting Trio client (public as ``triows.client``).

Task tree, all under the nursery of ``connect()``::

    supervisor        connect, run one connection, back off (full jitter), reconnect
    └─ connection     own nursery; the first task to end ends the connection
       ├─ trio-websocket reader
       ├─ reader      frames -> Tracker (dedupe, gaps) -> subscriptions; acks -> publishers
       ├─ sender      writes queued publishes in order
       └─ heartbeat   pings at an adaptive interval; a missed pong ends the connection

What survives a reconnect: subscriptions (resubscribed with ``since``/``epoch``, so the
server replays what was missed), unacked publishes (resent with their original ids, so the
server's dedupe makes them exactly-once for an authenticated user), and the tracker's cursors.
"""

from __future__ import annotations

import enum
import inspect
import itertools
import json
import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeGuard
from urllib.parse import urlencode, urlsplit

import attrs
import trio
from trio_util import AsyncValue

from .._core.backoff import full_jitter
from .._core.tracking import (
    AdaptiveInterval,
    Backlog,
    Event,
    Join,
    Leave,
    Presence,
    Recovered,
    Tracked,
    Tracker,
)
from .transport import ConnectionClosed, ConnectionRejected, open_client

log = logging.getLogger("triows.client")
# A library logs, the application decides what is shown: without logging configured nothing
# reaches stderr (errors reach the caller as exceptions). logging.basicConfig() shows them.
log.addHandler(logging.NullHandler())

#: How long the client waits for the server's close frame when it closes.
CLOSE_TIMEOUT = 1.0
#: Prefix of the ids of subscribe frames sent on reconnect.
RESUBSCRIBE = "resubscribe:"
#: HTTP statuses that no retry can fix.
PERMANENT_REJECTIONS = frozenset({400, 401, 403, 404})
#: Error codes that mean "not now" (e.g. 503 while the server's Redis is away): a resubscribe
#: refused with one is tried again by reconnecting, with growing backoff.
TRANSIENT_ERRORS = frozenset({500, 503})
#: A resubscribe over the server's subscribe rate: sent again on the same connection after a
#: random wait (a new connection would meet the same limit, and never get them all).
RATE_LIMITED = 429
#: Resubscribes awaiting their reply at once after a reconnect (as in triows.js).
RESUBSCRIBE_WINDOW = 16


class _ResubscribeRefusedForNow(Exception):
    pass


@attrs.define(eq=False)
class _Resubscribes:
    """One connection's resubscribes: sent a window at a time; after a 429 one at a time,
    after a wait that grows with each refusal (and shrinks again with each success)."""

    queue: deque[str]
    window: int = RESUBSCRIBE_WINDOW
    pending: int = 0
    retries: int = 0
    #: Seconds to wait before sending more (after a refusal).
    wait: float = 0.0
    changed: trio.Event = attrs.field(factory=trio.Event)

    def answered(self) -> None:
        self.pending = max(0, self.pending - 1)
        self.retries = max(0, self.retries - 1)
        self.window = min(RESUBSCRIBE_WINDOW, self.window * 2)
        self.changed.set()

    def rate_limited(self, channel: str, delay: float) -> None:
        self.pending = max(0, self.pending - 1)
        self.queue.append(channel)
        self.window = 1
        self.retries += 1
        self.wait = max(self.wait, delay)
        self.changed.set()


class ClientState(enum.StrEnum):
    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class ClientError(Exception):
    """Base class of the client's errors."""


class ClientClosedError(ClientError):
    """The client is closed (``aclose()``, a permanent rejection, or max attempts reached)."""


class PublishTimeoutError(ClientError, trio.TooSlowError):
    """No ack in time. The publish may still happen; it will not happen twice."""


class OfflineQueueFullError(ClientError):
    """Too many publishes are waiting for a connection."""


class ConnectionLostError(ClientError):
    """The connection ended before the server answered (the client is reconnecting), or no
    first connection could be made within ``connect_timeout`` (the client is closed)."""


class RequestTimeoutError(ClientError, trio.TooSlowError):
    """The server did not answer a request in time."""


class RequestError(ClientError):
    """The server refused a request (``code`` as in the protocol's error frame)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@attrs.define(eq=False)
class _Publish:
    channel: str
    #: The publish frame, encoded once at the call (so bad data fails there, not later).
    frame: str
    id: str
    done: trio.Event = attrs.field(factory=trio.Event)
    seq: int | None = None
    error: Exception | None = None


class Subscription:
    """Messages (:class:`~triows.client.Message`) and gaps (:class:`~triows.client.Gap`) of one
    channel, in order, each once. ``async for event in subscription``.

    It holds at most ``subscription_buffer`` events. The client's reader never waits for the
    application (acks and every other channel would stall behind it): when the buffer is full,
    newer messages are skipped and, once the application has caught up, one ``Gap`` with
    ``reason="subscription buffer full"`` names exactly which seqs were skipped.
    """

    def __init__(self, client: Client, channel: str, buffer: int) -> None:
        self.channel = channel
        self._client = client
        self._backlog = Backlog(channel, buffer)
        self._wakeup = trio.Event()
        self._ended = False
        self._error: ClientError | None = None  # why it ended, when the server ended it

    @property
    def skipped(self) -> int:
        """Messages (and joins and leaves) skipped because the buffer was full."""
        return self._backlog.skipped

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        await trio.lowlevel.checkpoint()
        while True:
            event = self._backlog.take()
            if event is not None:
                return event
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    async def aclose(self) -> None:
        await self._client.unsubscribe(self.channel)

    def _put(self, event: Event) -> None:
        """From the client's reader: queue ``event`` without waiting, or skip it."""
        if not self._ended and self._backlog.put(event):
            self._wakeup.set()

    def _end(self, error: ClientError | None) -> None:
        self._ended = True
        self._error = error
        self._wakeup.set()


StreamOpener = Callable[[], Awaitable[trio.abc.Stream]]
#: A token, or a function returning one (sync or async), asked again at every (re)connect so
#: that expiring tokens can be renewed.
TokenSource = str | Callable[[], "str | Awaitable[str]"]


class Client:
    """A connection to a triows server that outlives network failures."""

    def __init__(
        self,
        url: str,
        *,
        token: TokenSource | None,
        open_stream: StreamOpener | None,
        backoff_base: float,
        backoff_cap: float,
        max_attempts: int | None,
        publish_timeout: float,
        offline_queue_size: int,
        ping_min: float,
        ping_max: float,
        ping_timeout: float,
        connect_timeout: float,
        subscription_buffer: int,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"expected a ws:// or wss:// URL, got {url!r}")
        self.url = url
        self._parts = parts
        self._host: str = parts.hostname
        self._token = token
        self._open_stream = open_stream or self._open_tcp
        self._backoff = (backoff_base, backoff_cap)
        self._max_attempts = max_attempts
        self._publish_timeout = publish_timeout
        self._offline_queue_size = offline_queue_size
        self._ping = (ping_min, ping_max, ping_timeout)
        self._connect_timeout = connect_timeout
        self._subscription_buffer = subscription_buffer
        #: ``connecting`` / ``open`` / ``reconnecting`` / ``closed``; await changes with
        #: ``await client.state.wait_value(ClientState.OPEN)``.
        self.state: AsyncValue = AsyncValue(ClientState.CONNECTING)
        self.client_id: str | None = None
        #: The ``serverId`` of the node this client is connected to now.
        self.server_id: str | None = None
        self.connects = 0
        self.heartbeat = AdaptiveInterval(ping_min, ping_max)
        self._tracker = Tracker()
        self._subscriptions: dict[str, Subscription] = {}
        self._subscribed: dict[str, trio.Event] = {}  # request id -> reply arrived
        self._replies: dict[str, dict[str, Any]] = {}
        self._unsent: deque[_Publish] = deque()
        self._inflight: dict[str, _Publish] = {}
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(6)
        self._ws: Any = None
        self._wake_sender = trio.Event()
        self._resubscribing: _Resubscribes | None = None
        self._closed_reason: str | None = None
        self._closed_error: type[ClientError] = ClientClosedError
        self._saying_goodbye = False
        self._scope = trio.CancelScope()

    # -- public API -----------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> Subscription:
        """Follow ``channel``; returns once the server confirmed it, or at once while offline
        (also when the connection drops before the reply): the subscription is then made on
        connect. Raises :class:`RequestError` when the server refuses (403, 429, ...) and
        :class:`RequestTimeoutError` when it does not answer in time."""
        self._check_open()
        if channel in self._subscriptions:
            return self._subscriptions[channel]
        subscription = Subscription(self, channel, self._subscription_buffer)
        self._subscriptions[channel] = subscription
        self._tracker.track(channel)
        try:
            await self._request({"type": "subscribe", "channel": channel})
        except ConnectionLostError:
            pass  # offline now: made on (re)connect
        except BaseException:
            self._forget_subscription(channel)
            raise
        return subscription

    async def unsubscribe(self, channel: str) -> None:
        """Stop following ``channel``. Offline, or if the connection drops first, there is
        nothing to tell the server: a new connection does not subscribe it again."""
        if self._forget_subscription(channel):
            try:
                await self._request({"type": "unsubscribe", "channel": channel})
            except ConnectionLostError:
                pass

    async def publish(self, channel: str, data: Any) -> int:
        """Publish and return the sequence number from the server's ack.

        While offline the publish waits in a bounded queue and is sent on reconnect with its
        original id. Raises :class:`PublishTimeoutError` after the client's
        ``publish_timeout``, :class:`OfflineQueueFullError` when the queue is full,
        :class:`RequestError` when the server refuses it, and ``TypeError`` at once when
        ``data`` cannot be encoded as JSON. Cancelled (e.g. by an outer ``trio.fail_after``)
        before it was sent, it is not sent.
        """
        self._check_open()
        publish_id = f"{self._id_prefix}-{next(self._ids)}"
        try:
            frame = json.dumps(
                {"type": "publish", "channel": channel, "data": data, "id": publish_id}
            )
        except (TypeError, ValueError) as exc:
            raise TypeError(f"publish data must be JSON-serialisable: {exc}") from None
        if len(self._unsent) + len(self._inflight) >= self._offline_queue_size:
            raise OfflineQueueFullError(
                f"{self._offline_queue_size} publishes already wait for the server"
            )
        item = _Publish(channel, frame, publish_id)
        self._unsent.append(item)
        self._wake_sender.set()
        try:
            with trio.move_on_after(self._publish_timeout):
                await item.done.wait()
        finally:
            if not item.done.is_set() and item in self._unsent:
                # Not sent on this connection: it will not be. (Sent on an earlier one, its
                # ack can no longer come; a replay of it names an earlier client id of ours.)
                self._unsent.remove(item)
                self._tracker.forget_ack(item.id)
        if not item.done.is_set():
            raise PublishTimeoutError(f"no ack for publish {item.id} to {channel!r}")
        if item.error is not None:
            raise item.error
        assert item.seq is not None
        return item.seq

    async def presence(self, channel: str) -> Presence:
        """Who is subscribed to a presence channel now (every node's clients, with Redis).
        Raises :class:`RequestError` (400) when the server has no presence for it, and
        :class:`ConnectionLostError` while offline. Joins and leaves of a channel this client
        follows arrive on its :class:`Subscription` as :class:`Join` / :class:`Leave`."""
        self._check_open()
        reply = await self._request({"type": "presence", "channel": channel})
        members = reply.get("members")
        return Presence(
            channel=channel,
            count=reply["count"],
            members=None
            if members is None
            else tuple((m["clientId"], m.get("userId")) for m in members),
        )

    async def wait_open(self) -> None:
        """Wait until connected; raises :class:`ClientClosedError` if the client closes first
        (a permanent rejection such as 401, or ``max_attempts`` reached)."""
        await self.state.wait_value(lambda v: v in (ClientState.OPEN, ClientState.CLOSED))
        self._check_open()

    async def aclose(self) -> None:
        """Close with 1000 (waiting briefly for the server's close frame) and stop."""
        ws = self._ws
        if ws is not None and self._closed_reason is None:
            self._saying_goodbye = True  # the reader must not end the connection meanwhile
            with trio.move_on_after(CLOSE_TIMEOUT):
                await ws.aclose()
        self._close("closed by the application")

    # -- internals ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed_reason is not None:
            raise self._closed_error(self._closed_reason)

    def _forget_subscription(self, channel: str, error: ClientError | None = None) -> bool:
        """Stop following ``channel``; with ``error``, its iteration raises it (after the
        events already received) instead of just ending."""
        subscription = self._subscriptions.pop(channel, None)
        self._tracker.untrack(channel)
        if subscription is not None:
            subscription._end(error)
        return subscription is not None

    def _close(self, reason: str, error: type[ClientError] = ClientClosedError) -> None:
        """Stop for good; what is pending fails with ``error(reason)``."""
        if self._closed_reason is None:
            self._closed_reason = reason
            self._closed_error = error
            self.state.value = ClientState.CLOSED
            for item in [*self._inflight.values(), *self._unsent]:
                item.error = error(reason)
                item.done.set()
            self._inflight.clear()
            self._unsent.clear()
            ended = None if reason == "closed by the application" else error(reason)
            for channel in list(self._subscriptions):
                self._forget_subscription(channel, ended)
        self._scope.cancel()

    async def _request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a subscribe/unsubscribe/presence and wait for its reply. Raises
        :class:`ConnectionLostError` when there is no connection or it ends first."""
        ws = self._ws
        if ws is None:
            raise ConnectionLostError("not connected")
        request_id = f"r-{self._id_prefix}-{next(self._ids)}"
        waiter = self._subscribed[request_id] = trio.Event()
        try:
            await ws.send_message(json.dumps({**frame, "id": request_id}))
            with trio.fail_after(self._publish_timeout):
                await waiter.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed):
            raise ConnectionLostError("connection lost before the server answered") from None
        except trio.TooSlowError:
            raise RequestTimeoutError(
                f"no answer to {frame['type']} {frame.get('channel')!r} within "
                f"{self._publish_timeout}s"
            ) from None
        finally:
            self._subscribed.pop(request_id, None)
        reply = self._replies.pop(request_id, None)
        if reply is None:
            raise ConnectionLostError("connection lost before the server answered")
        if reply.get("type") == "error":
            raise RequestError(reply["code"], reply["message"])
        return reply

    async def _open_tcp(self) -> trio.abc.Stream:
        parts = self._parts
        if parts.scheme == "wss":
            return await trio.open_ssl_over_tcp_stream(self._host, parts.port or 443)
        return await trio.open_tcp_stream(self._host, parts.port or 80)

    async def _supervise(self, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        attempt = 0
        # The first connection is bounded as a whole (attempts and backoff): with no server, a
        # program says so after connect_timeout instead of waiting for ever.
        first_deadline = trio.current_time() + self._connect_timeout
        last_failure = "no attempt finished"
        with self._scope:
            while True:
                connects = self.connects
                deadline = trio.current_time() + self._connect_timeout
                if not connects:
                    deadline = min(deadline, first_deadline)
                ending = await self._run_connection(deadline)
                if ending.closed:
                    return
                last_failure = ending.failure or last_failure
                if self.connects > connects and not ending.refused_for_now:
                    attempt = 0  # it got through: count failed attempts from here
                if not self.connects and trio.current_time() >= first_deadline:
                    self._close(
                        f"no connection to {self.url} within {self._connect_timeout:g}s "
                        f"(connect_timeout); the last attempt: {last_failure}",
                        ConnectionLostError,
                    )
                    return
                if self._max_attempts is not None and attempt >= self._max_attempts:
                    self._close(f"gave up after {attempt} reconnect attempts")
                    return
                self.state.value = ClientState.RECONNECTING
                delay = full_jitter(attempt, *self._backoff)
                if not self.connects:
                    delay = min(delay, first_deadline - trio.current_time())
                await trio.sleep(delay)
                attempt += 1

    async def _run_connection(self, deadline: float) -> _Ending:
        """One attempt, and the connection's life if it gets through: how it ended.

        Every failure of the connection's tasks is judged and logged, not only the first; a
        ``Cancelled`` among them (the client is closing) goes on to its cancel scope.
        """
        ending = _Ending()
        try:
            await self._connect_once(deadline)
        except* ConnectionRejected as group:
            for rejected in _leaves(group):
                assert isinstance(rejected, ConnectionRejected)
                status = rejected.status_code
                if status in PERMANENT_REJECTIONS:
                    log.error("server refused the connection: HTTP %d", status)
                    self._close(f"rejected with HTTP {status}")
                    ending.closed = True
                else:
                    log.warning("server refused the connection: HTTP %d", status)
                    ending.failure = f"refused with HTTP {status}"
        except* (OSError, trio.BrokenResourceError, trio.TooSlowError, ConnectionClosed) as group:
            for exc in _leaves(group):
                log.info("connection lost: %s", _describe(exc))
                ending.failure = _describe(exc)
        except* _ResubscribeRefusedForNow as group:
            for exc in _leaves(group):
                log.warning("%s; reconnecting later", exc)
            ending.refused_for_now = True
        except* Exception as group:
            log.error("connection failed unexpectedly; reconnecting", exc_info=group)
            ending.failure = "; ".join(_describe(exc) for exc in _leaves(group))
        return ending

    async def _connect_once(self, deadline: float) -> None:
        """Connect (by ``deadline``: the stream, the handshake and the welcome), then serve the
        connection until it ends."""
        parts = self._parts
        path = parts.path or "/"
        query = parts.query
        with trio.fail_at(deadline):
            token = await self._current_token()
        if token is not None:
            query = "&".join(q for q in (query, urlencode({"token": token})) if q)
        stream: trio.abc.Stream | None = None
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_at(deadline):
                    stream = await self._open_stream()
                    ws = await open_client(
                        nursery,
                        stream,
                        host=parts.netloc,
                        path=f"{path}?{query}" if query else path,
                        message_queue_size=64,
                    )
                    welcome = json.loads(await ws.get_message())
                self._ws = ws
                self.client_id = welcome["data"]["clientId"]
                self.server_id = welcome["data"].get("serverId")
                self._tracker.add_client_id(self.client_id)
                self.connects += 1
                # Unacked publishes go first, in their order, with their ids: the server's
                # dedupe acks any it already has instead of delivering them twice.
                self._unsent.extendleft(reversed(self._inflight.values()))
                self._inflight.clear()
                # Open first: a subscribe() from now on sends its own request; the ones
                # made before are resubscribed, from where their cursors stand.
                self.state.value = ClientState.OPEN
                self._resubscribing = _Resubscribes(deque(self._subscriptions))
                nursery.start_soon(self._resubscribe, ws, self._resubscribing)
                nursery.start_soon(self._send_publishes, ws)
                nursery.start_soon(self._heartbeat, ws)
                await self._read(ws)  # returns when the connection ends
                nursery.cancel_scope.cancel()
        finally:
            # Not open any more, before the connection is gone: a request made from now on
            # sees "offline", never an open state without a connection.
            if self.state.value is ClientState.OPEN:
                self.state.value = ClientState.RECONNECTING
            self._ws = None
            self._resubscribing = None
            for waiter in self._subscribed.values():
                waiter.set()
            # A cancelled trio-websocket connection leaves its socket open: close it here.
            if stream is not None:
                await trio.aclose_forcefully(stream)

    async def _current_token(self) -> str | None:
        source = self._token
        if source is None or isinstance(source, str):
            return source
        token = source()
        if inspect.isawaitable(token):
            token = await token  # bounded by the caller's deadline
        return token

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
        return frame

    async def _read(self, ws: Any) -> None:
        while True:
            try:
                frame = json.loads(await ws.get_message())
            except ConnectionClosed as closed:
                if self._saying_goodbye:
                    # aclose() is finishing the closing handshake, which needs the
                    # library's reader task: keep the connection up until it is done.
                    await trio.sleep_forever()
                log.info("connection closed: %s", closed.reason)
                return
            kind = frame.get("type")
            if kind == "message":
                self._dispatch(frame["channel"], self._tracker.on_message(frame))
            elif kind == "ack":
                # Also when the caller stopped waiting: the tracker still expects it.
                self._tracker.on_ack(frame.get("id"), frame["seq"])
                item = self._inflight.pop(frame.get("id"), None)
                if item is not None:
                    item.seq = frame["seq"]
                    item.done.set()
            elif kind == "subscribed":
                self._dispatch(frame["channel"], self._tracker.on_subscribed(frame))
                if _is_resubscribe(frame.get("id")) and self._resubscribing is not None:
                    self._resubscribing.answered()
                else:
                    self._answer(frame)
            elif kind == "error":
                request_id = frame.get("id")
                self._tracker.forget_ack(request_id)
                item = self._inflight.pop(request_id, None)
                if item is not None:
                    item.error = RequestError(frame["code"], frame["message"])
                    item.done.set()
                elif _is_resubscribe(request_id):
                    channel = request_id.removeprefix(RESUBSCRIBE)
                    resubscribing = self._resubscribing
                    if frame["code"] == RATE_LIMITED and resubscribing is not None:
                        delay = full_jitter(resubscribing.retries, *self._backoff)
                        log.info("resubscribing %s: rate-limited, again in %.1fs", channel, delay)
                        resubscribing.rate_limited(channel, delay)
                        continue
                    if resubscribing is not None:
                        resubscribing.answered()
                    if frame["code"] in TRANSIENT_ERRORS:
                        raise _ResubscribeRefusedForNow(
                            f"resubscribing {channel}: {frame['code']} {frame.get('message')}"
                        )
                    log.warning("resubscribing %s refused: %s", channel, frame.get("message"))
                    self._forget_subscription(
                        channel, RequestError(frame["code"], frame["message"])
                    )
                elif not self._answer(frame):
                    log.warning("server error %s: %s", frame.get("code"), frame.get("message"))
            elif kind in ("join", "leave"):
                event_type = Join if kind == "join" else Leave
                event = event_type(
                    channel=frame["channel"],
                    client_id=frame["clientId"],
                    user_id=frame.get("userId"),
                )
                self._dispatch(frame["channel"], [event])
            elif kind == "presence":
                self._answer(frame)
            elif kind == "unsubscribed" and not self._answer(frame) and frame.get("reason"):
                log.warning(
                    "server ended subscription %s: %s", frame.get("channel"), frame["reason"]
                )
                self._forget_subscription(frame["channel"], RequestError(403, frame["reason"]))

    def _answer(self, frame: dict[str, Any]) -> bool:
        request_id = frame.get("id")
        waiter = self._subscribed.get(request_id) if isinstance(request_id, str) else None
        if waiter is None:
            return False
        self._replies[frame["id"]] = frame
        waiter.set()
        return True

    def _dispatch(self, channel: str, events: Sequence[Tracked | Join | Leave]) -> None:
        subscription = self._subscriptions.get(channel)
        if subscription is None:
            return
        for event in events:
            if isinstance(event, Recovered):
                log.debug("resumed %s: nothing missed", channel)
            else:
                subscription._put(event)  # never waits: see Subscription

    async def _resubscribe(self, ws: Any, state: _Resubscribes) -> None:
        """Resubscribe what was followed, a window at a time (replies come through _read)."""
        while True:
            if state.wait:
                wait, state.wait = state.wait, 0.0
                await trio.sleep(wait)
            while state.queue and state.pending < state.window:
                channel = state.queue.popleft()
                if channel in self._subscriptions:
                    state.pending += 1
                    await ws.send_message(json.dumps(self._subscribe_frame(channel)))
            if not state.queue and not state.pending:
                return
            if not state.wait and (state.pending >= state.window or not state.queue):
                state.changed = trio.Event()  # no checkpoint since the checks: no lost wakeup
                await state.changed.wait()

    async def _send_publishes(self, ws: Any) -> None:
        while True:
            while self._unsent:
                item = self._unsent.popleft()
                self._inflight[item.id] = item
                self._tracker.expect_ack(item.id, item.channel)
                await ws.send_message(item.frame)
            self._wake_sender = trio.Event()
            await self._wake_sender.wait()

    async def _heartbeat(self, ws: Any) -> None:
        _, _, timeout = self._ping
        pings = 0
        while True:
            await trio.sleep(self.heartbeat.value)
            pings += 1
            try:
                with trio.fail_after(timeout):
                    await ws.ping(pings.to_bytes(8, "big"))
            except trio.TooSlowError:
                self.heartbeat.failure()
                log.info("no pong within %.1fs: reconnecting", timeout)
                raise
            self.heartbeat.success()


@asynccontextmanager
async def connect(
    url: str,
    *,
    token: TokenSource | None = None,
    open_stream: StreamOpener | None = None,
    backoff_base: float = 0.5,
    backoff_cap: float = 30.0,
    max_attempts: int | None = None,
    publish_timeout: float = 10.0,
    offline_queue_size: int = 1000,
    ping_min: float = 5.0,
    ping_max: float = 30.0,
    ping_timeout: float = 10.0,
    connect_timeout: float = 10.0,
    subscription_buffer: int = 1000,
) -> AsyncIterator[Client]:
    """A reconnecting client for the block's duration.

    Returns at once: the first connection is made in the background (``client.state``).
    ``token`` is sent as the ``token`` query parameter; pass a function (sync or async) to
    get a fresh one at every reconnect, e.g. after the server closed with 1008 at expiry.
    ``open_stream`` replaces the TCP connection (tests pass ``MemoryListener.connect``).
    """
    client = Client(
        url,
        token=token,
        open_stream=open_stream,
        backoff_base=backoff_base,
        backoff_cap=backoff_cap,
        max_attempts=max_attempts,
        publish_timeout=publish_timeout,
        offline_queue_size=offline_queue_size,
        ping_min=ping_min,
        ping_max=ping_max,
        ping_timeout=ping_timeout,
        connect_timeout=connect_timeout,
        subscription_buffer=subscription_buffer,
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client._supervise)
            try:
                yield client
            finally:
                with trio.CancelScope(shield=True):
                    await client.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery is ours, not the caller's: what the block raised (ClientClosedError
        # after a 401, say) comes out as it is, as trio's own context managers do. More than
        # one exception (Cancelled included) stays a group: nothing is dropped.
        _raise_single(group)


class Pool:
    """N reconnecting clients for publish-heavy producers; publishes go round-robin."""

    def __init__(self, clients: list[Client]) -> None:
        self.clients = clients
        self._next = itertools.cycle(clients)

    async def publish(self, channel: str, data: Any) -> int:
        return await next(self._next).publish(channel, data)


@asynccontextmanager
async def open_pool(url: str, size: int = 4, **options: Any) -> AsyncIterator[Pool]:
    """``size`` clients, each as from :func:`connect` with ``options``."""
    if size < 1:
        raise ValueError("a pool needs at least one connection")
    async with _open_many(url, size, options) as clients:
        yield Pool(clients)


@asynccontextmanager
async def _open_many(url: str, size: int, options: dict[str, Any]) -> AsyncIterator[list[Client]]:
    if size == 0:
        yield []
        return
    async with connect(url, **options) as first, _open_many(url, size - 1, options) as rest:
        yield [first, *rest]


@attrs.define
class _Ending:
    """How one connection attempt ended, for the supervisor."""

    closed: bool = False
    refused_for_now: bool = False
    #: What went wrong, for the message when the first connection times out.
    failure: str | None = None


def _is_resubscribe(request_id: object) -> TypeGuard[str]:
    return isinstance(request_id, str) and request_id.startswith(RESUBSCRIBE)


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


def _raise_single(group: BaseExceptionGroup[Any]) -> None:
    """Raise the one exception inside ``group`` (however nested) by itself, with its own
    context (not the group as its context); else the group."""
    leaves = _leaves(group)
    if len(leaves) != 1:
        raise group
    exc = leaves[0]
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context


def _describe(exc: BaseException) -> str:
    """``TypeName: detail`` (or the close code and reason), for one log line."""
    if isinstance(exc, ConnectionClosed) and exc.reason is not None:
        return f"closed {exc.reason.code} {exc.reason.reason or ''}".rstrip()
    # trio's connect errors often carry the reason only in their cause (ECONNREFUSED...).
    detail = str(exc) or str(exc.__cause__ or exc.__context__ or "")
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
