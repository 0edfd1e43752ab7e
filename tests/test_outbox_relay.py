"""examples/outbox_relay.py: a message goes out if and only if its transaction commits, once,
even with the relay killed (SIGKILL, a real process) between a publish and its delete."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

import triows
from triows.api import Client

from .test_examples import EXAMPLES, load

pytestmark = pytest.mark.real_socket

KEY = "outbox-relay-test-key-0123"


@asynccontextmanager
async def server_and_subscriber(channel: str) -> AsyncIterator[tuple[str, Received]]:
    """A server with the API on, and a subscriber of ``channel`` collecting what it gets."""
    received = Received()
    async with trio.open_nursery() as nursery:
        config = triows.Config(port=0, api_key=KEY)
        server: triows.Server = await nursery.start(triows.serve, config)

        async def subscribe(task_status: trio.TaskStatus[None]) -> None:
            ws: WebSocketConnection
            async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as ws:
                await ws.get_message()  # welcome
                await ws.send_message(json.dumps({"type": "subscribe", "channel": channel}))
                assert json.loads(await ws.get_message())["type"] == "subscribed"
                task_status.started()
                while True:
                    frame = json.loads(await ws.get_message())
                    if frame["type"] == "message":
                        received.add(frame)

        await nursery.start(subscribe)
        try:
            yield f"http://127.0.0.1:{server.port}", received
        finally:
            nursery.cancel_scope.cancel()


class Received(list[Any]):
    """Messages as they come, and a wait for the n-th."""

    def __init__(self) -> None:
        super().__init__()
        self._more = trio.Event()

    def add(self, message: Any) -> None:
        self.append(message)
        self._more.set()
        self._more = trio.Event()

    async def wait_for(self, count: int) -> None:
        while len(self) < count:
            await self._more.wait()


def relay_command(database: Path, url: str) -> list[str]:
    return [sys.executable, str(EXAMPLES / "outbox_relay.py"), str(database), "--url", url]


async def test_a_relay_killed_between_publish_and_delete_loses_nothing_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    outbox = load("outbox_relay")
    database = tmp_path / "app.db"
    db = sqlite3.connect(database)
    outbox.create_outbox(db)
    with db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT)")
    for order in (1, 2, 3):
        with db:  # the app's transaction: its data and its message, or neither
            db.execute("INSERT INTO orders VALUES (?, 'paid')", (order,))
            outbox.enqueue(db, "orders.7", {"order": order})

    def failed_order() -> None:
        with db:  # rolled back: never published
            db.execute("INSERT INTO orders VALUES (4, 'paid')")
            outbox.enqueue(db, "orders.7", {"order": 4})
            raise RuntimeError("payment failed")

    with pytest.raises(RuntimeError):
        failed_order()
    assert db.execute("SELECT count(*) FROM triows_outbox").fetchone() == (3,)
    env = {**os.environ, "TRIOWS_API_KEY": KEY}

    async with server_and_subscriber("orders.7") as (url, received):
        with trio.fail_after(60):
            # Another writer holds the database: the relay can read and publish, but its
            # delete waits, right between the publish and the delete.
            locker = sqlite3.connect(database, isolation_level=None)
            locker.execute("BEGIN IMMEDIATE")
            relay = await trio.lowlevel.open_process(
                [*relay_command(database, url), "--once"], env=env
            )
            try:
                await received.wait_for(1)  # the first row is published
            finally:
                relay.send_signal(signal.SIGKILL)
                await relay.wait()
            assert relay.returncode == -signal.SIGKILL
            locker.execute("ROLLBACK")
            locker.close()
            # Published, not deleted: the row is still there.
            left = [row[0] for row in db.execute("SELECT id FROM triows_outbox ORDER BY id")]
            assert left == [1, 2, 3]

            again = await trio.run_process([*relay_command(database, url), "--once"], env=env)
            assert again.returncode == 0
            assert db.execute("SELECT count(*) FROM triows_outbox").fetchone() == (0,)

            # Everything before this last message has arrived when it does.
            def last() -> None:
                with Client(url, KEY) as api:
                    api.publish("orders.7", "end")

            await trio.to_thread.run_sync(last)
            await received.wait_for(4)
    assert [m["data"] for m in received] == [{"order": 1}, {"order": 2}, {"order": 3}, "end"]
    assert [m["seq"] for m in received] == [1, 2, 3, 4]


async def test_a_row_refused_for_good_is_set_aside_and_the_rest_go_out(tmp_path: Path) -> None:
    outbox = load("outbox_relay")
    database = tmp_path / "app.db"
    db = sqlite3.connect(database)
    outbox.create_outbox(db)
    with db:
        outbox.enqueue(db, "news", "first")
        outbox.enqueue(db, "bad name!", "never")
        outbox.enqueue(db, "news", "second")
    async with server_and_subscriber("news") as (url, received):
        with trio.fail_after(60):

            def relay_in_process() -> int:
                with Client(url, KEY, retries=0) as api:
                    return int(outbox.relay(db_thread(database), api))

            assert await trio.to_thread.run_sync(relay_in_process) == 2
            await received.wait_for(2)
    assert [m["data"] for m in received] == ["first", "second"]
    failed = db.execute("SELECT id, channel, reason FROM triows_outbox_failed").fetchall()
    assert len(failed) == 1
    assert failed[0][:2] == (2, "bad name!")
    assert "channel" in failed[0][2]
    assert db.execute("SELECT count(*) FROM triows_outbox").fetchone() == (0,)


async def test_an_unreachable_server_leaves_the_rows(tmp_path: Path) -> None:
    outbox = load("outbox_relay")
    database = tmp_path / "app.db"
    db = sqlite3.connect(database)
    outbox.create_outbox(db)
    with db:
        outbox.enqueue(db, "news", "kept")
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "TRIOWS_API_KEY": KEY}
    with trio.fail_after(60):
        result = await trio.run_process(
            [*relay_command(database, f"http://127.0.0.1:{port}"), "--once", "--retries", "1"],
            env=env,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    assert b"triows unavailable" in result.stderr
    assert b"Traceback" not in result.stderr
    assert db.execute("SELECT channel, data FROM triows_outbox").fetchall() == [("news", '"kept"')]


def db_thread(database: Path) -> sqlite3.Connection:
    """A connection for the relay's thread (sqlite3 connections stay in their own thread)."""
    return sqlite3.connect(database)


