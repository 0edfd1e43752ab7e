"""How a client paces what it sends and when it tries again: the rules both clients follow.

Written once here for ``triows.client`` and mirrored by triows.js (its ``Pacer`` and
``Attempts``); both pass the same vectors, ``tests/vectors/retry.json``, with the randomness
pinned. The rules in words are docs/delivery.md's ("How a client reconnects"). Sans-I/O: the
shell sleeps, sends and reads; these only say what to do next.

- :class:`Pacer`: requests that wait for an answer (resubscribes after a reconnect, publishes)
  go out at most ``window`` at a time, each answer letting the next one go. A "not now" (429:
  over a rate; 503 for a publish) sends the request again later, first among those waiting:
  the window drops to 1 and sending pauses for a full-jitter wait, drawn once per pause (not
  once per refusal: a burst of refusals is one pause), that grows with the pauses in a row;
  each answer shrinks that count again and doubles the window back.
- :class:`Attempts`: after each connection attempt, stop for good or wait and try again. A
  refusal no retry can fix (HTTP 400/401/403/404, or a close code in 4500-4999) stops the
  client, except that a 401 with a token *function* is tried once more with a fresh token; any
  other failure waits a full-jitter time that grows with the failed attempts in a row. A
  connection closed by the server with an error soon after its welcome is a failure too.
"""

from __future__ import annotations

import enum
import functools
import random
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import attrs

from .backoff import full_jitter
from .close_codes import DO_NOT_RECONNECT, PERMANENT_STATUSES, refusal_status

K = TypeVar("K", bound=Hashable)

#: Closes after a welcome that mean "the connection worked": a normal close, the server going
#: away, or the link lost (no close frame). Any other close from the server (1008 token
#: expired, 1011, 1013 slow consumer, 4000-4499, a protocol error) is a failed attempt unless
#: the connection lasted :data:`STABLE_AFTER` seconds, so that a server that closes right after
#: the welcome meets a growing backoff, not a loop, while a token that expires every hour is no
#: failure.
WORKED: frozenset[int | None] = frozenset({None, 1000, 1001, 1005, 1006})
#: Seconds after its welcome from which a connection worked, however it ends.
STABLE_AFTER = 10.0
#: 401s in a row, each with a fresh token from a token function, that stop the client.
UNAUTHORIZED_TO_STOP = 2


class Pacer(Generic[K]):
    """Requests (by key) waiting to go, in flight, and to go again (see the module doc)."""

    def __init__(
        self, window: int, base: float, cap: float, rand: Callable[[], float] = random.random
    ) -> None:
        if window < 1:
            raise ValueError("the window must be at least 1")
        self.size = self.window = window
        self._base, self._cap, self._rand = base, cap, rand
        #: Pauses in a row (each answer takes one off): the next pause's exponent.
        self.retries = 0
        self.paused = False
        self._again: deque[K] = deque()  # refused for now: first to go
        self._queue: deque[K] = deque()
        self._in_flight: dict[K, None] = {}  # in sending order

    def __len__(self) -> int:
        return len(self._again) + len(self._queue) + len(self._in_flight)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def add(self, key: K) -> None:
        self._queue.append(key)

    def discard(self, key: K) -> bool:
        """Take back a request not sent (or to be sent again); True if it was waiting."""
        for waiting in (self._again, self._queue):
            if key in waiting:
                waiting.remove(key)
                return True
        return False

    def take(self) -> list[K]:
        """What may go now, in order (now counted in flight); nothing while paused."""
        if self.paused:
            return []
        taken = []
        while len(self._in_flight) < self.window and (self._again or self._queue):
            key = (self._again or self._queue).popleft()
            self._in_flight[key] = None
            taken.append(key)
        return taken

    def answered(self, key: K) -> bool:
        """A final answer (done, or refused for good): True if ``key`` was in flight."""
        if key not in self._in_flight:
            return False
        del self._in_flight[key]
        self.retries = max(0, self.retries - 1)
        self.window = min(self.size, self.window * 2)
        return True

    def refused(self, key: K) -> float | None:
        """A "not now": ``key`` goes again, first, after a pause. The wait to sleep before
        :meth:`resume` when this refusal starts a pause; None when one is on (or ``key`` was
        not in flight)."""
        if key not in self._in_flight:
            return None
        del self._in_flight[key]
        self._again.append(key)
        self.window = 1
        if self.paused:
            return None
        self.paused = True
        delay = full_jitter(self.retries, self._base, self._cap, self._rand)
        self.retries += 1
        return delay

    def resume(self) -> None:
        """The pause is over: one request at a time until answers open the window again."""
        self.paused = False

    def restart(self) -> None:
        """A new connection: what was in flight goes first again, in its order; no pause."""
        self._again.extendleft(reversed(self._in_flight))
        self._in_flight.clear()
        self.window, self.retries, self.paused = self.size, 0, False


