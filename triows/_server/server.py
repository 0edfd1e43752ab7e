"""``serve()`` and the ``Server`` handle: the parts of a server, put together and run.

Task tree::

    serve()                       root nursery
    ├─ supervisor                 idle sweeper, monitor, expiry, presence, broker
    └─ connections nursery
       ├─ accept loop             inside its own cancel scope, so it can stop alone
       ├─ one task per stream     handshake (triows._server.handshakes), then Connection.run()
       └─ background tasks        the HTTP API's waits for ``block`` subscribers (spawn())

The server owns the parts and the registry of connections: admission
(``triows._core.admission``), access (tokens, hooks, rates), publishing, the broker and
presence (``triows._brokers``), the operations surface (``triows._ops``, which reads it as a
``ServerView``) and the connections (which know it as a ``ConnectionHost``).

``Server.aclose()`` stops the accept loop, asks every connection to drain and close with 1001
by one shared deadline (HTTP publishes still waiting for their number answer 202 "unknown"
before it), cancels whatever is left at that deadline, then stops the supervisor.
"""

from __future__ import annotations

import functools
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._brokers.factory import open_broker
from .._brokers.fanout import FanOut
from .._brokers.presence import Presence
from .._config import Config
from .._core.admission import Admission, Stage
from .._core.close_codes import REVOKED
from .._core.latency import histogram
from .._core.memory_guard import MemoryGuard
from .._core.outbox import OutboxTotals
from .._core.proxy import parse_networks
from .._net.listen import open_tcp_listeners
from .._net.streams import PendingHandshake, Serve, serve_streams
from .._ops.http import HttpEndpoints
from .._ops.monitor import Monitor
from .._ops.view import ChannelStatistics, ConnectionStatistics, ServerStatistics
from . import banner
from .access import Access
from .connection import GOING_AWAY, Connection
from .control import Control
from .flusher import Flusher
from .handshakes import Handshakes
from .host import ReadClock
from .kept_revocations import follow_kept, load_kept
from .public import PublicMethods
from .publishing import Publishing
from .sse import SseStream
from .sse_endpoint import SseEndpoint
from .supervisor import run_supervisor
from .traffic import Traffic

log = logging.getLogger("triows.server")