def test_the_relay_says_how_to_use_it() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "outbox_relay.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "--once" in result.stdout


async def test_a_wrong_api_key_stops_the_relay_and_sets_nothing_aside(tmp_path: Path) -> None:
    # A 401 (a key rotated on the server first, a typo) or 404 (a wrong --url path) says
    # nothing about a row: every row of the outbox was moved to triows_outbox_failed, never
    # to be published.
    outbox = load("outbox_relay")
    database = tmp_path / "app.db"
    db = sqlite3.connect(database)
    outbox.create_outbox(db)
    with db:
        outbox.enqueue(db, "news", "first")
        outbox.enqueue(db, "news", "second")
    async with server_and_subscriber("news") as (url, received):
        with trio.fail_after(60):
            result = await trio.run_process(
                [*relay_command(database, url), "--once"],
                env={**os.environ, "TRIOWS_API_KEY": "not-the-servers-key-0123"},
                capture_stderr=True,
                check=False,
            )
            assert result.returncode == 2
            assert b"401" in result.stderr
            assert b"Traceback" not in result.stderr
            assert db.execute("SELECT count(*) FROM triows_outbox_failed").fetchone() == (0,)
            assert db.execute("SELECT count(*) FROM triows_outbox").fetchone() == (2,)
            # With the right key they all go out.
            env = {**os.environ, "TRIOWS_API_KEY": KEY}
            again = await trio.run_process([*relay_command(database, url), "--once"], env=env)
            assert again.returncode == 0
            await received.wait_for(2)
    assert [m["data"] for m in received] == ["first", "second"]
