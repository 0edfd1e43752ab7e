"""The examples run against the real server, so the docs that point at them stay true."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import attrs
import pytest
import trio

from triows.testing import ConnectionRejected, open_test_server

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


async def test_embedded_app(autojump_clock: trio.testing.MockClock) -> None:
    app = load("embedded_app")
    async with open_test_server(app.build_config()) as harness:
        with pytest.raises(ConnectionRejected) as info:
            async with harness.connect("/?key=nobody"):
                pass
        assert info.value.status_code == 401
        async with harness.connect("/?key=alice") as alice:
            assert (await alice.request({"type": "subscribe", "channel": "prices"}))[
                "type"
            ] == "subscribed"
            assert (await alice.request({"type": "subscribe", "channel": "user.alice"}))[
                "type"
            ] == "subscribed"
            assert (await alice.request({"type": "subscribe", "channel": "user.bob"}))[
                "code"
            ] == 403
            assert (await alice.request({"type": "publish", "channel": "prices", "data": 1}))[
                "code"
            ] == 403
            await app.publish_prices(harness.server, ticks=3)
            ticks = [await alice.receive_type("message") for _ in range(3)]
            assert [t["seq"] for t in ticks] == [1, 2, 3]
            assert all(t["from"] == "pricer" for t in ticks)
        policies = {c.name: c.policy for c in harness.server.channel_statistics()}
        assert policies.get("prices", "drop_oldest") == "drop_oldest"
        assert attrs.evolve(app.build_config(), port=9).port == 9


def test_subscriber_example_imports() -> None:
    assert callable(load("python_subscriber").main)


async def test_reconnecting_subscriber(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from triows import client as wsclient

    example = load("reconnecting_subscriber")
    async with open_test_server() as harness:
        connect = wsclient.connect

        def in_memory(url: str, **options: object) -> object:
            return connect(url, open_stream=harness.listener.connect, **options)  # type: ignore[arg-type]

        monkeypatch.setattr(wsclient, "connect", in_memory)
        async with trio.open_nursery() as nursery:
            results: list[object] = []

            async def run() -> None:
                results.extend(await example.follow("ws://test/", "news", limit=3))

            nursery.start_soon(run)
            await trio.testing.wait_all_tasks_blocked()  # connected and subscribed
            assert harness.server.statistics().subscriptions == 1
            for n in range(3):
                await harness.server.publish("news", n)
        assert [event.data for event in results] == [0, 1, 2]  # type: ignore[attr-defined]
