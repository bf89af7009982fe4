"""The durable outbox: operations persisted in SQLite before they are sent.

An op moves ``pending`` -> ``in_flight`` (assigned to a batch) -> ``acked`` (the server applied
it, or already had it) or ``failed`` (the server rejected it, or the share is gone). A batch is
chosen once and written down: its id is derived from its op ids, so a retry, in this process or
after a restart, resends exactly the same batch with the same sequence numbers, and the server's
ledger answers it with the same acknowledgements. Transient failures count ``attempts`` and set
``next_retry_at`` (exponential backoff with jitter).

Each write is one transaction with ``synchronous=FULL``: once ``enqueue`` returns, the ops
survive a crash or a SIGKILL of the process.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudsession.client.ids import batch_id

PENDING, IN_FLIGHT, ACKED, FAILED = "pending", "in_flight", "acked", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS shares (
    name TEXT PRIMARY KEY,          -- server URL + session ID: one outbox serves many shares
    server TEXT NOT NULL,
    session_id TEXT NOT NULL,
    share_id TEXT,
    secret TEXT,
    epoch INTEGER NOT NULL DEFAULT 0,
    url TEXT,
    cursor INTEGER NOT NULL DEFAULT 0,   -- the highest cursor the server acknowledged
    next_seq INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS ops (
    op_id TEXT PRIMARY KEY,
    share TEXT NOT NULL REFERENCES shares(name),
    seq INTEGER NOT NULL,
    depends_on TEXT NOT NULL,       -- JSON list of op ids
    item TEXT NOT NULL,             -- the sync item, JSON
    state TEXT NOT NULL,
    batch_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_retry_at REAL NOT NULL DEFAULT 0,
    ack_cursor INTEGER,
    error TEXT
);
CREATE INDEX IF NOT EXISTS ops_by_state ON ops(share, state, seq);
CREATE TABLE IF NOT EXISTS marks (  -- "this input was already enqueued" (e.g. a file's hash)
    share TEXT NOT NULL,
    mark TEXT NOT NULL,
    PRIMARY KEY (share, mark)
);
"""


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempts: int) -> float:
        # Full jitter in the upper half keeps retries of many clients from moving in step.
        return float(min(self.cap, self.base * 2 ** max(attempts - 1, 0)) * random.uniform(0.5, 1.0))


@dataclass(slots=True)
class ShareRow:
    name: str
    server: str
    session_id: str
    share_id: str | None
    secret: str | None
    epoch: int
    url: str | None
    cursor: int


@dataclass(frozen=True, slots=True)
class NewOp:
    op_id: str
    item: dict[str, Any]
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: str
    envelopes: list[dict[str, Any]]
    attempts: int
    next_retry_at: float

    @property
    def op_ids(self) -> list[str]:
        return [e["op_id"] for e in self.envelopes]


