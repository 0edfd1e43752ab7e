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
pending        accepted, request head not complete: at most ``max_pending`` in all and
               ``max_pending_per_ip`` per TCP peer. The peer is the only address known then;
               a trusted proxy carries many clients, so its streams count only in the total.
http           a plain HTTP request being read or answered (probes excepted, see
               ``triows._http``): ``max_http`` in all, ``max_http_per_ip`` per client address
connection     a WebSocket handshake in progress or an open connection: ``max_connections``
               in all, ``max_connections_per_ip`` per client address, and once the user is
               known ``max_connections_per_user``
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
        #: Refusals so far, by stage: ``pending``, ``http``, ``connection``, ``user``.
        self.refused: Counter[str] = Counter()

    def stream(self, peer: str, *, trusted: bool = False) -> Ticket:
        """A reservation for a stream just accepted from ``peer`` (its TCP address);
        ``trusted`` when that peer is a trusted proxy (counted in the total only)."""
        limits = self.limits
        if self.pending >= limits.max_pending:
            self.refused["pending"] += 1
            raise Refused(503, "too many connections waiting for their request")
        per_ip = limits.max_pending_per_ip
        if not trusted and per_ip and self._pending_by_ip[peer] >= per_ip:
            self.refused["pending"] += 1
            raise Refused(429, "too many connections from this address waiting for a request")
        self.pending += 1
        if not trusted:
            _take(self._pending_by_ip, peer)
        return Ticket(self, None if trusted else peer)

    def full(self) -> bool:
        """Whether a new connection would be refused by the global limit (``/ready``)."""
        return self.connections >= self.limits.max_connections

    def connections_from(self, address: str) -> int:
        return self._connections_by_ip[address]

    def connections_of(self, user: str) -> int:
        return self._connections_by_user[user]


class Ticket:
    """One stream's reservation. Moves refuse with :class:`Refused` and leave it unchanged."""

    __slots__ = ("_admission", "_ip", "_user", "stage")

    def __init__(self, admission: Admission, peer: str | None) -> None:
        self._admission = admission
        #: The address this ticket counts against (None: a trusted proxy's pending stream).
        self._ip = peer
        self._user: str | None = None
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
        self._leave_pending()
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
        self._leave_pending()
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

    def release(self) -> None:
        """Give everything back; safe to call more than once."""
        admission = self._admission
        stage = self.stage
        if stage is Stage.PENDING:
            self._leave_pending()
        elif stage is Stage.HTTP:
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
        self.stage = Stage.RELEASED

    def _leave_pending(self) -> None:
        admission = self._admission
        admission.pending -= 1
        if self._ip is not None:
            _give(admission._pending_by_ip, self._ip)

    def _expect(self, stage: Stage) -> None:
        if self.stage is not stage:
            raise RuntimeError(f"a {self.stage.value} ticket cannot do this")
