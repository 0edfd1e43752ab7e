"""Admission: every limit on what clients may hold of the server, kept as reservations.

A limit that is checked before an ``await`` and counted after it is no limit: a hundred
handshakes that arrive together all pass the check, then all count. Here nothing is checked
without being counted in the same synchronous step. A stream is given a :class:`Ticket` the
moment it is accepted, before its first byte is read; the ticket then *moves* (plain HTTP
request, WebSocket handshake, authenticated user) and every move checks and counts at once,
or refuses and leaves the ticket where it was. Whatever happens next, the shell releases the
ticket exactly once, when the stream's task ends.

What is counted, and where a ticket stands:

=============  ===============================================================================
pending        accepted, request head not complete (or answered and closing): at most
               ``max_pending`` in all (when all are taken, the oldest is evicted to make room)
               and ``max_pending_per_ip`` per TCP peer. The peer is the only address known
               then; a trusted proxy carries many clients, so its streams count only in the
               total.
http           a plain HTTP request being read or answered (probes excepted, see
               ``triows._ops.http``): ``max_http`` in all, ``max_http_per_ip`` per client address
connection     a WebSocket handshake in progress or an open connection: ``max_connections``
               in all, ``max_connections_per_ip`` per client address, and once the user is
               known ``max_connections_per_user``
closing        answered or refused, only the close left: back among the pending (a refusal
               being written must not hold a connection place)
=============  ===============================================================================

A move takes the new place before it gives up the old one, in one step: there is no moment
in which a stream counts twice or not at all. The client address is the TCP peer's until a
trusted proxy names another (``triows._core.proxy``), which the shell learns from the head.
A limit of 0 means none (the per-address and per-user ones).

No I/O and no clock: refusals are :class:`Refused` exceptions carrying the HTTP status the
shell answers with (503 when the server is full, 429 when one address or user is).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable

import attrs


@attrs.frozen(kw_only=True)
class Limits:
    max_pending: int
    max_pending_per_ip: int = 0
    max_http: int
    max_http_per_ip: int = 0
    max_connections: int
    max_connections_per_ip: int = 0
    max_connections_per_user: int = 0


class Refused(Exception):
    """A reservation the limits do not allow, with the HTTP status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


class Stage(enum.Enum):
    PENDING = "pending"
    HTTP = "http"
    HANDSHAKE = "handshake"
    OPEN = "open"
    #: Answered (or being refused); only the close is left. Counts as pending.
    CLOSING = "closing"
    RELEASED = "released"


def _take(counter: Counter[str], key: str) -> None:
    counter[key] += 1


def _give(counter: Counter[str], key: str) -> None:
    left = counter[key] - 1
    if left > 0:
        counter[key] = left
    else:
        del counter[key]


