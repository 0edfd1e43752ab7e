"""Close codes of the server's own: what a client may do after them, and refusals as codes.

A browser's ``WebSocket`` never sees the HTTP status of a refused handshake: a 401 looks like
a network failure. A client that asks for it (the query parameter ``refusal=close``) gets its
refusal after the upgrade instead, as a close code, right away and before any ``welcome``.
The codes are in two ranges, the same for refusals and for any disconnect the server starts:

- 4000-4499, **reconnect allowed** (with backoff): the condition is expected to pass;
- 4500-4999, **do not reconnect**: no retry can fix it.

Refusals keep their HTTP status in the code: ``4500 + s - 400`` for the permanent ones (401 ->
4501), ``4400 + s - 400`` for a transient 4xx (429 -> 4429) and ``4450 + s - 500`` for a 5xx
(503 -> 4453). The table is docs/protocol.md's ("Refusals as close codes"); triows.js reads the
codes with the same rule, and tests/vectors/retry.json pins both.
"""

from __future__ import annotations

from typing import Final

#: RFC 6455 §7.4.1 codes the server sends or records.
GOING_AWAY: Final = 1001
POLICY: Final = 1008
TOO_BIG: Final = 1009
INTERNAL_ERROR: Final = 1011
#: What a connection that ended without a close frame counts as (RFC 6455 §7.1.5).
ABNORMAL: Final = 1006

#: The query parameter (and its value) by which a client asks for refusals as close codes.
REFUSAL_PARAMETER: Final = "refusal"
REFUSAL_BY_CLOSE: Final = "close"

#: Closes after which a client may connect again (with backoff).
RECONNECT_ALLOWED: Final = range(4000, 4500)
#: Closes after which a client must not connect again.
DO_NOT_RECONNECT: Final = range(4500, 5000)

#: Handshake refusals that no retry can fix: a malformed request, no valid token, a forbidden
#: origin or user, a path not served. Every other refusal (429, 5xx) is for now.
PERMANENT_STATUSES: Final = frozenset({400, 401, 403, 404})


def refusal_close_code(status: int) -> int:
    """The close code that carries a handshake refusal with HTTP ``status`` (400-549)."""
    if not 400 <= status < 550:
        raise ValueError(f"not a refusal status: {status}")
    if status in PERMANENT_STATUSES:
        return 4500 + status - 400
    if status < 450:
        return 4400 + status - 400
    if status < 500:
        raise ValueError(f"no close code for HTTP {status}")
    return 4450 + status - 500


def refusal_status(code: int) -> int | None:
    """The HTTP status a refusal close code carries; None for other codes."""
    if code in range(4500, 4550):
        status = 400 + code - 4500
        return status if status in PERMANENT_STATUSES else None
    if code in range(4400, 4450):
        status = 400 + code - 4400
        return None if status in PERMANENT_STATUSES else status
    if code in range(4450, 4500):
        return 500 + code - 4450
    return None


#: A disconnect the application asked for (``Server.disconnect``, ``/api/disconnect``), by
#: default "do not reconnect": a user logged out or banned. ``FORCE_RECONNECT`` asks the client
#: to connect again (its token or role changed).
DISCONNECTED: Final = 4600
FORCE_RECONNECT: Final = 4000
#: The user's token was revoked (``Server.revoke``, ``/api/revoke``).
REVOKED: Final = 4601
#: Codes that carry a refusal's HTTP status (:func:`refusal_status`): not for disconnects,
#: which a client would read as a refusal.
_REFUSAL_CODES: Final = range(4400, 4550)


def is_disconnect(code: int | None) -> bool:
    """Whether a close with ``code`` is the server disconnecting the client (a code of
    4000-4999 that carries no refusal): both clients report it (the code, the reason, whether
    they connect again: :data:`RECONNECT_ALLOWED`), before the welcome as after it.
    tests/vectors/retry.json ("disconnects") pins it for triows.js too."""
    return code is not None and code in range(4000, 5000) and code not in _REFUSAL_CODES


def check_disconnect_code(code: int) -> int:
    """``code`` when an application may close a connection with it: 4000-4999 but the
    refusal codes (4400-4549). ValueError otherwise, naming what is allowed."""
    if (
        isinstance(code, bool)
        or not isinstance(code, int)
        or code not in range(4000, 5000)
        or code in _REFUSAL_CODES
    ):
        raise ValueError(
            "code must be an integer in 4000-4399 (reconnect allowed) or 4550-4999 (do not "
            "reconnect); 4400-4549 carry handshake refusals"
        )
    return code
