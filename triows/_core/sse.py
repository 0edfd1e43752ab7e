"""Server-Sent Events, sans-I/O: the event stream's format and the ids that resume it.

An SSE stream follows the channels named in its URL, in that order (duplicates removed). Every
event carries an ``id`` that holds the stream's position in *every* one of them, so that the
``Last-Event-ID`` a reconnecting ``EventSource`` sends back says where each channel resumes.

The id, version 1::

    1:<fingerprint>:<epoch table>:<positions>

- ``fingerprint``: CRC-32 of the channel list (names joined by ``\\n``), base 36. An id only
  means something for the list it was made for.
- ``epoch table``: the distinct epochs of the positions, joined by ``~`` (epochs are
  ``[0-9A-Za-z._-]``, at most :data:`MAX_EPOCH_LENGTH` characters). An epoch that shares the
  one before it up to its last ``.`` (one node's epochs are ``<node>.<n>``) is written
  ``*<rest>``.
- ``positions``: one per channel, in the stream's order, joined by ``,``: empty when nothing is
  known of that channel yet, else ``<epoch index>.<seq>``, both base 36.

Example, two channels: ``1:1x0k8qp:a41c09de.1~*2:0.2s,1.0``. It is bounded by the
number of channels a stream may follow (the server's ``max_subscriptions``): at most about 90
characters a channel, usually about 15. A ``Last-Event-ID`` that does not parse, is longer than
:data:`MAX_ID_LENGTH`, or was made for another channel list raises :class:`LastEventIdError`:
the server answers 400 with the reason, and resumes nothing by guesswork.

What a position means, and what a stream resumed from it gets, is the WebSocket ``subscribe``
with ``since``/``epoch`` (``triows._core.hub``) followed by a triows client's own delivery
contract (``triows._core.tracking``): the stream delivers what that client would.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Final

#: The id format's version, its first field.
ID_VERSION: Final = "1"
#: Longest ``Last-Event-ID`` read (characters); longer is an error, never parsed.
MAX_ID_LENGTH: Final = 16 * 1024
MAX_EPOCH_LENGTH: Final = 64
#: Largest sequence number an id may hold (a signed 64-bit integer, as Redis keeps them).
MAX_SEQ: Final = (1 << 63) - 1

_EPOCH: Final = re.compile(rf"[0-9A-Za-z._-]{{1,{MAX_EPOCH_LENGTH}}}\Z")
_BASE36: Final = re.compile(r"[0-9a-z]{1,13}\Z")
_DIGITS: Final = "0123456789abcdefghijklmnopqrstuvwxyz"

#: A channel's position: ``(epoch, seq)``, or None when nothing is known of it yet.
Position = tuple[str, int] | None


class LastEventIdError(ValueError):
    """A ``Last-Event-ID`` this server cannot resume from; the message says why."""


def base36(number: int) -> str:
    if number < 0:
        raise ValueError("negative")
    digits = []
    while True:
        number, digit = divmod(number, 36)
        digits.append(_DIGITS[digit])
        if not number:
            return "".join(reversed(digits))


def _number(text: str, what: str) -> int:
    # int(text, 36) alone would take "+1", " 1" and "1_0": only plain digits are an id's.
    if not _BASE36.match(text):
        raise LastEventIdError(f"{what} {text[:20]!r} is not a base-36 number")
    return int(text, 36)


def fingerprint(channels: Sequence[str]) -> str:
    return base36(zlib.crc32("\n".join(channels).encode()))


def epoch_allowed(epoch: str) -> bool:
    """Whether an epoch can be written in an id (every epoch a triows broker makes can)."""
    return bool(_EPOCH.match(epoch))


def encode_id(channels: Sequence[str], positions: Sequence[Position]) -> str:
    """The id of a stream following ``channels`` that stands at ``positions``."""
    return IdWriter(channels, positions).text()


class IdWriter:
    """A stream's id as its positions move, rewritten in part: a message moves one channel's
    seq (its entry alone is written again); a new epoch rebuilds the epoch table."""

    __slots__ = ("_entries", "_head", "_index", "_positions", "_table", "_text")

    def __init__(self, channels: Sequence[str], positions: Sequence[Position]) -> None:
        self._head = f"{ID_VERSION}:{fingerprint(channels)}:"
        self._index = {channel: n for n, channel in enumerate(channels)}
        self._positions = list(positions)
        self._table: dict[str, int] = {}
        self._entries: list[str] = []
        self._text: str | None = None
        self._rebuild()

    def move(self, channel: str, position: Position) -> None:
        n = self._index.get(channel)
        if n is None or self._positions[n] == position:
            return
        before = self._positions[n]
        self._positions[n] = position
        self._text = None
        if position is not None and before is not None and before[0] == position[0]:
            index = self._table.get(position[0])
            if index is not None:  # the same epoch: only this entry changes
                self._entries[n] = f"{base36(index)}.{base36(position[1])}"
                return
        self._rebuild()

    def text(self) -> str:
        if self._text is None:
            self._text = f"{self._head}{_write_table(list(self._table))}:{','.join(self._entries)}"
        return self._text

    def _rebuild(self) -> None:
        table: dict[str, int] = {}
        entries = []
        for position in self._positions:
            if position is None or not epoch_allowed(position[0]):
                entries.append("")
                continue
            epoch, seq = position
            index = table.setdefault(epoch, len(table))
            entries.append(f"{base36(index)}.{base36(seq)}")
        self._table, self._entries, self._text = table, entries, None


def _write_table(epochs: Sequence[str]) -> str:
    """Epochs joined by ``~``; one that shares the one before it up to its last ``.`` (a
    node's epochs: ``<node>.<n>``) is written ``*<rest>``."""
    written = []
    previous = ""
    for epoch in epochs:
        prefix = previous[: previous.rfind(".") + 1]
        if prefix and epoch.startswith(prefix) and "." not in epoch[len(prefix) :]:
            written.append("*" + epoch[len(prefix) :])
        else:
            written.append(epoch)
        previous = epoch
    return "~".join(written)


def _read_table(text: str) -> list[str]:
    epochs: list[str] = []
    for entry in text.split("~") if text else []:
        if entry.startswith("*"):
            previous = epochs[-1] if epochs else ""
            prefix = previous[: previous.rfind(".") + 1]
            if not prefix:
                raise LastEventIdError("an abbreviated epoch without one before it")
            entry = prefix + entry[1:]
        if not epoch_allowed(entry):
            raise LastEventIdError(f"bad epoch {entry[:20]!r}")
        epochs.append(entry)
    return epochs


def decode_id(text: str, channels: Sequence[str]) -> list[Position]:
    """The positions a ``Last-Event-ID`` holds for ``channels``; :class:`LastEventIdError`
    when it is not an id of this server's for that channel list."""
    if len(text) > MAX_ID_LENGTH:
        raise LastEventIdError(f"longer than {MAX_ID_LENGTH} characters")
    fields = text.split(":")
    if len(fields) != 4:
        raise LastEventIdError("not a triows event id (4 fields separated by ':')")
    version, mark, table_text, entries_text = fields
    if version != ID_VERSION:
        raise LastEventIdError(f"unknown id version {version[:10]!r}")
    if mark != fingerprint(channels):
        raise LastEventIdError("made for another list of channels")
    table = _read_table(table_text)
    entries = entries_text.split(",")
    if len(entries) != len(channels):
        raise LastEventIdError(f"{len(entries)} positions for {len(channels)} channel(s)")
    positions: list[Position] = []
    for entry in entries:
        if not entry:
            positions.append(None)
            continue
        index_text, dot, seq_text = entry.partition(".")
        if not dot:
            raise LastEventIdError(f"bad position {entry[:20]!r}")
        index = _number(index_text, "epoch index")
        seq = _number(seq_text, "seq")
        if index >= len(table):
            raise LastEventIdError(f"epoch index {index} beyond the {len(table)} epoch(s)")
        if seq > MAX_SEQ:
            raise LastEventIdError("seq out of range")
        positions.append((table[index], seq))
    return positions


def channels_of(values: Sequence[str]) -> list[str]:
    """The stream's channel list: the URL's ``channel`` values in order, each once."""
    return list(dict.fromkeys(values))


# -- the event stream format (WHATWG HTML, "Server-sent events") ---------------------------------


def event(data: bytes, *, name: str | None = None, event_id: str | None = None) -> bytes:
    """One event: ``event:``, ``id:`` and ``data:`` lines, then a blank line.

    ``data`` is compact JSON, which holds no line break; were there one, each line becomes a
    ``data:`` line of its own, which a client joins back with ``\\n``.
    """
    parts = []
    if name is not None:
        parts.append(b"event: " + name.encode("ascii") + b"\n")
    if event_id is not None:
        parts.append(b"id: " + event_id.encode("ascii") + b"\n")
    if b"\n" in data or b"\r" in data:
        for line in data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
            parts.append(b"data: " + line + b"\n")
        parts.append(b"\n")
    else:
        parts += (b"data: ", data, b"\n\n")
    return b"".join(parts)


def message_event(frame: bytes, start: int, event_id: str | None) -> bytes:
    """A ``message`` event of the JSON payload at ``frame[start:]``, copied once (the server
    encodes every payload it frames as compact JSON: no line break)."""
    view = memoryview(frame)[start:]
    if event_id is None:
        return b"".join((b"data: ", view, b"\n\n"))
    return b"".join((b"id: ", event_id.encode("ascii"), b"\ndata: ", view, b"\n\n"))


def comment(text: str = "") -> bytes:
    """A comment line (a keep-alive): clients ignore it, proxies see bytes flow."""
    return b": " + text.encode("ascii") + b"\n\n" if text else b":\n\n"


def retry_field(milliseconds: int) -> bytes:
    """How long a client waits before it reconnects (one line, then a blank one)."""
    return b"retry: " + str(milliseconds).encode("ascii") + b"\n\n"


def retry_with_jitter(base_seconds: float, random01: float) -> int:
    """A stream's ``retry`` hint in milliseconds: uniformly within ±50% of the base, so that
    the browsers a deploy disconnects together do not all come back at the same instant."""
    return max(1, round(base_seconds * 1000 * (0.5 + random01)))


# -- reading what fan-out hands a subscriber -----------------------------------------------------

_TYPE: Final = b'{"type":"'
_MESSAGE: Final = b'{"type":"message","channel":"'
_ID: Final = b',"id":"'


def payload_start(frame: bytes) -> int:
    """Where the payload of an unmasked, unfragmented WebSocket text frame (what the server
    frames once per broadcast, ``triows._core.frames``) begins; -1 for any other frame."""
    if len(frame) < 2 or frame[0] != 0x81:
        return -1
    length = frame[1] & 0x7F
    return 2 if length < 126 else 4 if length == 126 else 10


def frame_type(payload: bytes, start: int = 0) -> str | None:
    """The ``type`` of a frame the server encoded (it always comes first)."""
    if not payload.startswith(_TYPE, start):
        return None
    begin = start + len(_TYPE)
    end = payload.find(b'"', begin)
    return payload[begin:end].decode("ascii", "replace") if end > 0 else None


def message_fields(payload: bytes, start: int = 0) -> tuple[str, str, int] | None:
    """``(channel, message id, seq)`` of a ``message`` payload (``protocol.message_payload``)
    without decoding it: its channel comes first, its ``id`` is the envelope's last field
    (after ``data``)."""
    if not payload.startswith(_MESSAGE, start):
        return None
    begin = start + len(_MESSAGE)
    end = payload.find(b'"', begin)
    at = payload.rfind(_ID, begin)
    if end < 0 or at < 0:
        return None
    channel = payload[begin:end].decode("ascii", "replace")
    id_start = at + len(_ID)
    message_id = payload[id_start : payload.find(b'"', id_start)].decode("ascii", "replace")
    seq_text = message_id.rpartition(":")[2]
    if not seq_text.isdigit():
        return None
    return channel, message_id, int(seq_text)
