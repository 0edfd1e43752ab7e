"""The "load state, then subscribe" recipe (docs/delivery.md): an app reads the channel's
position (``/api/channel``), then loads its state from its database, then subscribes from the
position, while a writer commits rows and publishes them all along. Nothing is missed (every
row is shown), nothing twice (each row once; the subscription delivers each seq after the
position once, in order), on real sockets, with the in-process broker and with Redis."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
import trio
from trio_util import AsyncValue

import triows
from triows import client as wsclient
from triows.api import AsyncClient

pytestmark = pytest.mark.real_socket

KEY = "load-then-subscribe-key-0123"
ROWS = 60
_names = itertools.count()


class Database:
    """The app's table of rows; a row is committed before it is published (the outbox or
    ``on_commit`` order), and ``published`` counts what is out."""

    def __init__(self) -> None:
        self.rows: dict[int, str] = {}
        self.published = AsyncValue(0)

    async def writer(self, api: AsyncClient, channel: str) -> None:
        for row in range(ROWS):
            self.rows[row] = f"row {row}"  # committed ...
            await trio.sleep(0.002)  # ... and published a moment later
            await api.publish(channel, {"id": row, "text": f"row {row}"})
            self.published.value += 1
            await trio.sleep(0.002)

    def load(self) -> dict[int, str]:
        return dict(self.rows)


async def the_page(url: str, api: AsyncClient, db: Database, channel: str) -> dict[str, Any]:
    """The recipe, as an app and its page do it, with publishes landing between each step."""
    await db.published.wait_value(lambda n: n >= 10)
    # 1. The position first ...
    position = await api.channel(channel)
    await db.published.wait_value(lambda n: n >= position.seq + 5)
    # 2. ... then the state (rows published after the position may be in it already) ...
    shown = db.load()
    loaded = set(shown)
    await db.published.wait_value(lambda n: n >= position.seq + 10)
    # 3. ... then subscribe from the position: every message after it comes.
    delivered: list[int] = []
    events: list[Any] = []
    async with wsclient.connect(url.replace("http", "ws") + "/") as client:
        subscription = await client.subscribe(channel, since=position.seq, epoch=position.epoch)
        async for event in subscription:
            events.append(event)
            if isinstance(event, wsclient.Message):
                delivered.append(event.seq)
                shown[event.data["id"]] = event.data["text"]  # applied by id: idempotent
                if event.seq == ROWS:
                    break
    return {
        "position": position.seq,
        "loaded": loaded,
        "shown": shown,
        "delivered": delivered,
        "events": events,
    }


@pytest.mark.parametrize("broker", ["memory", "redis", "redis-cluster"])
async def test_load_state_then_subscribe_from_the_position_misses_nothing(
    broker: str, request: pytest.FixtureRequest
) -> None:
    overrides: dict[str, Any] = {}
    if broker == "redis":
        overrides["redis_url"] = request.getfixturevalue("redis_url")
    elif broker == "redis-cluster":
        overrides["redis_url"] = request.getfixturevalue("redis_cluster").url
    channel = f"orders-{time.time():.0f}-{next(_names)}"
    db = Database()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(triows.serve, triows.Config(port=0, api_key=KEY, **overrides))
        url = f"http://127.0.0.1:{server.port}"
        with trio.fail_after(30):
            async with AsyncClient(url, KEY) as api:
                nursery.start_soon(db.writer, api, channel)
                page = await the_page(url, api, db, channel)
        await server.aclose()
    position = page["position"]
    assert position >= 10
    # Nothing missed: every row is shown, as written.
    assert page["shown"] == {row: f"row {row}" for row in range(ROWS)}
    # Nothing twice: each message after the position once, in order, and none before it;
    # no gap reported.
    assert page["delivered"] == list(range(position + 1, ROWS + 1))
    assert all(isinstance(e, wsclient.Message) for e in page["events"])
    # The windows the recipe closes were there: rows published after the position that the
    # state already had (shown once: applied by id), and rows published after the state.
    assert {row + 1 for row in page["loaded"]} & set(page["delivered"])
    assert set(page["delivered"]) - {row + 1 for row in page["loaded"]}


async def test_a_channel_never_numbered_is_followed_from_its_first_message() -> None:
    """``epoch`` null at the read: nothing was ever published, so every message history holds
    came after it (``since=0, epoch=None``: all of them, then live)."""
    channel = f"fresh-{time.time():.0f}-{next(_names)}"
    async with trio.open_nursery() as nursery:
        server = await nursery.start(triows.serve, triows.Config(port=0, api_key=KEY))
        url = f"http://127.0.0.1:{server.port}"
        with trio.fail_after(30):
            async with AsyncClient(url, KEY) as api:
                position = await api.channel(channel)
                assert (position.seq, position.epoch) == (0, None)
                for n in range(3):
                    await api.publish(channel, n)
                async with wsclient.connect(f"ws://127.0.0.1:{server.port}/") as client:
                    with pytest.raises(ValueError, match="epoch"):
                        await client.subscribe(channel, since=2, epoch=None)
                    subscription = await client.subscribe(
                        channel, since=position.seq, epoch=position.epoch
                    )
                    await api.publish(channel, 3)
                    seen = []
                    async for event in subscription:
                        assert isinstance(event, wsclient.Message), event
                        seen.append((event.seq, event.data))
                        if len(seen) == 4:
                            break
                assert seen == [(1, 0), (2, 1), (3, 2), (4, 3)]
        await server.aclose()
