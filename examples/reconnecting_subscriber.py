"""A subscriber that survives network failures and server restarts with triows.client.

    .venv/bin/python -m triows &
    .venv/bin/python examples/reconnecting_subscriber.py ws://127.0.0.1:8080/ news

Kill and restart the server, or cut the network: the subscriber reconnects with backoff,
resumes from the server's history, and prints every message once and in order. What it
cannot get (history expired, or a restarted server) it is told about as a gap. Ctrl-C stops
it.
"""

from __future__ import annotations

import logging
import sys

import trio

from triows import client as wsclient


async def follow(url: str, channel: str, *, limit: int | None = None) -> list[object]:
    """Print (and return) the events of ``channel``; stops after ``limit`` events if given."""
    seen: list[object] = []
    async with wsclient.connect(url, backoff_cap=10) as client:
        subscription = await client.subscribe(channel)
        async for event in subscription:
            match event:
                case wsclient.Message(seq=seq, data=data, sender=sender):
                    print(f"#{seq} from {sender}: {data}")
                case wsclient.Gap(first=None, reason=reason):
                    print(f"-- cannot tell what was missed ({reason})")
                case wsclient.Gap(first=first, last=last, reason=reason):
                    print(f"-- missed #{first}..#{last} ({reason})")
            seen.append(event)
            if limit is not None and len(seen) >= limit:
                break
    return seen


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)  # the client's reconnects, as they happen
    try:
        trio.run(
            follow,
            sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8080/",
            sys.argv[2] if len(sys.argv) > 2 else "news",
        )
    except* KeyboardInterrupt:  # Ctrl-C stops it without a traceback
        pass
