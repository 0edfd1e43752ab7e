"""Protocol v1 from another implementation: Node's `ws` library, over real TCP."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import trio

import triows

BENCH = Path(__file__).resolve().parent / "bench"

pytestmark = pytest.mark.real_socket


def node_ws_available() -> bool:
    return shutil.which("node") is not None and (BENCH / "node_modules" / "ws").is_dir()


@pytest.mark.skipif(
    not node_ws_available() and not os.environ.get("CI"),
    reason="needs node and `npm install --prefix tests/bench` (CI installs them)",
)
async def test_node_ws_client_speaks_protocol_v1() -> None:
    if not node_ws_available():
        pytest.fail("CI must install Node `ws` (npm install --prefix tests/bench)")
    async with trio.open_nursery() as nursery:
        server: triows.Server = await nursery.start(triows.serve, triows.Config(port=0))
        with trio.fail_after(30):
            result = await trio.run_process(
                ["node", str(BENCH / "interop.js"), f"ws://127.0.0.1:{server.port}/"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.decode().strip() == "OK"
        await server.aclose()
