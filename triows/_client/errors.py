"""What an application of ``triows.client`` handles: the client's states and its errors.

Apart from the client so that every part (subscriptions, the connection, the supervisor)
can raise them without importing the client itself.
"""

from __future__ import annotations

import enum

import trio


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
    """No ack in time. The publish may still happen (it is resent with its id after a
    reconnect): exactly once for an authenticated user, whose dedupe window spans connections;
    at least once for an anonymous client, whose window is its connection."""


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


class UnsubscribedError(RequestError):
    """The server ended a subscription: the application's ``Server.unsubscribe`` (or
    ``/api/unsubscribe``), or a refreshed token that no longer allows the channel. ``reason``
    is the server's; ``code`` is 403 (not allowed any more)."""

    def __init__(self, reason: str) -> None:
        super().__init__(403, reason)
        self.reason = reason
