"""Presence: which clients are subscribed to a channel, as plain data (no I/O here).

Presence is opt-in per channel pattern: ``full`` channels answer ``presence`` requests with
their members and send ``join`` / ``leave`` frames to their subscribers; ``counts`` channels
answer with the count only and send nothing (a channel of 100,000 subscribers would otherwise
send 100,000 frames for every arrival). A ``full`` channel over ``presence_max_members``
behaves as ``counts`` until it is back under the limit.

With Redis, members live in a hash per channel (``triows:p:<channel>``): field client id,
value ``<expiry ms> <node> <user id>``. Each node refreshes its own members' expiry, so a
crashed node's members stop counting once their expiry passes, and the first node to delete
an expired field (an atomic HDEL) announces its ``leave``, so exactly one does.

A node that only paused (a GC pause, SIGSTOP, a saturated loop) for longer than the ttl is
swept like a crashed one while its members are still connected. Its next refresh writes them
back with :data:`PUT_SCRIPT`, which announces ``join`` for every member that was not in the
hash: the writes and the announcements are one rule, so a member is announced each time it
(re)enters the hash and never twice in a row, whether a join or a refresh put it there.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from .names import first_match
from .numbers import ascii_int

#: Pub/sub channel every node with presence listens to for other nodes' joins and leaves.
EVENTS_CHANNEL: Final = "triows:presence"
_KEY_PREFIX: Final = "triows:p:"
#: The ``node`` of a leave announced by a sweep (a crashed node's member): every node,
#: the sweeping one included, tells its subscribers.
SWEEPER: Final = "-"

#: KEYS: the channel's hash. ARGV: client id, events channel, event. Publishes the event only
#: when this call removed the member: a leave is announced once, whoever notices it.
LEAVE_SCRIPT: Final = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""


#: KEYS: the channel's hash. ARGV: events channel, the hash's ttl in ms, then per member:
#: client id, entry (:func:`encode_entry`), its ``join`` event. Writes every member; publishes
#: the event of each that was not in the hash (a new member, or one swept while its node was
#: away). Returns how many were announced.
PUT_SCRIPT: Final = """
local announced = 0
for i = 3, #ARGV, 3 do
  if redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('PUBLISH', ARGV[1], ARGV[i + 2])
    announced = announced + 1
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return announced
"""


class PresenceMode(enum.StrEnum):
    FULL = "full"
    COUNTS = "counts"


@attrs.frozen
class Member:
    client_id: str
    user_id: str | None

    def as_json(self) -> dict[str, Any]:
        return {"clientId": self.client_id, "userId": self.user_id}


def mode_for(full: Sequence[str], counts: Sequence[str], channel: str) -> PresenceMode | None:
    """The first matching pattern decides; ``full`` patterns are tried first."""
    rules = [(p, PresenceMode.FULL) for p in full] + [(p, PresenceMode.COUNTS) for p in counts]
    return first_match(rules, channel, None)


def key(channel: str) -> str:
    return _KEY_PREFIX + channel


def encode_entry(expires_ms: int, node: str, user_id: str | None) -> str:
    return f"{expires_ms} {node} {user_id if user_id is not None else ''}"


def _decode_entry(value: bytes | str) -> tuple[int, str, str | None] | None:
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    parts = text.split(" ", 2)
    expires = ascii_int(parts[0]) if len(parts) == 3 else None
    if expires is None:
        return None
    return expires, parts[1], parts[2] or None


def live_members(entries: Mapping[Any, Any], now_ms: int) -> list[Member]:
    """The members of a presence hash whose expiry has not passed (malformed fields skipped)."""
    members = []
    for field, value in entries.items():
        decoded = _decode_entry(value)
        if decoded is not None and decoded[0] > now_ms:
            client = field.decode() if isinstance(field, bytes) else field
            members.append(Member(client, decoded[2]))
    return members


def expired(entries: Mapping[Any, Any], now_ms: int) -> list[Member]:
    """Members whose node stopped refreshing them (or garbage): to be removed, and announced."""
    gone = []
    for field, value in entries.items():
        decoded = _decode_entry(value)
        if decoded is None or decoded[0] <= now_ms:
            client = field.decode() if isinstance(field, bytes) else field
            gone.append(Member(client, decoded[2] if decoded else None))
    return gone


def frame(kind: str, channel: str, member: Member) -> dict[str, Any]:
    """A ``join`` or ``leave`` frame for subscribers."""
    return {"type": kind, "channel": channel, **member.as_json()}


def encode_event(kind: str, channel: str, member: Member, node: str) -> str:
    return json.dumps(
        {"k": kind, "c": channel, "i": member.client_id, "u": member.user_id, "n": node},
        separators=(",", ":"),
    )


def decode_event(data: bytes) -> tuple[str, str, Member, str]:
    """``(kind, channel, member, node)``; ValueError when it is not one of ours."""
    event = json.loads(data)
    kind, channel, client, user, node = (event[k] for k in ("k", "c", "i", "u", "n"))
    if kind not in ("join", "leave") or not all(
        isinstance(v, str) for v in (channel, client, node)
    ):
        raise ValueError(f"not a presence event: {data[:80]!r}")
    if user is not None and not isinstance(user, str):
        raise ValueError(f"not a presence event: {data[:80]!r}")
    return kind, channel, Member(client, user), node
