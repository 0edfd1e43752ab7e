"""The ``history`` reply, spliced from the messages' payloads as they were delivered."""

from __future__ import annotations

from .protocol import RequestId, encode


def history_reply(
    channel: str,
    epoch: str | None,
    seq: int,
    payloads: list[bytes],
    request_id: RequestId | None,
) -> bytes:
    """The ``history`` reply, spliced: each message exactly as it was delivered."""
    head = encode({"type": "history", "channel": channel, "epoch": epoch, "seq": seq})
    tail = b"" if request_id is None else b',"id":' + encode(request_id)
    return b"".join((head[:-1], b',"messages":[', b",".join(payloads), b"]", tail, b"}"))
