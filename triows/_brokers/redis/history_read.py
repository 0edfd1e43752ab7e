"""A page of a channel's history read from its stream: only what the page needs.

What a Redis node holds of a channel (what a resume could replay) is its stream's entries
numbered above ``seq - history size`` (the rule the publish script trims by) and not older
than the history ttl. A page is cut from that by the same rule as in process
(``triows._core.history.page``). A stream entry's id is its seq (``<seq>-0``), so a page is
read by id: from ``since`` (or the window's edge), ``COUNT`` as many as the page asks for.
Entries the page cannot use (outside the window, past the ttl) make the next read larger
(doubled, up to :data:`MAX_CHUNK`), so a page costs a few round trips, never the whole
history, whatever ``limit`` is.
"""

from __future__ import annotations

import functools
from typing import Any, Final

import redis

from ..._config import Config
from ..._core import redis_format as fmt
from ..._core.history import page
from ..seam import BrokerUnavailableError, HistoryPage, WallClockMs
from .bridge import LINK_ERRORS, RedisBridge
from .commands import as_text, stream_fields

#: Most entries read from a stream in one round trip.
MAX_CHUNK: Final = 1024


async def read_history(
    config: Config,
    bridge: RedisBridge,
    now_ms: WallClockMs,
    channel: str,
    *,
    since: int | None,
    limit: int,
    reverse: bool,
    max_bytes: int,
) -> HistoryPage:
    """A page of ``channel``'s history from its stream."""
    size, ttl = config.history_for(channel)
    cutoff = now_ms() - ttl * 1000
    read = functools.partial(
        read_held,
        channel,
        size if ttl > 0 else 0,
        cutoff,
        since=since,
        limit=limit,
        reverse=reverse,
    )
    try:
        seq, epoch, held = await bridge.call(read)
    except LINK_ERRORS:
        raise BrokerUnavailableError("Redis is unreachable; cannot read history now") from None
    chosen = page(held, since=since, limit=limit, reverse=reverse, max_bytes=max_bytes)
    return HistoryPage(epoch=epoch, seq=seq, payloads=[payload for _, payload in chosen])


def read_held(
    name: str,
    size: int,
    cutoff: float,
    client: redis.Redis,
    *,
    since: int | None,
    limit: int,
    reverse: bool,
) -> tuple[int, str | None, list[tuple[int, bytes]]]:
    """The channel's numbering and, oldest first, the held entries (in the window, at or
    after ``cutoff`` ms) that a page from ``since`` takes: at most ``limit``. The first read
    is in one transaction with the numbering; entries of a later epoch are none."""
    stream = fmt.stream_key(name)
    count = limit
    # Bounds from ``since`` alone: the window's edge is known with the numbering.
    low, high = "-", "+"
    if since is not None and reverse:
        high = f"({since}-0"
    elif since is not None:
        low = f"({since}-0"
    pipe = client.pipeline(transaction=True)
    pipe.hmget(fmt.numbering_key(name), "seq", "epoch")
    # Nothing is numbered below 1 (and "(0-0" is no end Redis takes).
    if size > 0 and limit > 0 and not (reverse and since is not None and since < 1):
        _read(pipe, stream, low, high, count, reverse)
    (seq_raw, epoch_raw), *raw = pipe.execute()
    if epoch_raw is None:
        return 0, None, []
    seq, epoch = int(seq_raw or 0), as_text(epoch_raw)
    lowest = seq - size  # held: numbered above this
    found: list[tuple[int, bytes]] = []
    chunk: list[Any] = raw[0] if raw else []
    while chunk:
        last = 0
        for entry_id, fields in chunk:
            entry, at = fmt.parse_stream_entry(entry_id, stream_fields(fields), epoch)
            last = entry.seq
            if entry.seq <= lowest:
                if reverse:
                    return seq, epoch, found[::-1]  # older ones are out of the window too
                continue
            if at >= cutoff:
                found.append((entry.seq, entry.payload))
                if len(found) == limit:
                    return seq, epoch, found[::-1] if reverse else found
        if len(chunk) < count:
            break  # the stream ends here
        count = min(count * 2, MAX_CHUNK)
        if reverse:
            low, high = "-", f"({last}-0"
        else:
            low, high = f"({max(last, lowest)}-0", "+"
        pipe = client.pipeline(transaction=True)
        pipe.hget(fmt.numbering_key(name), "epoch")
        _read(pipe, stream, low, high, count, reverse)
        now_epoch, chunk = pipe.execute()
        if now_epoch is None or as_text(now_epoch) != epoch:
            break  # the channel was numbered anew meanwhile: these entries are not this epoch's
    return seq, epoch, found[::-1] if reverse else found


def _read(pipe: Any, stream: str, low: str, high: str, count: int, reverse: bool) -> None:
    if reverse:
        pipe.xrevrange(stream, high, low, count=count)
    else:
        pipe.xrange(stream, low, high, count=count)
