"""What the pub/sub listener thread hands to trio: messages, confirmations, a lost link.

Written once here for both ways of listening (one Redis: one connection; a cluster: a
connection per shard, :mod:`.shards`), so the broker dispatches the same events whatever it
talks to.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Message:
    channel: str
    data: bytes


@attrs.frozen
class Confirmed:
    """Redis confirmed a subscription: everything published later arrives here. Confirmed
    again (a reconnect, a channel moved to another shard) means some may have been lost."""

    channel: str


@attrs.frozen
class LinkDown:
    reason: str


Event = Message | Confirmed | LinkDown
