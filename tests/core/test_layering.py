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


#: Modules that make up the broker seam, and what they may import from triows: the core, the
#: configuration, fan-out (what brokers deliver through) and each other. Never the server,
#: its connections, the transport or the CLI.
BROKER_MODULES = {"_broker", "_redis_broker", "_redis_bridge"}
BROKER_MAY_IMPORT = BROKER_MODULES | {"_core", "_config", "_fanout"}


def _triows_imports(path: Path) -> set[str]:
    """First component under ``triows`` of every module ``path`` imports (static imports,
    ``TYPE_CHECKING`` blocks and function-level imports included)."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("triows."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("triows."):
                    found.add(alias.name.split(".")[1])
    return found


def test_brokers_import_nothing_from_the_shell() -> None:
    package = Path(importlib.util.find_spec("triows").origin).parent  # type: ignore[arg-type, union-attr]
    for name in sorted(BROKER_MODULES):
        imported = _triows_imports(package / f"{name}.py")
        assert imported <= BROKER_MAY_IMPORT, f"{name} imports {imported - BROKER_MAY_IMPORT}"


def test_fanout_and_config_know_no_server_or_connection() -> None:
    package = Path(importlib.util.find_spec("triows").origin).parent  # type: ignore[arg-type, union-attr]
    for name in ("_fanout", "_config"):
        imported = _triows_imports(package / f"{name}.py")
        assert not imported & {"_server", "_connection", "_cli", "_broker"}, (name, imported)
