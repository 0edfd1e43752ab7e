"""Every snippet in README.md and docs/ runs, as a newcomer would paste it.

- Python blocks: test functions (``async def test_``) run under pytest with the autojump clock
  a reader's ``trio_mode = true`` gives; programs (``trio.run(main)``) run as processes
  against a real server on a free port (``127.0.0.1:8080`` is rewritten to it), bounded in
  time; the rest are run with what they need stubbed (the FastAPI app).
- Shell blocks: every ``python -m triows ...`` command's flags must parse; ``curl`` commands
  run against a server with the API on.
- JSON blocks must parse (protocol frames are one object per line).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

import triows
from triows._cli.options import parse_config

from .redisserver import free_port

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)
KEY = "docs-test-api-key-0123"


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for lang, body in FENCE.findall(page.read_text()):
            if lang == language:
                found.append((page.name, body))
    return found


def ids(found: list[tuple[str, str]]) -> list[str]:
    return [f"{page}-{n}" for n, (page, _) in enumerate(found)]


PYTHON = blocks("python")


@pytest.mark.parametrize(("page", "code"), PYTHON, ids=ids(PYTHON))
def test_python_snippets_compile(page: str, code: str) -> None:
    compile(code, page, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_the_test_snippets_pass(tmp_path: Path) -> None:
    """Each test snippet runs on its own, as a reader pastes it: with its own imports."""
    snippets = [(page, code) for page, code in PYTHON if "def test_" in code]
    assert len(snippets) >= 2, "docs/testing.md has test snippets"
    for n, (page, code) in enumerate(snippets):
        (tmp_path / f"test_{Path(page).stem}_{n}.py").write_text(code)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


#: The JWT secret of the server that programs with a ``token=`` run against (client.md reads
#: it from the environment, as ``python -m triows`` does).
JWT_SECRET = "docs-test-jwt-secret-0123456789abcdef"


@contextmanager
def running_server(env: dict[str, str]) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "triows", "--port", str(port), "--log-level", "warning"],
        env={**os.environ, **env},
    )
    try:
        wait_listening(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture
def server_port() -> Iterator[int]:
    """``python -m triows`` with the publish API on, for programs and curl."""
    with running_server({"TRIOWS_API_KEY": KEY}) as port:
        yield port


@pytest.fixture
def jwt_server_port() -> Iterator[int]:
    """``python -m triows`` with token authentication on (``TRIOWS_JWT_SECRET``)."""
    with running_server({"TRIOWS_JWT_SECRET": JWT_SECRET}) as port:
        yield port


def wait_listening(port: int) -> None:
    import socket

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def run_program(code: str, port: int, seconds: float) -> subprocess.CompletedProcess[str]:
    """Run a snippet as a program for at most ``seconds``; one that runs for ever (a server, a
    subscriber) is stopped with SIGINT, which must not show a traceback of ours either."""
    code = code.replace("127.0.0.1:8080", f"127.0.0.1:{port}").replace("port=8080", f"port={port}")
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TRIOWS_API_KEY": KEY, "TRIOWS_JWT_SECRET": JWT_SECRET},
    )
    try:
        out, err = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(2)
        out, err = process.communicate(timeout=20)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


PROGRAMS = [(p, c) for p, c in PYTHON if "trio.run(" in c and "triows.serve" not in c]


@pytest.mark.parametrize(("page", "code"), PROGRAMS, ids=ids(PROGRAMS))
def test_client_programs_run(page: str, code: str, request: pytest.FixtureRequest) -> None:
    """Programs run as pasted (nothing defined for them); those that send a token against a
    server with authentication on."""
    port = request.getfixturevalue("jwt_server_port" if "token=" in code else "server_port")
    result = run_program(code, port, seconds=5)
    assert "Traceback" not in result.stderr, result.stderr
    if "print(await client.publish" in code:
        assert result.returncode == 0
        assert result.stdout.strip() == "1"
    if "token=my_jwt" in code:  # the minted token was accepted
        assert "published as 1" in result.stdout, result.stdout + result.stderr


def test_the_refused_token_snippet_catches_client_closed_error(jwt_server_port: int) -> None:
    """Exactly the snippet docs/client.md shows: ``except ClientClosedError`` around
    ``async with connect(...)`` catches a 401, and nothing else reaches stderr."""
    (code,) = [
        c for p, c in PYTHON if p == "client.md" and "except wsclient.ClientClosedError" in c
    ]
    result = run_program(code, jwt_server_port, seconds=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "the server refused us: rejected with HTTP 401\n"
    assert result.stderr == ""


def test_the_load_then_subscribe_recipe_shows_every_order(server_port: int) -> None:
    """docs/delivery.md's recipe: the order saved while the page loaded comes by the
    subscription from the position, and the one in the state is shown once."""
    (code,) = [c for p, c in PYTHON if p == "delivery.md" and "render_orders" in c]
    result = run_program(code, server_port, seconds=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[1, 2]\n"


SERVERS = [(p, c) for p, c in PYTHON if "triows.serve" in c]


@pytest.mark.parametrize(("page", "code"), SERVERS, ids=ids(SERVERS))
async def test_embedded_servers_run(page: str, code: str) -> None:
    """The embedding snippets start, serve, and stop (the clock example forever: it is
    checked by subscribing, then interrupted)."""
    port = free_port()
    code = code.replace("port=8080", f"port={port}")
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        if "clock" in code:
            from trio_websocket import HandshakeError, open_websocket_url

            with trio.fail_after(15):
                while True:
                    try:
                        async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
                            await ws.get_message()
                            await ws.send_message(
                                json.dumps({"type": "subscribe", "channel": "clock"})
                            )
                            await ws.get_message()
                            tick = json.loads(await ws.get_message())
                            break
                    except (OSError, HandshakeError):  # not listening yet
                        await trio.sleep(0.1)
            # Wall time a reader can read, not trio's monotonic clock.
            assert re.fullmatch(r"\d\d:\d\d:\d\d", tick["data"]["now"]), tick
            process.send_signal(2)
        with trio.fail_after(20):
            code_ = await process.wait()
        assert process.stderr is not None
        err = (await process.stderr.receive_some(1 << 16) or b"").decode()
        assert "Traceback" not in err, err
        assert code_ == 0  # Ctrl-C too: the snippets say how to stop without a traceback
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_the_http_snippets_run(server_port: int) -> None:
    """The Django helper publishes for real; the FastAPI handler too, with FastAPI stubbed
    (its decorator is all the snippet needs of it)."""
    django, fastapi = [c for p, c in PYTHON if p == "http.md" and "import httpx" in c]
    url = f"127.0.0.1:{server_port}"
    result = run_program(django, server_port, seconds=20)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 1

    class FastAPI:
        def post(self, path: str):  # type: ignore[no-untyped-def]
            return lambda function: function

    stub = types.ModuleType("fastapi")
    stub.FastAPI = FastAPI  # type: ignore[attr-defined]
    stub.Header = lambda default=None: default  # type: ignore[attr-defined]
    sys.modules["fastapi"] = stub
    os.environ["TRIOWS_API_KEY"] = KEY
    try:
        namespace: dict[str, object] = {}
        exec(compile(fastapi.replace("127.0.0.1:8080", url), "http.md", "exec"), namespace)
        handler = namespace["post_message"]

        async def call() -> dict[str, int]:
            return await handler("lobby", "hi")  # type: ignore[operator, no-any-return]

        import anyio

        answer = anyio.run(call, backend="asyncio")
        assert answer["seq"] >= 1
        assert_the_fastapi_handler_retries_safely(namespace)
    finally:
        del sys.modules["fastapi"]
        os.environ.pop("TRIOWS_API_KEY", None)


def assert_the_fastapi_handler_retries_safely(namespace: dict[str, object]) -> None:
    """The documented FastAPI handler waits longer than the server takes to answer 202, and
    retries with the same key on no answer, 503 and 202: a timeout on the caller's side
    used to raise (and the caller's retry minted a new key: published twice)."""
    import anyio
    import httpx

    from triows import Config

    client = namespace["triows"]
    assert isinstance(client, httpx.AsyncClient)
    assert client.timeout.read is not None
    assert client.timeout.read > Config().handshake_timeout
    keys: list[str] = []
    replies = iter([0, 503, 202, 200])  # 0: no answer in time

    def answer(request: httpx.Request) -> httpx.Response:
        keys.append(json.loads(request.content)["idempotency_key"])
        reply = next(replies)
        if not reply:
            raise httpx.ReadTimeout("no answer in time", request=request)
        body = {"seq": 7} if reply == 200 else {"error": "not yet", "outcome": "unknown"}
        return httpx.Response(reply, json=body)

    namespace["triows"] = httpx.AsyncClient(
        transport=httpx.MockTransport(answer), base_url="http://x"
    )
    import asyncio

    # The handler's backoff, without its seconds (its globals are the namespace).
    namespace["asyncio"] = types.SimpleNamespace(sleep=lambda seconds: asyncio.sleep(0))
    handler = namespace["post_message"]

    async def call() -> dict[str, int]:
        return await handler("lobby", "hi", "caller-key-1")  # type: ignore[operator, no-any-return]

    assert anyio.run(call, backend="asyncio") == {"seq": 7}
    assert keys == ["caller-key-1"] * 4


def test_the_triows_api_snippets_run(server_port: int) -> None:
    """docs/http.md's triows.api snippets publish for real: Django's as pasted, FastAPI's and
    Celery's with their framework stubbed (a decorator is all they need of it)."""
    django, fastapi, celery = [c for p, c in PYTHON if p == "http.md" and "triows.api" in c]
    result = run_program(django, server_port, seconds=20)
    assert result.returncode == 0, result.stderr
    first = int(result.stdout)
    result = run_program(django, server_port, seconds=20)  # the same key: the same seq
    assert int(result.stdout) == first

    class FastAPI:
        def post(self, path: str):  # type: ignore[no-untyped-def]
            return lambda function: function

    class Task:
        def retry(self, exc: Exception, countdown: float) -> Exception:
            raise AssertionError(f"retried: {exc}")

    def shared_task(**options: object):  # type: ignore[no-untyped-def]
        return lambda function: lambda *args: function(Task(), *args)

    stubs: dict[str, dict[str, object]] = {
        "fastapi": {"FastAPI": FastAPI, "Header": lambda default=None: default},
        "celery": {"shared_task": shared_task},
    }
    for name, attributes in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module
    os.environ["TRIOWS_API_KEY"] = KEY
    url = f"127.0.0.1:{server_port}"
    try:
        namespace: dict[str, object] = {}
        exec(compile(fastapi.replace("127.0.0.1:8080", url), "http.md", "exec"), namespace)
        handler = namespace["post_message"]

        async def call() -> dict[str, int]:
            return await handler("lobby", "hi", "fastapi-key-1")  # type: ignore[operator, no-any-return]

        import anyio

        seq = anyio.run(call, backend="asyncio")["seq"]
        assert anyio.run(call, backend="asyncio")["seq"] == seq
        namespace = {}
        exec(compile(celery.replace("127.0.0.1:8080", url), "http.md", "exec"), namespace)
        notify = namespace["notify"]
        assert notify("jobs", {"done": 1}, "job-1") == notify("jobs", {"done": 1}, "job-1")  # type: ignore[operator]
    finally:
        for name in stubs:
            del sys.modules[name]
        os.environ.pop("TRIOWS_API_KEY", None)


def test_the_outbox_snippet_writes_a_row(tmp_path: Path) -> None:
    """docs/http.md's outbox snippet, run where the reader runs it (examples/ importable):
    each run commits the order and one message in the outbox together."""
    (code,) = [c for p, c in PYTHON if p == "http.md" and "outbox_relay" in c]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "examples")}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, timeout=30)
    import sqlite3

    db = sqlite3.connect(tmp_path / "app.db")
    rows = db.execute("SELECT channel, data FROM triows_outbox").fetchall()
    assert rows == [("orders.7", '{"id": 42, "status": "paid"}')] * 2
    assert db.execute("SELECT status FROM orders").fetchall() == [("paid",)]