class Admission:
    """The counters, and the only code that changes them (through :class:`Ticket`)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        #: Streams waiting for their request head, or answered and closing.
        self.pending = 0
        self.http = 0
        #: Handshakes in progress and open connections together (what ``max_connections``
        #: bounds); ``handshakes`` is the part still handshaking.
        self.connections = 0
        self.handshakes = 0
        self._pending_by_ip: Counter[str] = Counter()
        self._http_by_ip: Counter[str] = Counter()
        self._connections_by_ip: Counter[str] = Counter()
        self._connections_by_user: Counter[str] = Counter()
        #: Pending and closing tickets, oldest first: who makes room when all places are
        #: taken (an idle socket from a crowd of addresses must not lock everyone out).
        self._waiting: dict[Ticket, None] = {}
        #: Refusals so far, by stage: ``pending``, ``http``, ``connection``, ``user``; and
        #: ``evicted``: pending streams closed to make room for a newer one.
        self.refused: Counter[str] = Counter()

    def stream(self, peer: str, *, trusted: bool = False) -> Ticket:
        """A reservation for a stream just accepted from ``peer`` (its TCP address, as an
        address key: see ``triows._core.proxy.address_key``); ``trusted`` when that peer is a
        trusted proxy (counted in the total only).

        All places taken: the oldest waiting stream is evicted (its ``on_evict`` called) to
        make room, since a request head takes milliseconds to arrive and the oldest is the
        likeliest to be a socket that will never send one. One address over its own share is
        refused instead (429).
        """
        limits = self.limits
        per_ip = limits.max_pending_per_ip
        if not trusted and per_ip and self._pending_by_ip[peer] >= per_ip:
            self.refused["pending"] += 1
            raise Refused(429, "too many connections from this address waiting for a request")
        if self.pending >= limits.max_pending and not self._evict_oldest():
            self.refused["pending"] += 1
            raise Refused(503, "too many connections waiting for their request")
        ticket = Ticket(self, None if trusted else peer)
        self._join_pending(ticket)
        return ticket

    def full(self) -> bool:
        """Whether a new connection would be refused by the global limit (``/ready``)."""
        return self.connections >= self.limits.max_connections

    def connections_from(self, address: str) -> int:
        return self._connections_by_ip[address]

    def connections_of(self, user: str) -> int:
        return self._connections_by_user[user]

    def _join_pending(self, ticket: Ticket) -> None:
        self.pending += 1
        if ticket._peer is not None:
            _take(self._pending_by_ip, ticket._peer)
        self._waiting[ticket] = None

    def _leave_pending(self, ticket: Ticket) -> None:
        self.pending -= 1
        if ticket._peer is not None:
            _give(self._pending_by_ip, ticket._peer)
        del self._waiting[ticket]

    def _evict_oldest(self) -> bool:
        for ticket in self._waiting:
            evict = ticket.on_evict
            ticket.release()
            self.refused["evicted"] += 1
            if evict is not None:
                evict()
            return True
        return False


class Ticket:
    """One stream's reservation. Moves refuse with :class:`Refused` and leave it unchanged.

    ``on_evict`` is what the shell does when the admission evicts this ticket's stream to
    make room (cancel its task); the ticket is released by then.
    """

    __slots__ = ("_admission", "_ip", "_peer", "_user", "on_evict", "stage")

    def __init__(self, admission: Admission, peer: str | None) -> None:
        self._admission = admission
        #: The TCP peer's address key its pending count is kept under (None: a trusted proxy).
        self._peer = peer
        #: The client's address key its HTTP request or connection is counted under.
        self._ip: str | None = None
        self._user: str | None = None
        self.on_evict: Callable[[], None] | None = None
        self.stage = Stage.PENDING

    def http(self, address: str) -> None:
        """The stream carries a plain HTTP request from the client at ``address``."""
        self._expect(Stage.PENDING)
        admission = self._admission
        limits = admission.limits
        if admission.http >= limits.max_http:
            admission.refused["http"] += 1
            raise Refused(503, f"more than {limits.max_http} HTTP requests at once")
        per_ip = limits.max_http_per_ip
        if per_ip and admission._http_by_ip[address] >= per_ip:
            admission.refused["http"] += 1
            raise Refused(429, "too many HTTP requests at once from this address")
        admission.http += 1
        _take(admission._http_by_ip, address)
        admission._leave_pending(self)
        self._ip, self.stage = address, Stage.HTTP

    def connection(self, address: str) -> None:
        """The stream asks for a WebSocket from the client at ``address``."""
        self._expect(Stage.PENDING)
        admission = self._admission
        limits = admission.limits
        if admission.connections >= limits.max_connections:
            admission.refused["connection"] += 1
            raise Refused(503, "connection limit reached")
        per_ip = limits.max_connections_per_ip
        if per_ip and admission._connections_by_ip[address] >= per_ip:
            admission.refused["connection"] += 1
            raise Refused(429, "too many connections from this address")
        admission.connections += 1
        admission.handshakes += 1
        _take(admission._connections_by_ip, address)
        admission._leave_pending(self)
        self._ip, self.stage = address, Stage.HANDSHAKE

    def user(self, user_id: str) -> None:
        """The handshake authenticated ``user_id``: counted against its user's limit too."""
        self._expect(Stage.HANDSHAKE)
        if self._user is not None:
            raise RuntimeError("this ticket has a user already")
        admission = self._admission
        per_user = admission.limits.max_connections_per_user
        if per_user and admission._connections_by_user[user_id] >= per_user:
            admission.refused["user"] += 1
            raise Refused(429, "too many connections for this user")
        _take(admission._connections_by_user, user_id)
        self._user = user_id

    def opened(self) -> None:
        """The handshake is done: an open connection now (it counts the same)."""
        self._expect(Stage.HANDSHAKE)
        self._admission.handshakes -= 1
        self.stage = Stage.OPEN
        self.on_evict = None  # never: an open connection is not waiting

    def closing(self) -> None:
        """The stream is answered (a refusal, an HTTP response): only its close is left, so
        it gives its request or connection place back at once and counts as pending until
        released (an answer written slowly, a lingering close). Over the pending bound the
        oldest waiting stream makes room, as for a new one."""
        if self.stage in (Stage.PENDING, Stage.CLOSING, Stage.RELEASED):
            return
        admission = self._admission
        self._give_stage()
        if admission.pending >= admission.limits.max_pending:
            admission._evict_oldest()
        admission._join_pending(self)
        self.stage = Stage.CLOSING

    def release(self) -> None:
        """Give everything back; safe to call more than once."""
        if self.stage is Stage.PENDING or self.stage is Stage.CLOSING:
            self._admission._leave_pending(self)
        else:
            self._give_stage()
        self.stage = Stage.RELEASED

    def _give_stage(self) -> None:
        admission = self._admission
        stage = self.stage
        if stage is Stage.HTTP:
            admission.http -= 1
            assert self._ip is not None
            _give(admission._http_by_ip, self._ip)
        elif stage is Stage.HANDSHAKE or stage is Stage.OPEN:
            if stage is Stage.HANDSHAKE:
                admission.handshakes -= 1
            admission.connections -= 1
            assert self._ip is not None
            _give(admission._connections_by_ip, self._ip)
            if self._user is not None:
                _give(admission._connections_by_user, self._user)
                self._user = None

    def _expect(self, stage: Stage) -> None:
        if self.stage is not stage:
            raise RuntimeError(f"a {self.stage.value} ticket cannot do this")
