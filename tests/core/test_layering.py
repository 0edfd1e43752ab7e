"""The sans-I/O core must stay free of trio, sockets and redis."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from triows._core.names import ChannelNameError, first_match, validate_channel


def test_core_imports_no_io_library() -> None:
    # triows/__init__ imports the shell, so load the core under a bare stand-in package.
    package_dir = str(Path(importlib.util.find_spec("triows").origin).parent)  # type: ignore[arg-type, union-attr]
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('triows'); pkg.__path__ = [{package_dir!r}]\n"
        "sys.modules['triows'] = pkg\n"
        "import triows._core.protocol, triows._core.hub, triows._core.outbox\n"
        "import triows._core.frames, triows._core.auth, triows._core.names\n"
        "import triows._core.backoff, triows._core.ratelimit, triows._core.memory_guard\n"
        "import triows._core.dedupe, triows._core.history, triows._core.redis_format\n"
        "print(','.join(m for m in ('trio', 'trio_websocket', 'redis', 'asyncio')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_channel_names() -> None:
    assert validate_channel("user:42/room-1.a_b@x=y+z") == "user:42/room-1.a_b@x=y+z"
    for bad in ("", "a b", "a*", "a?", "é", "x" * 256, None):
        with pytest.raises(ChannelNameError):
            validate_channel(bad)


def test_first_match_wins() -> None:
    rules = [("a.*", 1), ("a.b", 2), ("*", 3)]
    assert first_match(rules, "a.b", 0) == 1
    assert first_match(rules, "zzz", 0) == 3
    assert first_match([], "a", 0) == 0