class Server(PublicMethods):
    """A running triows server; get one from ``await nursery.start(triows.serve, config)``."""

    #: What serves an accepted WebSocket. Internal: the conformance echo server
    #: (tests/conformance/echo_server.py) runs the same engine with a subclass.
    connection_class: type[Connection] = Connection

    def __init__(self, config: Config, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.wall_clock = wall_clock
        self.server_id = config.server_id or secrets.token_hex(4)
        self.fanout = FanOut.configured(config)
        self.memory_guard = MemoryGuard(config.memory_limit)
        self.admission = Admission(config.admission_limits())
        self.broker, presence_store = open_broker(config, self.fanout, self.now_ms)
        self.hub = self.broker.hub
        self.presence = Presence(config, self.hub, self.fanout, self.now_ms, presence_store)
        self.access = Access(config, lambda: self.wall_clock())
        self.publishing = Publishing(self.broker, self.fanout, config.max_message_size, self.now_ms)
        self.handshakes = Handshakes(config, self.access, self.memory_guard, lambda: self.closing)
        self.listeners: list[trio.abc.Listener[Any]] = []
        self._connections: dict[Connection | SseStream, None] = {}
        self._closing = False
        #: When shutdown cuts what is left (set by aclose()).
        self.shutdown_deadline: float | None = None
        self._accept_scope = trio.CancelScope()
        self._connections_nursery: trio.Nursery | None = None
        self._stopped = trio.Event()
        self._population_changed = trio.Event()
        self._started_at = trio.current_time()
        self.connections_total = 0
        #: Supervisor tasks that failed and were started again (triows._restart).
        self.task_failures = 0
        #: What every outbox holds and dropped, and the messages of every connection: kept
        #: as they change, so statistics cost O(1) at any number of connections.
        self.outbox_totals = OutboxTotals()
        self.traffic = Traffic()
        self.flusher = Flusher()
        self.read_clock = ReadClock()
        self._closed_by_server: Counter[int] = Counter()
        #: Plain HTTP requests answered, by status.
        self.http_requests: Counter[int] = Counter()
        self.ack_latency = histogram(config.metrics)
        self.trusted_proxies = parse_networks(config.trusted_proxies)
        self._by_user: dict[str, dict[Connection | SseStream, None]] = {}
        self.control = Control(
            self.broker,
            self.presence,
            self.access,
            by_user=lambda user: list(self._by_user.get(user, ())),
            by_client=self._by_client,
            wall_clock=lambda: self.wall_clock(),
            timeout=config.handshake_timeout / 2,
            max_message_size=config.max_message_size,
        )
        self.monitor = Monitor(self)
        self.http = HttpEndpoints(self, self.monitor)
        self.sse = SseEndpoint(self, self.http.serve)

    # -- public API -----------------------------------------------------------------------------

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            server_id=self.server_id,
            uptime=trio.current_time() - self._started_at,
            connections=len(self._connections),
            connections_total=self.connections_total,
            rejected=dict(self.handshakes.rejected),
            closed_by_server=dict(self._closed_by_server),
            channels=self.hub.channel_count,
            subscriptions=self.hub.subscription_count,
            published=self.broker.published,
            delivered=self.fanout.delivered,
            dropped=self.outbox_totals.dropped,
            slow_consumer_disconnects=self.fanout.slow_consumer_disconnects,
            queued_frames=self.outbox_totals.frames,
            queued_bytes=self.outbox_totals.bytes,
            publish_rate=self.monitor.publish_rate,
            delivery_rate=self.monitor.delivery_rate,
            history_messages=self.hub.history_messages,
            history_bytes=self.hub.history_bytes,
            dedupe_entries=self.broker.dedupe_entries,
            dedupe_principals=self.broker.dedupe_principals,
            deduplicated=self.broker.deduplicated,
            broker=self.broker.statistics(),
            rate_limited=dict(self.access.rate_limited),
            streams_refused=self.admission.refused["pending"] + self.admission.refused["evicted"],
            rss_bytes=self.memory_guard.rss,
            memory_limited=self.memory_guard.over,
            memory_limit_trips=self.memory_guard.trips,
            task_failures=self.task_failures,
            http_block_waits=self.http.api.blocked_waits,
        )

    def channel_statistics(self) -> tuple[ChannelStatistics, ...]:
        return tuple(ChannelStatistics.of(state) for state in self.hub.channels())

    def connection_statistics(self) -> tuple[ConnectionStatistics, ...]:
        now = trio.current_time()
        return tuple(conn.statistics(now) for conn in self._connections)

    def frame_totals(self) -> tuple[int, int]:
        """WebSocket messages received and sent, by every connection so far."""
        return self.traffic.received, self.traffic.sent

    def describe(self) -> str:
        """The line logged when the server starts listening."""
        return banner.describe(
            self.config, self.listeners, self.broker.statistics().kind, self.server_id
        )

    @property
    def closing(self) -> bool:
        """Whether shutdown has begun."""
        return self._closing

    def not_ready(self) -> list[str]:
        """Why a new client would be turned away now (``/ready``); empty when it would not."""
        reasons = []
        if self._closing:
            reasons.append("shutting down")
        if not self.broker.up.value:
            reasons.append(f"broker down: {self.broker.statistics().reason or 'unreachable'}")
        if self.memory_guard.over:
            reasons.append("memory limit reached")
        if self.admission.full():
            reasons.append("connection limit reached")
        return reasons

    @property
    def port(self) -> int:
        """The TCP port of the first listener (useful with ``port=0``)."""
        for listener in self.listeners:
            socket = getattr(listener, "socket", None)
            if socket is not None:
                return int(socket.getsockname()[1])
        raise RuntimeError("this server has no TCP listener")

    async def aclose(self) -> None:
        """Graceful shutdown: stop accepting, drain, close every client with 1001, bounded by
        ``shutdown_timeout``. Safe to call more than once and from any task."""
        if not self._closing:
            self._closing = True
            self._accept_scope.cancel()
            deadline = self.shutdown_deadline = trio.current_time() + self.config.shutdown_timeout
            log.info(
                "shutting down: closing %d connection(s), timeout %.1fs",
                len(self._connections),
                self.config.shutdown_timeout,
            )
            self.http.stopping(deadline)
            for index, conn in enumerate(list(self._connections)):
                conn.close(GOING_AWAY, "Server shutting down", drain=True, deadline=deadline)
                if index % 1000 == 999:
                    await trio.lowlevel.checkpoint()
            with trio.move_on_at(deadline):
                while self._connections or self.admission.handshakes:
                    self._population_changed = trio.Event()
                    await self._population_changed.wait()
                # HTTP requests too: a publish waiting for its number answers 202 "unknown"
                # before the deadline, rather than being cut off.
                await self.http.drained()
            if self._connections_nursery is not None:
                self._connections_nursery.cancel_scope.cancel()
        await self._stopped.wait()

    # -- running --------------------------------------------------------------------------------

    async def _run(
        self,
        listeners: list[trio.abc.Listener[Any]] | None,
        task_status: trio.TaskStatus[Server],
    ) -> None:
        config = self.config
        started = False
        try:
            if listeners is None:
                listeners = list(
                    await open_tcp_listeners(config.host, config.port, reuse_port=config.reuse_port)
                )
            async with trio.open_nursery() as root:
                await root.start(
                    functools.partial(
                        run_supervisor,
                        broker=self.broker,
                        monitor=self.monitor,
                        presence=self.presence,
                        hub=self.hub,
                        idle_timeout=config.idle_timeout,
                        connections=self.connections,
                        failed=self._task_failed,
                        token_keys=self.access.run,
                        flusher=self.flusher.run,
                    )
                )
                # Revocations kept in Redis: read before accepting, and at every link-up.
                up, wait = self.broker.up, config.handshake_timeout
                loaded = await load_kept(self.control, up, wait)
                root.start_soon(follow_kept, self.control, up, wait, loaded)
                try:
                    async with trio.open_nursery() as connections:
                        self._connections_nursery = connections
                        self.listeners = await connections.start(self._accept, listeners)
                        started = True
                        log.info("%s", self.describe())
                        banner.warn_about(config, self.listeners)
                        task_status.started(self)
                finally:
                    self._connections_nursery = None  # spawn() starts nothing more
                root.cancel_scope.cancel()
        finally:
            self._stopped.set()
            if started:  # a server that never listened did not stop either
                log.info("stopped")

    async def _accept(
        self,
        listeners: list[trio.abc.Listener[Any]],
        task_status: trio.TaskStatus[list[trio.abc.Listener[Any]]],
    ) -> None:
        assert self._connections_nursery is not None
        with self._accept_scope:
            await serve_streams(
                self._handshake,
                listeners,
                handler_nursery=self._connections_nursery,
                http_handler=self.sse.route,
                trusted_proxies=self.trusted_proxies,
                max_message_size=self.config.max_message_size,
                compression=self.config.compression,
                handshake_timeout=self.config.handshake_timeout,
                admission=self.admission,
                task_status=task_status,
            )

    async def _handshake(self, pending: PendingHandshake) -> Serve | None:
        """Answer a WebSocket handshake; the accepted connection's ``run``, which the stream's
        task then awaits (the connection leaves the registry at its end, once its goodbye is
        said: ``aclose()`` waits for that)."""
        client_id = secrets.token_urlsafe(9)
        # The welcome goes out with the 101, in one write.
        greeting = functools.partial(self.connection_class.welcome, self, client_id)
        try:
            opened = await self.handshakes.accept(pending, greeting)
            conn = None if opened is None else self._register(pending, *opened, client_id)
        finally:
            if pending.ticket.stage is Stage.HANDSHAKE:  # failed midway: it counts no more
                pending.ticket.closing()
            self._population_changed.set()
        if conn is None:
            return None
        log.debug("connected %r", conn)
        if self._closing:  # shutdown began while we were accepting it
            conn.close(GOING_AWAY, "Server shutting down", deadline=self.shutdown_deadline)
        elif self.access.is_revoked(conn.principal):
            # Revoked while its 101 was written (checked before that await, registered after
            # it): the revoke found no connection to close, so it is closed here.
            conn.close(REVOKED, "token revoked")
        return conn.run

    def _register(
        self, pending: PendingHandshake, ws: Any, principal: Any, client_id: str
    ) -> Connection:
        info = pending.info
        conn = self.connection_class(
            host=self,
            ws=ws,
            principal=principal,
            remote=info.remote,
            ip=info.ip,
            client_id=client_id,
            greeted=pending.greeted,
        )
        self.adopt(conn)
        return conn

    def adopt(self, conn: Connection | SseStream) -> None:
        self._connections[conn] = None
        if conn.principal.user_id is not None:
            self._by_user.setdefault(conn.principal.user_id, {})[conn] = None
        self.fanout.register(conn)
        self.connections_total += 1

    def population_changed(self) -> None:
        self._population_changed.set()

    def forget(self, conn: Connection | SseStream) -> None:
        """``conn`` has ended and said its goodbye: it leaves the registry (a connection
        calls this at the end of its ``run()``)."""
        del self._connections[conn]
        user = conn.principal.user_id
        if user is not None and (held := self._by_user.get(user)) is not None:
            held.pop(conn, None)
            if not held:
                del self._by_user[user]
        self.fanout.unregister(conn)
        if conn.principal.user_id is None:
            # An anonymous connection's publish ids cannot be sent again from another
            # connection: its dedupe window goes with it.
            self.broker.forget_publisher(conn.dedupe_key)
        self._population_changed.set()
        log.debug("disconnected %r: %s %s", conn, conn.close_code, conn.close_reason)

    # -- what connections and the operations surface use ----------------------------------------

    def now_ms(self) -> int:
        return int(self.wall_clock() * 1000)

    def loop_lag(self) -> float:
        return self.monitor.recent_lag(self.config.heartbeat_timeout)

    def _task_failed(self) -> None:
        self.task_failures += 1

    def count_close(self, code: int) -> None:
        self._closed_by_server[code] += 1

    def spawn(self, task: Callable[[], Awaitable[None]]) -> bool:
        """Run ``task`` in the connections nursery (False once that has ended); a drain
        still waits for it, bounded by ``shutdown_timeout``."""
        nursery = self._connections_nursery
        if nursery is None:
            return False
        nursery.start_soon(task)
        return True

    def connections(self) -> list[Connection | SseStream]:
        return list(self._connections)

    def _by_client(self, client_id: str) -> Connection | SseStream | None:
        conn = self.fanout.by_id(client_id)
        return conn if isinstance(conn, Connection | SseStream) else None


async def serve(
    config: Config | None = None,
    *,
    listeners: list[trio.abc.Listener[Any]] | None = None,
    wall_clock: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a triows server until cancelled or until ``Server.aclose()`` completes.

    Use with ``server = await nursery.start(triows.serve, config)``: it returns once the
    listeners accept connections. ``listeners`` replaces the TCP listeners built from
    ``config.host``/``config.port`` (``triows.testing.MemoryListener`` for tests);
    ``wall_clock`` supplies timestamps and token expiry checks.
    """
    server = Server(config or Config(), wall_clock=wall_clock)
    await server._run(listeners, task_status)