class Stop(enum.Enum):
    """Why a client stops for good."""

    #: A refusal no retry can fix (``status`` says which).
    REFUSED = "refused"
    #: ``max_attempts`` failed attempts in a row.
    GAVE_UP = "gave up"
    #: No first connection within ``connect_timeout`` (attempts and waits included).
    NO_CONNECTION = "no connection"


@attrs.frozen(kw_only=True)
class Ending:
    """How one connection attempt ended, as :class:`Attempts` needs it."""

    #: The server's ``welcome`` arrived: the connection was made.
    welcomed: bool = False
    #: The HTTP status of a handshake refused before the upgrade.
    status: int | None = None
    #: The code of the server's close frame (None: none, or the client closed).
    code: int | None = None
    #: A resubscribe was refused for now (500, 503): the client closed to try elsewhere/later.
    refused_for_now: bool = False
    #: Seconds from the welcome to the end (0 when not welcomed).
    lasted: float = 0.0


@attrs.frozen(kw_only=True)
class Verdict:
    """What to do after an attempt: stop (``stop`` says why), or wait ``wait`` seconds."""

    stop: Stop | None = None
    wait: float = 0.0
    #: Failed attempts in a row, this one included.
    failures: int = 0
    #: The HTTP status of the refusal (the one a close code carries, too), if any.
    status: int | None = None
    #: The code the server closed with, if any.
    code: int | None = None


class Attempts:
    """The reconnect rule: one verdict per ended attempt (see the module doc)."""

    def __init__(
        self,
        *,
        base: float,
        cap: float,
        max_attempts: int | None,
        token_function: bool,
        connect_timeout: float,
        now: float,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._base, self._cap, self._rand = base, cap, rand
        self._max_attempts = max_attempts
        self._token_function = token_function
        #: No first connection by then: stop.
        self.first_deadline = now + connect_timeout
        self.connected = False
        self.failures = 0
        self._unauthorized = 0

    def ended(self, ending: Ending, now: float) -> Verdict:
        status, code = ending.status, ending.code
        if status is None and code is not None and not ending.welcomed:
            status = refusal_status(code)  # a refusal as a close code: its HTTP status
        self._unauthorized = self._unauthorized + 1 if status == 401 else 0
        self.connected = self.connected or ending.welcomed
        refused = status in PERMANENT_STATUSES or code in DO_NOT_RECONNECT
        if status == 401 and self._token_function:
            # The function may have handed one stale token: it gets a second chance.
            refused = self._unauthorized >= UNAUTHORIZED_TO_STOP
        failed = (
            not ending.welcomed
            or ending.refused_for_now
            or (code not in WORKED and ending.lasted < STABLE_AFTER)
        )
        self.failures = self.failures + 1 if failed else 0
        verdict = functools.partial(Verdict, failures=self.failures, status=status, code=code)
        if refused:
            return verdict(stop=Stop.REFUSED)
        wait = full_jitter(max(0, self.failures - 1), self._base, self._cap, self._rand)
        if not self.connected:
            left = self.first_deadline - now
            if left <= 0:
                return verdict(stop=Stop.NO_CONNECTION)
            wait = min(wait, left)
        if self._max_attempts is not None and self.failures >= self._max_attempts:
            return verdict(stop=Stop.GAVE_UP)
        return verdict(wait=wait)
