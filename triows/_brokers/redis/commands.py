"""Redis reads that more than one part makes, each run in a worker thread (one hop).

A node catching a channel up (the feeds) reads a slice of the channel's stream with its epoch
here, as a plain function of a redis-py client for :meth:`RedisBridge.call`; resumes read the
same in batches (:mod:`.reads`).
"""

from __future__ import annotations

from typing import Any

import redis

from ..._core import redis_format as fmt
from ..._core.feed import Entry


def read_stream(
    name: str, after: int, upto: int, client: redis.Redis
) -> tuple[list[tuple[Entry, int]], str | None]:
    """Stream entries ``after < seq <= upto`` (with their ms timestamps) and the channel's
    epoch, read together; no epoch means the channel has no numbering in Redis now."""
    pipe = client.pipeline(transaction=True)
    pipe.hget(fmt.numbering_key(name), "epoch")
    if upto > after:
        pipe.xrange(fmt.stream_key(name), f"{after + 1}-0", f"{upto}-0")
    epoch_bytes, *raw = pipe.execute()
    if epoch_bytes is None:
        return [], None
    epoch = epoch_bytes.decode()
    entries = raw[0] if raw else []
    return [fmt.parse_stream_entry(i, stream_fields(f), epoch) for i, f in entries], epoch


def stream_fields(fields: dict[bytes, bytes] | list[bytes]) -> dict[bytes, bytes]:
    """A stream entry's fields: a cluster client's transaction leaves them a flat list."""
    if isinstance(fields, dict):
        return fields
    return dict(zip(fields[::2], fields[1::2], strict=True))


def read_numbering(name: str, client: redis.Redis) -> tuple[int, str | None]:
    """The channel's ``(seq, epoch)`` as Redis numbers it now (no epoch: not numbered)."""
    seq, epoch = client.hmget(fmt.numbering_key(name), "seq", "epoch")
    return int(seq or 0), None if epoch is None else as_text(epoch)


def as_text(value: bytes | str) -> str:
    """A reply as text, whether the client decodes replies or not."""
    return value.decode() if isinstance(value, bytes) else str(value)


def pipe_eval(pipe: Any, script: str, numkeys: int, *keys_and_args: Any) -> None:
    """Queue ``EVAL`` on a pipeline: a cluster client's pipeline has no ``eval()`` (it raises),
    but sends the command itself to the node of its keys."""
    pipe.execute_command("EVAL", script, numkeys, *keys_and_args)
