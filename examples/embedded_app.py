"""Embed triows in a Trio application: own authentication, own authorization, own publishing.

    .venv/bin/python examples/embedded_app.py [PORT]   # then ws://127.0.0.1:8080/?key=alice

Clients authenticate with an API key in the query string; each user may subscribe to the
public ``prices`` channel and to its own ``user.<name>`` channel. The application publishes a
price tick every second, and a private notice on ``user.<name>`` each time that user
subscribes to it (that is, when it connects). Ctrl-C (or SIGTERM) closes every client with
1001 and exits without a traceback.
"""

from __future__ import annotations

import logging
import random
import signal
import sys

import trio

import triows

API_KEYS = {"alice": "alice", "bob": "bob"}  # key -> user; a real app asks its database


class App:
    """The application around the server: its hooks, and what it publishes."""

    def __init__(self) -> None:
        self.server: triows.Server | None = None
        self.nursery: trio.Nursery | None = None

    async def authenticate(self, request: triows.HandshakeRequest) -> triows.Principal | None:
        user = API_KEYS.get(request.query.get("key", ""))
        return triows.Principal(user_id=user) if user else None  # None -> HTTP 401

    def authorize(self, principal: triows.Principal, action: triows.Action, channel: str) -> bool:
        if channel == "prices":
            return action is triows.Action.SUBSCRIBE  # clients read prices, only the app writes
        allowed = channel == f"user.{principal.user_id}"
        if allowed and action is triows.Action.SUBSCRIBE and self.nursery is not None:
            # Runs once this hook has returned, so the subscription exists by then.
            self.nursery.start_soon(self.send_notice, channel, principal.user_id)
        return allowed

    async def send_notice(self, channel: str, user: str | None) -> None:
        assert self.server is not None
        notice = {"notice": f"welcome, {user}: you have 3 unread alerts"}
        await self.server.publish(channel, notice, sender="app")

    def config(self, **overrides: object) -> triows.Config:
        return triows.Config(
            authenticate=self.authenticate,
            authorize=self.authorize,
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


async def main(port: int = 8080) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = App()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            app.nursery = nursery
            app.server = await nursery.start(triows.serve, app.config(port=port))
            nursery.start_soon(publish_prices, app.server)
            async for _ in signals:  # the first Ctrl-C: a graceful shutdown
                await app.server.aclose()
                nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 8080)