class Outbox:
    def __init__(self, path: Path, *, backoff: Backoff = Backoff()) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.backoff = backoff
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- shares -------------------------------------------------------------------------------

    @staticmethod
    def share_name(server: str, session_id: str) -> str:
        return f"{server.rstrip('/')} {session_id}"

    def share(self, server: str, session_id: str) -> ShareRow:
        name = self.share_name(server, session_id)
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO shares(name, server, session_id) VALUES (?, ?, ?)", (name, server.rstrip("/"), session_id))
            row = db.execute("SELECT * FROM shares WHERE name = ?", (name,)).fetchone()
        return ShareRow(row["name"], row["server"], row["session_id"], row["share_id"], row["secret"], row["epoch"], row["url"], row["cursor"])

    def save_credentials(self, share: ShareRow, *, share_id: str, secret: str, url: str, epoch: int) -> None:
        share.share_id, share.secret, share.url, share.epoch = share_id, secret, url, epoch
        with self._tx() as db:
            db.execute(
                "UPDATE shares SET share_id = ?, secret = ?, url = ?, epoch = ? WHERE name = ?",
                (share_id, secret, url, epoch, share.name),
            )

    def forget(self, share: ShareRow) -> None:
        """Drop everything known about a share (to start over after it expired)."""
        with self._tx() as db:
            for table, column in (("ops", "share"), ("marks", "share"), ("shares", "name")):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (share.name,))

    # -- enqueue ------------------------------------------------------------------------------

    def enqueue(self, share: ShareRow, ops: list[NewOp], *, mark: str | None = None) -> bool:
        """Persist ops in order, atomically; False (nothing written) if ``mark`` was seen."""
        with self._tx() as db:
            if mark is not None:
                if db.execute("SELECT 1 FROM marks WHERE share = ? AND mark = ?", (share.name, mark)).fetchone():
                    return False
                db.execute("INSERT INTO marks(share, mark) VALUES (?, ?)", (share.name, mark))
            seq = db.execute("SELECT next_seq FROM shares WHERE name = ?", (share.name,)).fetchone()[0]
            db.executemany(
                "INSERT INTO ops(op_id, share, seq, depends_on, item, state) VALUES (?, ?, ?, ?, ?, ?)",
                [(op.op_id, share.name, seq + i, json.dumps(list(op.depends_on)), json.dumps(op.item), PENDING) for i, op in enumerate(ops)],
            )
            db.execute("UPDATE shares SET next_seq = ? WHERE name = ?", (seq + len(ops), share.name))
        return True

    # -- batches ------------------------------------------------------------------------------

    def next_batch(self, share: ShareRow, max_ops: int) -> Batch | None:
        """The batch to send: the one already in flight (resent as it was), else a new one of
        the oldest pending ops. None when nothing is left to deliver."""
        with self._tx() as db:
            first = db.execute(
                "SELECT batch_id FROM ops WHERE share = ? AND state = ? ORDER BY seq LIMIT 1", (share.name, IN_FLIGHT)
            ).fetchone()
            if first is not None:
                chosen = first["batch_id"]
            else:
                rows = db.execute(
                    "SELECT op_id FROM ops WHERE share = ? AND state = ? ORDER BY seq LIMIT ?", (share.name, PENDING, max_ops)
                ).fetchall()
                if not rows:
                    return None
                ids = [r["op_id"] for r in rows]
                chosen = batch_id(ids)
                db.executemany("UPDATE ops SET state = ?, batch_id = ? WHERE op_id = ?", [(IN_FLIGHT, chosen, i) for i in ids])
            rows = db.execute(
                "SELECT * FROM ops WHERE share = ? AND batch_id = ? AND state = ? ORDER BY seq", (share.name, chosen, IN_FLIGHT)
            ).fetchall()
        envelopes = [self._envelope(r) for r in rows]
        return Batch(chosen, envelopes, max(r["attempts"] for r in rows), max(r["next_retry_at"] for r in rows))

    @staticmethod
    def _envelope(row: sqlite3.Row) -> dict[str, Any]:
        envelope: dict[str, Any] = {"op_id": row["op_id"], "batch_id": row["batch_id"], "seq": row["seq"], "item": json.loads(row["item"])}
        depends_on = json.loads(row["depends_on"])
        if depends_on:
            envelope["depends_on"] = depends_on
        return envelope

    def record_answer(self, share: ShareRow, batch: Batch, answer: dict[str, Any]) -> None:
        """Store the server's acknowledgement of ``batch``: acked ops with their cursor, failed
        ops with the rejection reason."""
        with self._tx() as db:
            for ack in [*answer.get("applied", []), *answer.get("duplicates", [])]:
                db.execute(
                    "UPDATE ops SET state = ?, ack_cursor = ?, error = NULL WHERE op_id = ? AND share = ?",
                    (ACKED, ack["cursor"], ack["op_id"], share.name),
                )
            for rejection in answer.get("rejected", []):
                db.execute(
                    "UPDATE ops SET state = ?, error = ? WHERE op_id = ? AND share = ?",
                    (FAILED, f"rejected: {rejection['reason']}", rejection["op_id"], share.name),
                )
            share.cursor = max(share.cursor, int(answer.get("cursor", 0)))
            db.execute("UPDATE shares SET cursor = ? WHERE name = ?", (share.cursor, share.name))

    def retry_later(self, batch: Batch, error: str, *, now: float | None = None) -> float:
        """A transient failure: the same batch is due again after the backoff. Returns when."""
        attempts = batch.attempts + 1
        due = (time.time() if now is None else now) + self.backoff.delay(attempts)
        with self._tx() as db:
            db.executemany(
                "UPDATE ops SET attempts = ?, next_retry_at = ?, error = ? WHERE op_id = ?",
                [(attempts, due, error, op_id) for op_id in batch.op_ids],
            )
        return due

    def fail_batch(self, batch: Batch, error: str) -> None:
        with self._tx() as db:
            db.executemany("UPDATE ops SET state = ?, error = ? WHERE op_id = ?", [(FAILED, error, i) for i in batch.op_ids])

    def fail_undelivered(self, share: ShareRow, error: str) -> int:
        """Give up on every op not yet acknowledged (the share is gone)."""
        with self._tx() as db:
            return db.execute(
                "UPDATE ops SET state = ?, error = ? WHERE share = ? AND state IN (?, ?)", (FAILED, error, share.name, PENDING, IN_FLIGHT)
            ).rowcount

    def rewind(self, share: ShareRow, server_cursor: int) -> int:
        """After a redeem: if the server is behind what it acknowledged to us (restored from a
        backup, or deleted and re-created), everything it may have lost is sent again, in
        order, in fresh batches. Returns how many acknowledged ops went back to pending."""
        with self._tx() as db:
            if server_cursor >= share.cursor:
                return 0
            lost = db.execute(
                "UPDATE ops SET state = ?, batch_id = NULL, ack_cursor = NULL WHERE share = ? AND state = ? AND ack_cursor > ?",
                (PENDING, share.name, ACKED, server_cursor),
            ).rowcount
            db.execute("UPDATE ops SET state = ?, batch_id = NULL WHERE share = ? AND state = ?", (PENDING, share.name, IN_FLIGHT))
            share.cursor = server_cursor
            db.execute("UPDATE shares SET cursor = ? WHERE name = ?", (server_cursor, share.name))
        return lost

    # -- reporting ----------------------------------------------------------------------------

    def counts(self, share: ShareRow) -> dict[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) AS n FROM ops WHERE share = ? GROUP BY state", (share.name,)).fetchall()
        counts = {PENDING: 0, IN_FLIGHT: 0, ACKED: 0, FAILED: 0}
        counts.update({r["state"]: r["n"] for r in rows})
        return counts

    def failures(self, share: ShareRow, limit: int = 10) -> list[tuple[str, str]]:
        rows = self._db.execute(
            "SELECT op_id, error FROM ops WHERE share = ? AND state = ? ORDER BY seq LIMIT ?", (share.name, FAILED, limit)
        ).fetchall()
        return [(r["op_id"], r["error"]) for r in rows]