SHELL = blocks("sh")


def commands(script: str) -> list[str]:
    joined = script.replace("\\\n", " ")
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")
    ]


@pytest.mark.parametrize(("page", "script"), SHELL, ids=ids(SHELL))
def test_shell_snippets(page: str, script: str, server_port: int) -> None:
    for command in commands(script):
        for part in command.split("&&"):
            words = shlex.split(part.replace("&", " ").strip())
            if "-m" in words and "triows" in words:
                args = words[words.index("triows") + 1 :]
                if args[:1] == ["top"]:
                    from triows._ops.top import main as top

                    url = f"http://127.0.0.1:{server_port}"
                    top_args = [a if "8080" not in a else url for a in args[1:]]
                    assert top([*top_args, "--api-key", KEY, "--once"]) == 0
                else:
                    parse_config(args, {})  # exits 2 with the reason on a bad flag
        if command.startswith("curl"):
            if shutil.which("curl") is None:
                pytest.skip("curl is not installed")
            line = command.replace("127.0.0.1:8080", f"127.0.0.1:{server_port}")
            result = subprocess.run(
                ["bash", "-c", line],
                capture_output=True,
                text=True,
                timeout=20,
                env={**os.environ, "TRIOWS_API_KEY": KEY},
            )
            assert result.returncode == 0, result.stderr
            assert '"error"' not in result.stdout, result.stdout


JSON = blocks("json")


@pytest.mark.parametrize(("page", "text"), JSON, ids=ids(JSON))
def test_json_snippets_parse(page: str, text: str) -> None:
    try:
        json.loads(text)
    except ValueError:
        for line in text.splitlines():  # protocol frames: one per line
            if line.strip():
                json.loads(line)


def test_every_page_is_read() -> None:
    assert len(PYTHON) >= 8
    assert textwrap.dedent(PAGES[0].read_text()).startswith("# triows")
    assert triows.__version__
