"""The errors of the HTTP API client, each with the server's reason.

``RequestError``: the server refused the request (4xx: a bad channel name, a wrong key);
retrying does not help. ``UnavailableError``: no answer, or the server could not serve it now
(5xx, 429), after every retry. ``UnknownOutcomeError``: a publish (or broadcast) that may or
may not have gone out; retry later with its ``idempotency_key`` to learn which, without ever
publishing twice.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """The API did not do what was asked. ``status`` is the last HTTP status (``None`` when
    no answer came), ``reason`` the server's ``error`` text, ``body`` its whole JSON reply."""

    def __init__(self, status: int | None, reason: str, body: dict[str, Any] | None = None):
        super().__init__(f"{status or 'no answer'}: {reason}")
        self.status = status
        self.reason = reason
        self.body = body or {}


class RequestError(ApiError):
    """4xx: the request is wrong (bad input 400, API key 401, API off 404, too large 413)."""


class UnavailableError(ApiError):
    """No answer, or 5xx / 429, still after the retries; nothing known to be done."""


class UnknownOutcomeError(UnavailableError):
    """A publish or broadcast that may have gone out (202 "unknown", or no answer). Retry
    with ``idempotency_key``: the server then answers the first one's ``seq``, or publishes
    it once. For a broadcast, ``body`` says which channels were published (``results``),
    which may be (``unknown``) and which were not (``not_published``)."""

    def __init__(
        self,
        status: int | None,
        reason: str,
        body: dict[str, Any] | None = None,
        *,
        idempotency_key: str,
    ):
        super().__init__(status, reason, body)
        self.idempotency_key = idempotency_key
