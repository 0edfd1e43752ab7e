"""The server's answer to a WebSocket handshake: refuse it with a status, or accept it.

In order: shutting down (503), a path not served (404), an origin not allowed (403, logged with
the origin), the memory guard (503); then the connection's admission ticket moves to
"connection" (its address's limits, 503/429) before the first await; then authentication
(the ``authenticate`` hook or a JWT, bounded by the handshake's deadline) and the user's limit
(429) as soon as the user is known; shutdown once more (a hook that answered late); then the
101. A refusal gives its connection place back while it is written (the ticket closes). It is
an HTTP status, or, for a client that asks with ``refusal=close`` (a browser cannot read a
refused handshake's status), the 101 and at once a close frame whose code carries the status
(``triows._core.close_codes``: 4500-4999 "do not reconnect", 4000-4499 "reconnect allowed").
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections import Counter
from collections.abc import Callable

import trio

from .._config import Config, Rejected
from .._core.admission import Refused, Ticket
from .._core.auth import ANONYMOUS, AuthError, Principal
from .._core.close_codes import REFUSAL_BY_CLOSE, REFUSAL_PARAMETER, refusal_close_code
from .._core.handshake import HandshakeRequest
from .._core.memory_guard import MemoryGuard
from .._core.proxy import address_key
from .._net.streams import PendingHandshake
from .._net.websocket import WebSocket
from .access import Access
from .token_keys import KeysUnavailable

log = logging.getLogger("triows.server")

#: With ``--demo`` and no authentication, the query parameter ``name`` names a connection (its
#: ``info``, which presence shows), cut to this many characters.
DEMO_NAME_LENGTH = 40


class Handshakes:
    def __init__(
        self,
        config: Config,
        access: Access,
        memory_guard: MemoryGuard,
        closing: Callable[[], bool],
    ) -> None:
        self._config = config
        self._access = access
        self._memory_guard = memory_guard
        self._closing = closing
        #: Handshakes refused, by HTTP status.
        self.rejected: Counter[int] = Counter()

    async def accept(
        self, pending: PendingHandshake, greeting: Callable[[], bytes] | None = None
    ) -> tuple[WebSocket, Principal] | None:
        """The accepted socket and who is on it; None when refused (the refusal is sent).
        ``greeting`` makes the frames written with the 101, once the handshake is accepted."""
        info = pending.info
        config = self._config
        if self._closing():
            await self._reject(pending, 503, "server is shutting down")
            return None
        if config.path is not None and info.path != config.path:
            await self._reject(pending, 404, "no WebSocket endpoint at this path")
            return None
        origin = info.header("origin")
        if not config.origin_allowed(origin):
            await self._reject(pending, 403, "origin not allowed", detail=repr(origin))
            return None
        try:
            principal = await self.admit(info, pending.ticket, pending.deadline)
        except (Rejected, Refused) as refused:
            await self._reject(pending, refused.status, refused.reason)
            return None
        ws = await pending.accept(
            None if greeting is None else functools.partial(self._greeting, greeting, principal)
        )
        pending.ticket.opened()
        return ws, principal

    def _greeting(self, greeting: Callable[[], bytes], principal: Principal) -> bytes:
        """The frames written with the 101, unless the connection is to be closed at once (a
        shutdown begun, or its token revoked, since it was admitted): its goodbye comes
        without a welcome then."""
        if self._closing() or self._access.is_revoked(principal):
            return b""
        return greeting()

    async def admit(self, info: HandshakeRequest, ticket: Ticket, deadline: float) -> Principal:
        """The rules every transport's connection meets once its path and origin are right
        (a WebSocket handshake, an SSE stream): the memory guard, the connection's place
        (reserved before the first await), who it is, its user's place, and shutdown once
        more. Raises :class:`Rejected` or :class:`Refused` with the status to answer."""
        if self._memory_guard.over:
            raise Rejected(503, "memory limit reached")
        # Counted now, before the first await: concurrent handshakes cannot all pass.
        ticket.connection(address_key(info.ip))
        principal = await self._authenticate(info, deadline)
        if self._access.is_revoked(principal):
            raise Rejected(401, "token revoked")
        if principal.user_id is not None:
            ticket.user(principal.user_id)
        if self._closing():  # shutdown began while the hook was deciding
            raise Rejected(503, "server is shutting down")
        return principal

    def count_refusal(self, status: int) -> None:
        self.rejected[status] += 1

    async def _reject(
        self, pending: PendingHandshake, status: int, reason: str, *, detail: str = ""
    ) -> None:
        self.rejected[status] += 1
        pending.ticket.closing()  # a refusal being written holds no connection place
        log.info(
            "rejected handshake from %s: %d %s%s",
            pending.info.remote,
            status,
            reason,
            f" ({detail})" if detail else "",
        )
        if pending.info.query.get(REFUSAL_PARAMETER) == REFUSAL_BY_CLOSE:
            await pending.reject_by_close(refusal_close_code(status), reason)
        else:
            await pending.reject(status, reason)

    async def _authenticate(self, info: HandshakeRequest, deadline: float) -> Principal:
        config = self._config
        if config.authenticate is not None:
            try:
                result = config.authenticate(info)
                if inspect.isawaitable(result):
                    with trio.fail_at(deadline):
                        result = await result
            except Rejected:
                raise
            except trio.TooSlowError:
                raise Rejected(503, "authentication timed out") from None
            except Exception:
                log.exception("authenticate hook failed")
                raise Rejected(500, "authentication failed") from None
            if result is None:
                raise Rejected(401, "not authenticated")
            if not isinstance(result, Principal):
                log.error("authenticate hook returned %r, not a Principal", type(result))
                raise Rejected(500, "authentication failed")
            return self._access.vouched(result)
        if config.jwt_enabled:
            token = _bearer_token(info)
            if token is None:
                raise Rejected(401, "missing token")
            try:
                with trio.fail_at(deadline):
                    return await self._access.verify_token(token)
            except AuthError as exc:
                raise Rejected(401, str(exc)) from None
            except KeysUnavailable as exc:
                raise Rejected(503, str(exc)) from None
            except trio.TooSlowError:
                raise Rejected(503, "token keys unavailable (still fetching); try again") from None
        name = info.query.get("name") if config.demo else None
        if name:
            # The demo without authentication: a page names itself, for presence to show.
            return Principal(info={"name": name[:DEMO_NAME_LENGTH]})
        return ANONYMOUS


def _bearer_token(info: HandshakeRequest) -> str | None:
    header = info.header("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    query_token = info.query.get("token")
    return query_token or None
