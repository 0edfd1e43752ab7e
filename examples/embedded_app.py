"""Embed triows in a Trio application: own authentication, own authorization, own publishing.

    python examples/embedded_app.py        # then connect to ws://127.0.0.1:8080/?key=alice

Clients authenticate with an API key in the query string; each user may subscribe to the
public ``prices`` channel and to its own ``user.<name>`` channel; the application publishes a
price tick every second and a private notice to each user who connects.
"""

from __future__ import annotations

import logging
import random

import trio

import triows

API_KEYS = {"alice": "alice", "bob": "bob"}  # key -> user; a real app asks its database


async def authenticate(request: triows.HandshakeRequest) -> triows.Principal | None:
    user = API_KEYS.get(request.query.get("key", ""))
    return triows.Principal(user_id=user) if user else None  # None -> HTTP 401


def authorize(principal: triows.Principal, action: triows.Action, channel: str) -> bool:
    if channel == "prices":
        return action is triows.Action.SUBSCRIBE  # clients read prices, only the app writes
    return channel == f"user.{principal.user_id}"


def build_config(**overrides: object) -> triows.Config:
    return triows.Config(
        authenticate=authenticate,
        authorize=authorize,
        channel_policies=[("prices", "drop_oldest")],  # a stale price is worth dropping
        **overrides,  # type: ignore[arg-type]
    )


async def publish_prices(server: triows.Server, ticks: int | None = None) -> None:
    price = 100.0
    sent = 0
    while ticks is None or sent < ticks:
        price = round(price * random.uniform(0.99, 1.01), 2)
        await server.publish("prices", {"symbol": "TRIO", "price": price}, sender="pricer")
        sent += 1
        await trio.sleep(1)


async def main() -> None:
    logging.basicConfig(level=logging.INFO)
    async with trio.open_nursery() as nursery:
        server: triows.Server = await nursery.start(triows.serve, build_config())
        nursery.start_soon(publish_prices, server)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main)
