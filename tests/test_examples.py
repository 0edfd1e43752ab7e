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
    example = load("embedded_app")
    app = example.App()
    async with open_test_server(app.config()) as harness, trio.open_nursery() as nursery:
        app.server, app.nursery = harness.server, nursery
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
            # The private notice the example promises, on alice's own channel only.
            notice = await alice.receive_type("message")
            assert (notice["channel"], notice["from"]) == ("user.alice", "app")
            assert "welcome, alice" in notice["data"]["notice"]
            assert (await alice.request({"type": "subscribe", "channel": "user.bob"}))[
                "code"
            ] == 403
            assert (await alice.request({"type": "publish", "channel": "prices", "data": 1}))[
                "code"
            ] == 403
            await example.publish_prices(harness.server, ticks=3)
            ticks = [await alice.receive_type("message") for _ in range(3)]
            assert [t["seq"] for t in ticks] == [1, 2, 3]
            assert all(t["from"] == "pricer" for t in ticks)
        policies = {c.name: c.policy for c in harness.server.channel_statistics()}
        assert policies.get("prices", "drop_oldest") == "drop_oldest"
        assert attrs.evolve(app.config(), port=9).port == 9


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


@pytest.mark.real_socket
async def test_embedded_app_logs_its_start_and_stops_cleanly_on_ctrl_c() -> None:
    import signal
    import subprocess

    from trio_websocket import HandshakeError, open_websocket_url

    from .redisserver import free_port

    port = free_port()
    process = await trio.lowlevel.open_process(
        [sys.executable, str(EXAMPLES / "embedded_app.py"), str(port)],
        stderr=subprocess.PIPE,
    )
    try:
        with trio.fail_after(15):
            while True:
                try:
                    async with open_websocket_url(f"ws://127.0.0.1:{port}/?key=bob") as ws:
                        await ws.get_message()
                        break
                except (OSError, HandshakeError):
                    await trio.sleep(0.1)
        process.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            assert await process.wait() == 0
        assert process.stderr is not None
        log = b""
        while chunk := await process.stderr.receive_some():
            log += chunk
        text = log.decode()
        assert f"triows listening on ws://127.0.0.1:{port}/" in text  # an embedded server says so
        assert "Traceback" not in text
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.real_socket
@pytest.mark.parametrize("name", ["reconnecting_subscriber", "python_subscriber"])
async def test_a_client_example_stops_on_ctrl_c_without_a_traceback(name: str) -> None:
    import signal
    import subprocess

    import triows

    async with trio.open_nursery() as nursery:
        server: triows.Server = await nursery.start(triows.serve, triows.Config(port=0))
        url = f"ws://127.0.0.1:{server.port}/"
        process = await trio.lowlevel.open_process(
            [sys.executable, str(EXAMPLES / f"{name}.py"), url, "news"],
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            for _ in range(300):  # up to 15 s, until it subscribed: it is running
                if server.statistics().subscriptions:
                    break
                await trio.sleep(0.05)
            assert server.statistics().subscriptions == 1
            process.send_signal(signal.SIGINT)
            with trio.fail_after(20):
                returncode = await process.wait()
            assert process.stderr is not None
            err = b""
            while chunk := await process.stderr.receive_some():
                err += chunk
            assert "Traceback" not in err.decode(), err.decode()
            assert returncode == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        await server.aclose()
