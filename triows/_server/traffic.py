"""WebSocket messages received and sent by every connection: counted where they happen."""

from __future__ import annotations


class Traffic:
    """Counted as they happen, so reading them costs nothing however many connections there
    are (a sum over connections would cost a walk over all of them per scrape)."""

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0
