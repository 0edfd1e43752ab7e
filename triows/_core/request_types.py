"""The requests a client frame can make, as :func:`triows._core.protocol.parse_request`
hands them over: typed, every field checked (the protocol module re-exports them)."""

from __future__ import annotations

from typing import Any

import attrs

from .envelopes import RequestId
from .history import DEFAULT_HISTORY_LIMIT


@attrs.frozen(kw_only=True)
class Subscribe:
    channel: str
    id: RequestId | None = None
    since: int | None = None
    epoch: str | None = None
    #: Replay the channel's last ``rewind`` messages (as many as history holds) before live
    #: ones; ignored with ``since`` (a resume wins).
    rewind: int | None = None


@attrs.frozen(kw_only=True)
class Unsubscribe:
    channel: str
    id: RequestId | None = None


@attrs.frozen(kw_only=True)
class Publish:
    channel: str
    data: Any
    id: RequestId | None = None
    #: Deliver to the publisher too (a one-tab chat wants to see its own message).
    echo: bool = False


@attrs.frozen(kw_only=True)
class Ping:
    id: RequestId | None = None


@attrs.frozen(kw_only=True)
class Refresh:
    token: str
    id: RequestId | None = None


@attrs.frozen(kw_only=True)
class PresenceQuery:
    channel: str
    id: RequestId | None = None


@attrs.frozen(kw_only=True)
class HistoryQuery:
    """A page of a channel's history (the rule: :func:`triows._core.history.page`)."""

    channel: str
    limit: int = DEFAULT_HISTORY_LIMIT
    since: int | None = None
    reverse: bool = False
    id: RequestId | None = None


Request = Subscribe | Unsubscribe | Publish | Ping | Refresh | PresenceQuery | HistoryQuery
