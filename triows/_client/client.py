"""The reconnecting Trio client (public as ``triows.client``): its API and its supervisor.

Task tree, all under the nursery of ``connect()``::

    supervisor        connect, run one connection, back off (full jitter), reconnect
    └─ connection     own nursery; the first task to end ends the connection
       ├─ trio-websocket reader
       └─ the link's reader, sender, heartbeat and resubscriber (``link.Link``)

What survives a reconnect: subscriptions (resubscribed with ``since``/``epoch``, so the
server replays what was missed), unacked publishes (resent with their original ids, so the
server's dedupe makes them exactly-once for an authenticated user), and the tracker's cursors.
All of that is kept here; a ``Link`` holds only what one connection owns.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import secrets
from typing import Any

import trio
from trio_util import AsyncValue

from .._core.close_codes import is_disconnect
from .._core.envelopes import request_text
from .._core.protocol import MAX_SAFE_INTEGER
from .._core.retry import Attempts, Verdict
from .._core.tracking import AdaptiveInterval, Tracker, check_position
from .attempt import AttemptEnding, judge_attempt, why_stopped
from .endpoint import Endpoint, StreamOpener, TokenSource
from .errors import (
    ClientClosedError,
    ClientError,
    ClientState,
    ConnectionLostError,
    OfflineQueueFullError,
    PublishTimeoutError,
    RequestError,
    RequestTimeoutError,
)
from .link import Link
from .pending import PendingPublish, PendingRequests, PublishQueue
from .queries import Queries
from .subscription import Offered, Subscription
from .transport import CloseReason, ConnectionClosed, open_client, say_goodbye

log = logging.getLogger("triows.client")
# A library logs, the application decides what is shown: without logging configured nothing
# reaches stderr (errors reach the caller as exceptions). logging.basicConfig() shows them.
log.addHandler(logging.NullHandler())

#: How long the client waits for the server's close frame when it closes.
CLOSE_TIMEOUT = 1.0


class Client(Queries):
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
        publish_window: int,
        ping_min: float,
        ping_max: float,
        ping_timeout: float,
        connect_timeout: float,
        subscription_buffer: int,
        subscription_buffer_bytes: int,
    ) -> None:
        self._endpoint = Endpoint(url, token, open_stream)
        self._token_function = callable(token)
        self.url = url
        self._backoff = (backoff_base, backoff_cap)
        self._max_attempts = max_attempts
        self._publish_timeout = publish_timeout
        self._offline_queue_size = offline_queue_size
        self._ping_timeout = ping_timeout
        self._connect_timeout = connect_timeout
        self._subscription_buffer = (subscription_buffer, subscription_buffer_bytes)
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
        self._requests = PendingRequests()
        self._publishes = PublishQueue(publish_window, self._backoff)
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(6)
        #: The connection now, None while there is none.
        self._link: Link | None = None
        self._closed_reason: str | None = None
        #: The close code and reason of the server's last close (4000-4499: the client
        #: reconnects; 4500-4999: it stopped; ``Server.disconnect`` and ``revoke`` use them).
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._closed_error: type[ClientError] = ClientClosedError
        self._saying_goodbye = False
        self._welcomed_at = 0.0
        self._scope = trio.CancelScope()
        self._offered = Offered()

    # -- public API -----------------------------------------------------------------------------

    async def subscribe(
        self,
        channel: str,
        *,
        rewind: int | None = None,
        since: int | None = None,
        epoch: str | None = None,
    ) -> Subscription:
        """Follow ``channel``; returns once the server confirmed it, or at once while offline
        (also when the connection drops before the reply): the subscription is then made on
        connect. With ``rewind`` the channel's last ``rewind`` messages (as many as its
        history holds) come first, then live ones; a reconnect resumes from the last one seen
        instead. With ``since`` and ``epoch`` (a position from ``/api/channel``) every message
        after it comes first, or the gap; ``since=0, epoch=None`` (a channel never numbered)
        is every message history holds. Raises ValueError, before anything is sent, for a
        position the server would refuse or that means nothing (``check_position``), and
        :class:`RequestError` when the server refuses
        (403, 429, ...) and :class:`RequestTimeoutError` when it does not answer in time."""
        self._check_open()
        check_position(since, epoch, rewind)
        if channel in self._subscriptions:
            return self._subscriptions[channel]
        if since is not None and epoch is None:  # since=0: check_position allows no other
            rewind = MAX_SAFE_INTEGER  # never numbered: all that came since is in history
        subscription = Subscription(self, channel, *self._subscription_buffer)
        subscription.rewind = rewind
        self._subscriptions[channel] = subscription
        self._tracker.track(channel)
        frame: dict[str, Any] = {"type": "subscribe", "channel": channel}
        if since is not None and epoch is not None:
            self._tracker.start_at(channel, since, epoch)
            frame.update(since=since, epoch=epoch)
        elif rewind is not None:
            frame["rewind"] = rewind
        try:
            await self._request(frame)
        except ConnectionLostError:
            pass  # offline now: made on (re)connect
        except BaseException as exc:
            self._forget_subscription(channel)
            if isinstance(exc, RequestTimeoutError) and (link := self._link) is not None:
                # The server may still subscribe: it is told not to (as triows.js does).
                with trio.move_on_after(self._publish_timeout):
                    await link.ws.send_message(
                        request_text({"type": "unsubscribe", "channel": channel})
                    )
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
            frame = request_text(
                {"type": "publish", "channel": channel, "data": data, "id": publish_id}
            )
        except (TypeError, ValueError) as exc:
            raise TypeError(f"publish data must be JSON-serialisable: {exc}") from None
        if len(self._publishes) >= self._offline_queue_size:
            raise OfflineQueueFullError(
                f"{self._offline_queue_size} publishes already wait for the server"
            )
        item = PendingPublish(channel, frame, publish_id)
        self._publishes.add(item)
        try:
            with trio.move_on_after(self._publish_timeout):
                await item.done.wait()
        finally:
            if not item.done.is_set() and self._publishes.withdraw(item):
                # Not sent on this connection: it will not be. (Sent on an earlier one, its
                # ack can no longer come; a replay of it names an earlier client id of ours.)
                self._tracker.forget_ack(item.id)
        if not item.done.is_set():
            raise PublishTimeoutError(f"no ack for publish {item.id} to {channel!r}")
        if item.error is not None:
            raise item.error
        assert item.seq is not None
        return item.seq

    async def wait_open(self) -> None:
        """Wait until connected; raises :class:`ClientClosedError` if the client closes first
        (a permanent rejection such as 401, or ``max_attempts`` reached)."""
        await self.state.wait_value(lambda v: v in (ClientState.OPEN, ClientState.CLOSED))
        self._check_open()

    async def aclose(self, *, wait: bool = True) -> None:
        """Close with 1000 and stop: waiting briefly for the server's close frame, or, without
        ``wait`` (the client is being cancelled: its reader is gone), only sending ours."""
        link = self._link
        if link is not None and self._closed_reason is None:
            self._saying_goodbye = True  # the connection must not end meanwhile
            with trio.move_on_after(CLOSE_TIMEOUT):
                await say_goodbye(link.ws, wait=wait)
        self._close("closed by the application")

    # -- bookkeeping ----------------------------------------------------------------------------

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

    def _adopt(self, channel: str) -> bool:
        """The server subscribed this client to ``channel`` (``Server.subscribe``): follow it
        as if the application had, and offer it on :meth:`server_subscriptions`."""
        if channel in self._subscriptions or self._closed_reason is not None:
            return False
        subscription = Subscription(self, channel, *self._subscription_buffer)
        self._subscriptions[channel] = subscription
        self._tracker.track(channel)
        self._offered.put(subscription)
        return True

    def _close(self, reason: str, error: type[ClientError] = ClientClosedError) -> None:
        """Stop for good; what is pending fails with ``error(reason)``."""
        if self._closed_reason is None:
            self._closed_reason = reason
            self._closed_error = error
            self.state.value = ClientState.CLOSED
            self._publishes.fail_all(lambda: error(reason))
            ended = None if reason == "closed by the application" else error(reason)
            for channel in list(self._subscriptions):
                self._forget_subscription(channel, ended)
        self._scope.cancel()

    async def _request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a subscribe/unsubscribe/presence and wait for its reply. Raises
        :class:`ConnectionLostError` when there is no connection or it ends first."""
        link = self._link
        if link is None:
            raise ConnectionLostError("not connected")
        request_id = f"r-{self._id_prefix}-{next(self._ids)}"
        waiter = self._requests.expect(request_id)
        try:
            await link.ws.send_message(request_text({**frame, "id": request_id}))
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
            self._requests.stop_waiting(request_id)
        reply = self._requests.take_reply(request_id)
        if reply is None:
            raise ConnectionLostError("connection lost before the server answered")
        if reply.get("type") == "error":
            raise RequestError(reply["code"], reply["message"])
        return reply

    # -- supervisor -----------------------------------------------------------------------------

    async def _supervise(self, task_status: trio.TaskStatus[None]) -> None:
        """Attempt after attempt, as :class:`~triows._core.retry.Attempts` rules (the rules
        triows.js follows too): stop for good, or wait and try again."""
        task_status.started()
        attempts = Attempts(
            base=self._backoff[0],
            cap=self._backoff[1],
            max_attempts=self._max_attempts,
            token_function=self._token_function,
            connect_timeout=self._connect_timeout,
            now=trio.current_time(),
        )
        last_failure = "no attempt finished"
        with self._scope:
            while True:
                # The first connection is bounded as a whole (attempts and waits): with no
                # server, a program says so after connect_timeout instead of waiting for ever.
                deadline = trio.current_time() + self._connect_timeout
                if not attempts.connected:
                    deadline = min(deadline, attempts.first_deadline)
                ending = await self._run_connection(deadline)
                if ending.closed:
                    return
                last_failure = ending.failure or last_failure
                verdict = attempts.ended(ending.core, trio.current_time())
                if verdict.stop is not None:
                    self._stop(verdict, ending, last_failure)
                    return
                self.state.value = ClientState.RECONNECTING
                await trio.sleep(verdict.wait)

    def _stop(self, verdict: Verdict, ending: AttemptEnding, last_failure: str) -> None:
        """Close for good, as ``verdict`` says, with the error the application will get."""
        self._close(*why_stopped(verdict, ending, last_failure, self.url, self._connect_timeout))

    def _closed_by_server(self, closed: CloseReason | None) -> None:
        """Keep the server's close (:attr:`close_code`, :attr:`close_reason`) when it is a
        disconnect (``is_disconnect``, the rule triows.js follows too)."""
        if closed is not None and is_disconnect(closed.code):
            self.close_code, self.close_reason = closed.code, closed.reason

    async def _run_connection(self, deadline: float) -> AttemptEnding:
        """One attempt, and the connection's life if it gets through: how it ended."""
        return await judge_attempt(
            functools.partial(self._connect_once, deadline),
            connects=lambda: self.connects,
            closing=lambda: self._closed_reason is not None,
            since_welcome=lambda: trio.current_time() - self._welcomed_at,
        )

    async def _connect_once(self, deadline: float) -> CloseReason | None:
        """Connect (by ``deadline``: the stream, the handshake and the welcome), then serve the
        connection until it ends: how the server closed it (None: it did not say)."""
        endpoint = self._endpoint
        with trio.fail_at(deadline):
            path = await endpoint.handshake_path()
        stream: trio.abc.Stream | None = None
        closed: CloseReason | None = None
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_at(deadline):
                    stream = await endpoint.open_stream()
                    ws = await open_client(
                        nursery, stream, host=endpoint.host, path=path, message_queue_size=64
                    )
                    try:
                        welcome = json.loads(await ws.get_message())
                    except ConnectionClosed as early:  # a revoke during the handshake, say
                        self._closed_by_server(early.reason)
                        raise
                # Made before it is open, it resubscribes the channels followed so far; a
                # subscribe() once it is open sends its own request.
                link = self._link = Link(
                    ws,
                    tracker=self._tracker,
                    subscriptions=self._subscriptions,
                    publishes=self._publishes,
                    requests=self._requests,
                    forget_subscription=self._forget_subscription,
                    adopt=self._adopt,
                    heartbeat=self.heartbeat,
                    ping_timeout=self._ping_timeout,
                    backoff=self._backoff,
                )
                self.client_id = welcome["data"]["clientId"]
                self.server_id = welcome["data"].get("serverId")
                self._tracker.add_client_id(self.client_id)
                self.connects += 1
                self._welcomed_at = trio.current_time()
                # Unacked publishes go first, in their order, with their ids: the server's
                # dedupe acks any it already has instead of delivering them twice.
                self._publishes.resend_unacked()
                self.state.value = ClientState.OPEN
                closed = await link.run(nursery)  # returns when the connection is closed
                self._closed_by_server(closed)
                if self._saying_goodbye:
                    # aclose() is finishing the closing handshake, which needs the
                    # library's reader task: keep the connection up until it is done.
                    await trio.sleep_forever()
                log.info("connection closed: %s", closed)
                nursery.cancel_scope.cancel()
            return closed
        finally:
            # Not open any more, before the connection is gone: a request made from now on
            # sees "offline", never an open state without a connection.
            if self.state.value is ClientState.OPEN:
                self.state.value = ClientState.RECONNECTING
            self._link = None
            self._requests.connection_lost()
            # A cancelled trio-websocket connection leaves its socket open: close it here.
            if stream is not None:
                await trio.aclose_forcefully(stream)
