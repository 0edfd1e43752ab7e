"""A channel's recent messages, kept so that a client that reconnects can get what it missed.

Bounded three ways: at most ``size`` messages, at most ``max_bytes`` bytes, none older than
``ttl`` seconds (the hub bounds all histories together as well). Sizes are those of the
messages' frames. An entry holds the message's ready frame (the very bytes live subscribers
got) when one was made; a message nobody received live is kept unframed, as the parts of its
frame (:data:`Unframed`), and framed only if it is ever replayed, by the same template as the
live delivery (:func:`~triows._core.envelopes.framed_message`): byte-identical, and no frame
made for a message nobody asks for again. ``now`` is the shell's monotonic clock.
"""

from __future__ import annotations

from collections import deque

from .envelopes import framed_message

#: A message kept without its frame: ``(data_json, sender_json, timestamp_ms)``; with the
#: channel's head and epoch (:func:`~triows._core.envelopes.message_head`) and its seq, the
#: arguments of :func:`~triows._core.envelopes.framed_message`.
Unframed = tuple[bytes, bytes, int]


class History:
    __slots__ = ("_entries", "enabled", "max_bytes", "nbytes", "size", "ttl")

    def __init__(self, size: int, ttl: float, max_bytes: int = 1 << 62) -> None:
        self.size = size
        self.ttl = ttl
        self.max_bytes = max_bytes
        #: Whether it keeps anything: a channel whose history is off costs one test per message.
        self.enabled = size > 0 and ttl > 0 and max_bytes > 0
        #: ``(seq, kept at, frame size, frame or its parts)``: a tuple per message, the frame
        #: shared with delivery.
        self._entries: deque[tuple[int, float, int, bytes | Unframed]] = deque()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, seq: int, now: float, frame: bytes | Unframed, size: int) -> int:
        """Keep a message, its frame or that frame's parts (``size``: the frame's length);
        returns how many older ones it pushed out (usually none)."""
        if not self.enabled:
            return 0
        entries = self._entries
        entries.append((seq, now, size, frame))
        self.nbytes += size
        if (
            len(entries) > self.size
            or self.nbytes > self.max_bytes
            or entries[0][1] + self.ttl <= now
        ):
            held = len(entries)
            if held == self.size + 1:  # a full history's steady state: its oldest goes
                self.nbytes -= entries.popleft()[2]
                if self.nbytes <= self.max_bytes and entries[0][1] > now - self.ttl:
                    return 1
            self.prune(now)
            return held - len(entries)
        return 0

    def prune(self, now: float) -> None:
        """Forget what is over the size or the byte cap, or older than the ttl."""
        entries = self._entries
        ttl = self.ttl
        # ``at + ttl <= now``, as expires_at() computes the deadline (``at <= now - ttl`` can
        # differ in floating point: a deadline due that pruned nothing was scheduled forever).
        while entries and (
            len(entries) > self.size or self.nbytes > self.max_bytes or entries[0][1] + ttl <= now
        ):
            self.drop_oldest()

    def drop_oldest(self) -> None:
        self.nbytes -= self._entries.popleft()[2]

    def first_seq(self) -> int | None:
        return self._entries[0][0] if self._entries else None

    def expires_at(self) -> float | None:
        """When the oldest entry outlives the ttl; None when empty."""
        return self._entries[0][1] + self.ttl if self._entries else None

    def after(self, seq: int, parts: tuple[bytes, bytes] | None = None) -> list[tuple[int, bytes]]:
        """``(seq, frame)`` of every held message with a sequence number above ``seq``, in
        order; a message kept unframed is framed now with ``parts``, the channel's head and
        epoch (what the broker framed its live messages with)."""
        found: list[tuple[int, bytes]] = []
        for number, _, _, kept in self._entries:
            if number > seq:
                if isinstance(kept, bytes):
                    found.append((number, kept))
                    continue
                assert parts is not None, "unframed messages are kept with their parts"
                data_json, sender, timestamp_ms = kept
                found.append(
                    (
                        number,
                        framed_message(parts[0], data_json, sender, timestamp_ms, number, parts[1]),
                    )
                )
        return found

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0


#: Most messages one ``history`` request may ask for (``limit``); more is error 400.
MAX_HISTORY_LIMIT = 1000
#: ``limit`` when a request gives none.
DEFAULT_HISTORY_LIMIT = 100


def held_frames(history: History) -> list[tuple[int, bytes]]:
    """``(seq, frame)`` of every message ``history`` holds, oldest first."""
    return history.after(0)


def page(
    held: list[tuple[int, bytes]],
    *,
    since: int | None,
    limit: int,
    reverse: bool,
    max_bytes: int,
) -> list[tuple[int, bytes]]:
    """One page of a channel's history: the rule of a ``history`` request, for both brokers.

    ``held`` is what history holds, oldest first (``(seq, payload)``). Forward: the messages
    after ``since`` (from the oldest held without it), oldest first. ``reverse``: the messages
    before ``since`` (from the newest without it), newest first. So the next page is always
    asked with ``since`` = the last message's seq. At most ``limit`` messages, and no more
    than ``max_bytes`` of payload (one message always; the client pages on).
    """
    if reverse:
        chosen = [entry for entry in reversed(held) if since is None or entry[0] < since]
    else:
        chosen = [entry for entry in held if since is None or entry[0] > since]
    result: list[tuple[int, bytes]] = []
    size = 0
    for seq, payload in chosen[:limit]:
        size += len(payload) + 1
        if result and size > max_bytes:
            break
        result.append((seq, payload))
    return result


def rewind_since(seq: int, rewind: int) -> int:
    """Where a ``subscribe`` with ``rewind`` starts: the ``since`` of a resume that replays
    the channel's last ``rewind`` messages (as many as history still holds)."""
    return max(0, seq - rewind)
