"""The shape of the code: the import graph of every module, and the rules of its floors.

Every module of the package is found with ``pkgutil`` (none listed by hand), parsed with
``ast``, and every import it makes counts: at module level, inside functions, and under
``TYPE_CHECKING``. The graph must have no cycle, and each folder may only use the floors
below it (docs/design.md, "The map"):

=================  ==================================================================
``_core``          sans-I/O: imports nothing of triows but ``_core``, and no I/O library
``_net``           sockets: the core only
``_brokers``       never the server shell, the operations surface, the CLI or a client
``_ops``           never the server shell (it reads :mod:`triows._ops.view`), CLI, client
``_server``        never the CLI or a client
``_client``        never the server, the network floor, brokers, operations, the CLI
=================  ==================================================================

And ``import triows`` costs what an embedded in-process server needs: no redis, no
trio-websocket or wsproto (client side), no prometheus_client (a scrape), no rich (``top``), no
httpx (``triows.api``).
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(importlib.util.find_spec("triows").origin).parent  # type: ignore[arg-type, union-attr]

#: Libraries that do I/O or need an event loop: never in the sans-I/O core.
IO_LIBRARIES = {
    "trio",
    "trio_websocket",
    "trio_util",
    "wsproto",
    "redis",
    "socket",
    "asyncio",
    "prometheus_client",
    "rich",
    "httpx",
    "select",
    "selectors",
    "threading",
}
#: What ``import triows`` must not load.
HEAVY = ("redis", "trio_websocket", "wsproto", "prometheus_client", "rich", "httpx")

#: For each folder, the triows folders (the first name after ``triows``) it must never import.
FORBIDDEN = {
    "_config": {"_net", "_brokers", "_ops", "_server", "_cli", "_client", "client", "testing"},
    "_restart": {"_net", "_brokers", "_ops", "_server", "_cli", "_client", "client", "testing"},
    "_net": {"_brokers", "_ops", "_server", "_cli", "_client", "client", "testing"},
    "_brokers": {"_net", "_server", "_ops", "_cli", "_client", "client", "testing"},
    "_ops": {"_server", "_cli", "_client", "client", "testing"},
    "_server": {"_cli", "_client", "client", "testing"},
    "_client": {"_net", "_server", "_brokers", "_ops", "_cli", "testing"},
    "client": {"_net", "_server", "_brokers", "_ops", "_cli", "testing"},
    # The HTTP API's client: the core's backoff rule, nothing of the server.
    "_api": {"_config", "_restart", "_net", "_brokers", "_ops", "_server", "_cli", "_client"},
    "api": {"_config", "_restart", "_net", "_brokers", "_ops", "_server", "_cli", "_client"},
}


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    found = {"triows": PACKAGE / "__init__.py"}
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="triows."):
        spec = importlib.util.find_spec(info.name)
        assert spec is not None, info.name
        assert spec.origin is not None, info.name
        found[info.name] = Path(spec.origin)
    return found


def _base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def imports(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(triows modules, top-level outside libraries) that module ``name`` imports, wherever
    the import statement stands (module level, a function, ``if TYPE_CHECKING``)."""
    inside: set[str] = set()
    outside: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _base(name, is_package, node)
            # ``from .pkg import x``: x is a module when one has that name, else a name in base.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target == "triows" or target.startswith("triows."):
                while target not in known and "." in target:  # a name inside a module
                    target = target.rsplit(".", 1)[0]
                if target in known and target != name:
                    inside.add(target)
            elif target:
                outside.add(target.split(".")[0])
    return inside, outside


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    found = modules()
    known = set(found)
    edges: dict[str, set[str]] = {}
    libraries: dict[str, set[str]] = {}
    for name, path in found.items():
        edges[name], libraries[name] = imports(name, path, known)
    return edges, libraries


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or not (Tarjan's strongly connected
    components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_scan_finds_every_module_and_every_kind_of_import() -> None:
    found = modules()
    assert "triows._core.protocol" in found
    assert len(found) > 50
    edges, _ = graph()
    # A TYPE_CHECKING import and a function-level import count like any other.
    assert "triows._client.transport" in edges["triows.testing._harness"]
    assert "triows._brokers.redis.broker" in edges["triows._brokers.factory"]


def test_cycles_are_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_anywhere() -> None:
    edges, _ = graph()
    assert cycles(edges) == []


def test_the_core_imports_nothing_but_the_core_and_no_io() -> None:
    edges, libraries = graph()
    for name, targets in edges.items():
        if _folder(name) != "_core":
            continue
        assert {_folder(t) for t in targets} <= {"_core"}, (name, targets)
        assert not libraries[name] & IO_LIBRARIES, (name, libraries[name] & IO_LIBRARIES)


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_each_floor_uses_only_the_floors_below(folder: str) -> None:
    edges, _ = graph()
    forbidden = FORBIDDEN[folder]
    for name, targets in edges.items():
        if _folder(name) == folder:
            wrong = {t for t in targets if _folder(t) in forbidden}
            assert not wrong, f"{name} imports {sorted(wrong)}"


def test_nothing_but_the_entry_points_imports_the_cli() -> None:
    edges, _ = graph()
    users = {name for name, targets in edges.items() if any(_folder(t) == "_cli" for t in targets)}
    assert {u for u in users if _folder(u) != "_cli"} <= {"triows.__main__"}


def test_the_console_script_is_main() -> None:
    """``triows`` (pyproject's console script) must name a callable, as ``python -m`` does."""
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="triows")
    assert callable(script.load())


def test_import_triows_loads_no_heavy_library() -> None:
    code = f"import sys, triows; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_module_has_one_job_and_fits_in_a_read() -> None:
    """About 400 lines at most (the CLI's option table excepted)."""
    exceptions = {"triows._cli.options"}
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {n: lines for n, lines in sizes.items() if lines > 420 and n not in exceptions} == {}
