"""Publishing from inside a database transaction: the outbox pattern, on sqlite3.

A message must go out if and only if the transaction that caused it commits, even when a
process dies at the worst moment. Publishing from the request handler cannot promise that: the
commit may fail after the publish, or the process may die between the commit and the publish.
So the application writes the message into an outbox table, in the same transaction as its
data (:func:`enqueue`); this relay posts each row to ``/api/publish`` with the row's id as the
``idempotency_key`` and deletes the row after the answer. A relay killed between the publish and
the delete publishes the row again when it restarts, with the same key: the server answers the
first publish's ``seq`` and delivers nothing twice (restart it within ``--dedupe-ttl``, 300 s).

    pip install triows[api]
    export TRIOWS_API_KEY=...              # the server's --api-key
    python examples/outbox_relay.py app.db --url http://127.0.0.1:8080

The application's side, in any transaction of its own::

    with db:  # one transaction: both rows or neither
        db.execute("INSERT INTO orders (id, customer) VALUES (?, ?)", (42, 7))
        enqueue(db, "orders.7", {"id": 42, "status": "paid"})

Rows go out in the order they were written. A row the server refuses for good (400: a bad
channel name; 413: data too large) moves to ``triows_outbox_failed`` with the reason, so that
one bad row cannot stop the others; an unreachable server leaves the rows where they are, tried
again every ``--interval`` seconds. Any other refusal (401: a wrong API key; 404: a wrong
``--url``) says nothing about the row: the relay stops (exit status 2) and leaves every row.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sqlite3
import sys
import time
from typing import Any

from triows.api import Client, RequestError, UnavailableError

log = logging.getLogger("outbox_relay")

#: Refusals about the row itself (its channel, its data): set it aside. Others (401, 403,
#: 404...) are about the relay's settings: stop, every row kept.
ROW_REFUSALS = frozenset({400, 413})

SCHEMA = """
CREATE TABLE IF NOT EXISTS triows_outbox (
    -- AUTOINCREMENT: an id is never used twice, even after the newest row is deleted (a
    -- reused id would be taken by the server for a retry of the message that had it before).
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    data TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS triows_outbox_failed (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    data TEXT NOT NULL,
    created REAL NOT NULL,
    reason TEXT NOT NULL
);
-- Names this outbox in its idempotency keys: a database made again starts its ids from 1.
CREATE TABLE IF NOT EXISTS triows_outbox_origin (origin TEXT NOT NULL);
"""


def create_outbox(db: sqlite3.Connection) -> None:
    """The outbox's tables (once; harmless again)."""
    with db:
        db.executescript(SCHEMA)
        if db.execute("SELECT count(*) FROM triows_outbox_origin").fetchone()[0] == 0:
            db.execute("INSERT INTO triows_outbox_origin VALUES (?)", (secrets.token_hex(6),))


def enqueue(db: sqlite3.Connection, channel: str, data: Any) -> int:
    """Add a message to the outbox, inside the caller's transaction (no commit here); its
    row id."""
    cursor = db.execute(
        "INSERT INTO triows_outbox (channel, data, created) VALUES (?, ?, ?)",
        (channel, json.dumps(data), time.time()),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def relay(db: sqlite3.Connection, api: Client, *, batch: int = 100) -> int:
    """Publish every row of the outbox, oldest first, deleting each after its answer; how
    many were published. Raises :class:`triows.api.UnavailableError` when the server cannot
    be reached (after the client's retries), :class:`triows.api.RequestError` when it refuses
    the relay rather than a row (401, 404...): the rows not yet answered stay."""
    (origin,) = db.execute("SELECT origin FROM triows_outbox_origin").fetchone()
    published = 0
    while True:
        rows = db.execute(
            "SELECT id, channel, data, created FROM triows_outbox ORDER BY id LIMIT ?", (batch,)
        ).fetchall()
        if not rows:
            return published
        for row_id, channel, data, created in rows:
            try:
                api.publish(channel, json.loads(data), idempotency_key=f"{origin}-{row_id}")
            except RequestError as exc:
                if exc.status not in ROW_REFUSALS:
                    raise  # not about this row: nothing set aside
                # Refused for good: set aside, go on with the rest.
                log.error("outbox row %d refused (%s): moved to triows_outbox_failed", row_id, exc)
                with db:
                    db.execute(
                        "INSERT INTO triows_outbox_failed VALUES (?, ?, ?, ?, ?)",
                        (row_id, channel, data, created, exc.reason),
                    )
                    db.execute("DELETE FROM triows_outbox WHERE id = ?", (row_id,))
                continue
            # Killed here, the row stays and is published again, with the same key: the
            # server answers the first publish, subscribers get it once.
            with db:
                db.execute("DELETE FROM triows_outbox WHERE id = ?", (row_id,))
            published += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Relay a sqlite outbox to triows.")
    parser.add_argument("database", help="the sqlite file the application writes")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the triows server")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between polls")
    parser.add_argument("--once", action="store_true", help="empty the outbox, then exit")
    parser.add_argument(
        "--retries", type=int, default=5, help="tries again of one publish before a pause"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # A long busy timeout: the application's transactions hold the database for a moment.
    db = sqlite3.connect(args.database, timeout=60)
    create_outbox(db)
    with Client(args.url, retries=args.retries) as api:  # the key from TRIOWS_API_KEY
        while True:
            try:
                count = relay(db, api)
                if count:
                    log.info("published %d", count)
            except RequestError as exc:
                log.error("triows refused the relay (%s): fix its settings; rows kept", exc)
                return 2
            except UnavailableError as exc:
                log.warning("triows unavailable (%s); trying again in %gs", exc, args.interval)
                if args.once:
                    return 1
            else:
                if args.once:
                    return 0
            time.sleep(args.interval)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C stops it without a traceback
        pass
