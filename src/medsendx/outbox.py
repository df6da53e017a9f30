"""The durable delivery queue: one SQLite row per de-identified object and destination.

States::

    queued --claim--> sending --peer stored it--> sent
       ^                 |  \\--peer refused it--> failed   (permanent, with the reason)
       |  transient fault|
       +-----backoff-----+

* Every state change is one SQLite transaction in WAL mode with ``synchronous=FULL``, so
  a ``kill -9`` or a power cut at any instant leaves each row in exactly one state.
* A row left in ``sending`` by a process that died is handed out again (its owner pid is
  gone or its lease ran out). That is safe because every transport is idempotent: sending
  the same SOP Instance UID twice leaves one copy at the peer.
* Transient faults are retried forever with capped exponential backoff and full jitter (a
  truck may be offline all day); only a peer's explicit refusal makes a row ``failed``.
* Order: triage priority first (higher first, unknown priority after known), then oldest.

Where the files live: :meth:`Outbox.enqueue` takes ownership of the de-identified file and
moves it into ``<folder of the database>/outgoing/`` (callers may write there directly,
see :attr:`Outbox.spool_dir`). The file is deleted once ``sent`` is committed and no other
pending row needs it; a ``failed`` row keeps its file so that ``queue retry`` can resend it,
``queue purge`` removes both.

Destinations are stored without credentials (``redact_url``): a password or token in a
destination URL stays in the settings and in memory, never in this database.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from medsendx.fsutil import fsync_dir, is_valid_uid, pid_alive, private_dir, remove_stale_temps, sha256_file
from medsendx.sqlitedb import open_sqlite

STATES = ("queued", "sending", "sent", "failed")
PENDING_STATES = ("queued", "sending")
# A claimed row whose owner process is still alive is handed out again only after this.
DEFAULT_LEASE_SECONDS = 15 * 60

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id                 INTEGER PRIMARY KEY,
    sop_instance_uid   TEXT    NOT NULL,
    study_instance_uid TEXT    NOT NULL,
    destination        TEXT    NOT NULL,
    path               TEXT    NOT NULL,
    size               INTEGER NOT NULL,
    sha256             TEXT    NOT NULL,
    priority           INTEGER,
    state              TEXT    NOT NULL CHECK (state IN ('queued', 'sending', 'sent', 'failed')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    transient_faults   INTEGER NOT NULL DEFAULT 0,
    last_error         TEXT,
    next_attempt_at    REAL    NOT NULL,
    enqueued_at        REAL    NOT NULL,
    updated_at         REAL    NOT NULL,
    sent_at            REAL,
    owner              TEXT,
    lease_until        REAL,
    wire_bytes         INTEGER NOT NULL DEFAULT 0,
    transfer_state     TEXT,
    UNIQUE (sop_instance_uid, destination)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_path ON outbox (path);
-- Totals since the outbox was created, changed in the same transaction as the row whose
-- outcome they count: they never go down (``queue purge`` forgets rows, not totals).
CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

# The durable totals (exported as Prometheus counters).
TOTALS = ("sent", "failed", "retries", "wire_bytes", "sent_raw_bytes")


@dataclass(frozen=True)
class OutboxItem:
    """One row of the outbox, as handed to a transport."""

    id: int
    sop_instance_uid: str
    study_instance_uid: str
    destination: str
    path: Path
    size: int
    sha256: str
    priority: int | None
    state: str
    attempts: int
    transient_faults: int
    last_error: str | None
    next_attempt_at: float
    enqueued_at: float
    sent_at: float | None
    wire_bytes: int
    transfer_state: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "OutboxItem":
        return cls(
            id=row["id"],
            sop_instance_uid=row["sop_instance_uid"],
            study_instance_uid=row["study_instance_uid"],
            destination=row["destination"],
            path=Path(row["path"]),
            size=row["size"],
            sha256=row["sha256"],
            priority=row["priority"],
            state=row["state"],
            attempts=row["attempts"],
            transient_faults=row["transient_faults"],
            last_error=row["last_error"],
            next_attempt_at=row["next_attempt_at"],
            enqueued_at=row["enqueued_at"],
            sent_at=row["sent_at"],
            wire_bytes=row["wire_bytes"],
            transfer_state=json.loads(row["transfer_state"]) if row["transfer_state"] else None,
        )


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    ceiling = min(cap, base * (2 ** max(0, min(attempt - 1, 62))))
    return (rng or random).uniform(0.0, ceiling)


def _stored_destination(destination: str) -> str:
    """The form a destination is stored (and matched) in: credentials removed. The full URL
    stays in this process's memory (:func:`medsendx.transport.base.remember_destination`)
    and in the settings, never in the database."""
    from medsendx.transport.base import remember_destination

    return remember_destination(destination)


def _owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# A temp file without a pid in its name older than this cannot be a write in progress.
STALE_FOREIGN_TEMP_SECONDS = 3600.0


def _owner_alive(owner: str | None) -> bool:
    """Is the process that claimed a row still running (on this host)?"""
    if not owner:
        return False
    host, _, pid_text = owner.rpartition(":")
    if host != socket.gethostname():
        return True  # cannot tell for another host: rely on the lease
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    return pid_alive(pid)


class Outbox:
    """The durable queue. Safe to use from several threads and processes at once."""

    def __init__(self, db_path: str | os.PathLike[str], *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        self.db_path = Path(db_path)
        private_dir(self.db_path.parent)
        self.spool_dir = private_dir(self.db_path.parent / "outgoing")
        self.lease_seconds = lease_seconds
        self._owner = _owner_id()
        self._local = threading.local()
        self._all_connections: list[sqlite3.Connection] = []
        self._connect().executescript(_SCHEMA)
        self._seed_totals()
        # Half-made spool copies of killed processes. Every metrics scrape opens an Outbox
        # while the de-identifier may be writing into the spool: its temps carry its (live)
        # pid; temps without a pid go only when far too old to be a live write.
        remove_stale_temps(self.spool_dir, foreign_max_age=STALE_FOREIGN_TEMP_SECONDS)

    # --- plumbing -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # One connection per thread, kept open: usable from any thread, and no WAL
        # checkpoint on every close. Every public method is one self-contained transaction.
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        # (A connection inherited through fork() must not be used: SQLite forbids it.)
        conn = open_sqlite(self.db_path, synchronous="FULL")
        conn.row_factory = sqlite3.Row
        self._local.conn = conn
        self._local.pid = os.getpid()
        self._all_connections.append(conn)
        return conn

    def close(self) -> None:
        """Close this outbox's database connections (all threads)."""
        for conn in self._all_connections:
            conn.close()
        self._all_connections.clear()
        self._local = threading.local()

    def _seed_totals(self) -> None:
        """An outbox made before the totals existed starts them from its rows (once)."""
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM totals LIMIT 1").fetchone():
                return
            row = conn.execute(
                """SELECT COALESCE(SUM(state = 'sent'), 0) AS sent, COALESCE(SUM(state = 'failed'), 0) AS failed,
                          COALESCE(SUM(transient_faults), 0) AS retries, COALESCE(SUM(wire_bytes), 0) AS wire_bytes,
                          COALESCE(SUM(CASE WHEN state = 'sent' THEN size END), 0) AS sent_raw_bytes FROM outbox"""
            ).fetchone()
            conn.executemany("INSERT OR IGNORE INTO totals(name, value) VALUES(?, ?)",
                             [(name, int(row[name])) for name in TOTALS])

    @staticmethod
    def _count(conn: sqlite3.Connection, **amounts: int) -> None:
        conn.executemany(
            "INSERT INTO totals(name, value) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            [(name, int(amount)) for name, amount in amounts.items() if amount],
        )

    def totals(self) -> dict[str, int]:
        """Durable totals: objects ``sent`` and ``failed`` (refusals), transient ``retries``,
        ``wire_bytes`` and ``sent_raw_bytes``. They only ever grow."""
        with self._transaction() as conn:
            rows = dict(conn.execute("SELECT name, value FROM totals").fetchall())
        return {name: int(rows.get(name, 0)) for name in TOTALS}

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # --- filling the queue ------------------------------------------------------------------
    def enqueue(
        self,
        path: str | os.PathLike[str],
        *,
        sop_instance_uid: str,
        study_instance_uid: str,
        destination: str,
        priority: int | None = None,
    ) -> bool:
        """Queue a de-identified file for ``destination``; the outbox takes the file over.

        On success the file at ``path`` is gone (it lives in :attr:`spool_dir` now). Returns
        False when this SOP Instance UID is already queued, being sent, sent or failed for
        that destination; ``path`` is then removed only if it holds exactly the bytes
        already queued (or lies in the spool unused), else left to the caller.
        """
        source = Path(path)
        destination = _stored_destination(destination)
        with self._transaction() as conn:
            exists = conn.execute(
                "SELECT sha256 FROM outbox WHERE sop_instance_uid = ? AND destination = ?",
                (sop_instance_uid, destination),
            ).fetchone()
        if exists:
            self._drop_duplicate(source, exists["sha256"])
            return False
        # Crash-safe order: (1) the file appears complete in the spool, (2) the row is
        # committed, (3) the caller's file goes. A kill before (2) leaves the caller's file in
        # place, so enqueueing it again after the restart works; a kill before (3) leaves a
        # copy that a second enqueue (refused as a duplicate) cleans up.
        spooled = self._spool(source, sop_instance_uid, destination)
        size = spooled.stat().st_size
        digest = sha256_file(spooled)
        now = time.time()
        with self._transaction() as conn:
            cursor = conn.execute(
                """INSERT OR IGNORE INTO outbox (sop_instance_uid, study_instance_uid, destination, path,
                   size, sha256, priority, state, next_attempt_at, enqueued_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)""",
                (sop_instance_uid, study_instance_uid, destination, str(spooled), size, digest,
                 priority, now, now, now),
            )
            inserted = cursor.rowcount == 1
        if not inserted:  # another process enqueued it between our check and insert
            self._drop_if_orphan(spooled)
        elif spooled != source:
            source.unlink(missing_ok=True)
        return inserted

    def _spool_name(self, sop_instance_uid: str, destination: str) -> Path:
        # The name comes from the (new, de-identified) UID only; one file per destination
        # so that deleting after one destination is sent never starves another.
        # (The de-identifier only makes valid UIDs; this guards any other caller.)
        if not is_valid_uid(sop_instance_uid):
            raise ValueError("SOP Instance UID is not a valid UID: refused as a spool file name")
        tag = hashlib.sha256(destination.encode()).hexdigest()[:10]
        return self.spool_dir / f"{sop_instance_uid}.{tag}.dcm"

    def _spool(self, source: Path, sop_instance_uid: str, destination: str) -> Path:
        """Put a complete copy of ``source`` at its spool name (a hard link when possible)."""
        target = self._spool_name(sop_instance_uid, destination)
        if source.resolve() == target.resolve():
            return target
        tmp = self.spool_dir / f".tmp-{os.getpid()}-{target.name}"
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)  # same filesystem: no copy, and the data is already on disk
        except OSError:
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(self.spool_dir)
        return target

    def _drop_duplicate(self, source: Path, queued_sha256: str) -> None:
        """A refused duplicate: a spool file nobody needs goes; a caller's file goes only
        when it holds exactly the bytes already queued (what a kill between commit and
        unlink in :meth:`enqueue` leaves behind)."""
        try:
            in_spool = source.resolve().parent == self.spool_dir.resolve()
        except OSError:
            return
        if in_spool:
            self._drop_if_orphan(source)
        elif source.is_file() and sha256_file(source) == queued_sha256:
            source.unlink(missing_ok=True)

    @staticmethod
    def _still_needed(conn: sqlite3.Connection, path: str) -> bool:
        """Does a row that is not ``sent`` (queued, sending, failed) name this spool file?"""
        return conn.execute("SELECT 1 FROM outbox WHERE path = ? AND state != 'sent'", (path,)).fetchone() is not None

    def _drop_if_orphan(self, path: Path) -> None:
        """Remove a spool file that no pending or failed row refers to."""
        try:
            if path.resolve().parent != self.spool_dir.resolve():
                return  # not ours: never delete a caller's file
        except OSError:
            return
        with self._transaction() as conn:
            used = self._still_needed(conn, str(path))
        if not used:
            path.unlink(missing_ok=True)

    def remove_sent_leftovers(self) -> int:
        """Delete spool files whose rows are all ``sent``: what a kill between the ``sent``
        commit and the unlink in :meth:`mark_sent` leaves behind. Files no row names yet
        (a de-identifier's output on its way to :meth:`enqueue`) are never touched."""
        removed = 0
        for path in self.spool_dir.iterdir():
            if path.name.startswith(".tmp-") or not path.is_file():
                continue
            with self._transaction() as conn:
                named = conn.execute("SELECT 1 FROM outbox WHERE path = ?", (str(path),)).fetchone()
                leftover = named is not None and not self._still_needed(conn, str(path))
            if leftover:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    # --- handing work to the deliverer -----------------------------------------------------
    def claim(self, *, limit: int = 16, destination: str | None = None, now: float | None = None) -> list[OutboxItem]:
        """Move up to ``limit`` due rows to ``sending`` (in priority order) and return them.

        Rows left in ``sending`` by a dead process are due again at once.
        """
        now = time.time() if now is None else now
        if destination is not None:
            destination = _stored_destination(destination)
        with self._transaction() as conn:
            self._reclaim_orphans(conn, now)
            params: list[Any] = [now]
            where = "state = 'queued' AND next_attempt_at <= ?"
            if destination is not None:
                where += " AND destination = ?"
                params.append(destination)
            rows = conn.execute(
                f"""SELECT id FROM outbox WHERE {where}
                    ORDER BY priority IS NULL, priority DESC, enqueued_at, id LIMIT ?""",
                (*params, limit),
            ).fetchall()
            ids = [row["id"] for row in rows]
            for row_id in ids:
                conn.execute(
                    """UPDATE outbox SET state = 'sending', owner = ?,
                       lease_until = ?, updated_at = ? WHERE id = ?""",
                    (self._owner, now + self.lease_seconds, now, row_id),
                )
            items = [self._get(conn, row_id) for row_id in ids]
        return items

    def _reclaim_orphans(self, conn: sqlite3.Connection, now: float) -> None:
        for row in conn.execute("SELECT id, owner, lease_until FROM outbox WHERE state = 'sending'").fetchall():
            if row["owner"] == self._owner:
                continue
            if (row["lease_until"] or 0) < now or not _owner_alive(row["owner"]):
                conn.execute(
                    "UPDATE outbox SET state = 'queued', owner = NULL, lease_until = NULL, next_attempt_at = ?,"
                    " updated_at = ? WHERE id = ?",
                    (now, now, row["id"]),
                )

    def release_own_claims(self) -> int:
        """Put this process's ``sending`` rows back to ``queued`` (clean shutdown)."""
        now = time.time()
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE outbox SET state = 'queued', owner = NULL, lease_until = NULL, updated_at = ?"
                " WHERE state = 'sending' AND owner = ?",
                (now, self._owner),
            )
            return cursor.rowcount

    def _get(self, conn: sqlite3.Connection, row_id: int) -> OutboxItem:
        return OutboxItem.from_row(conn.execute("SELECT * FROM outbox WHERE id = ?", (row_id,)).fetchone())

    # --- outcomes ----------------------------------------------------------------------------
    def mark_sent(self, item_id: int, *, wire_bytes: int = 0) -> None:
        """The peer holds the object: commit ``sent``, then delete the spooled file."""
        now = time.time()
        with self._transaction() as conn:
            row = conn.execute("SELECT path, size, state FROM outbox WHERE id = ?", (item_id,)).fetchone()
            conn.execute(
                """UPDATE outbox SET state = 'sent', sent_at = ?, updated_at = ?, last_error = NULL,
                   owner = NULL, lease_until = NULL, transfer_state = NULL, wire_bytes = wire_bytes + ?,
                   attempts = attempts + 1 WHERE id = ?""",
                (now, now, wire_bytes, item_id),
            )
            if row is not None:
                first = row["state"] != "sent"  # a second report of the same delivery counts once
                self._count(conn, sent=int(first), sent_raw_bytes=row["size"] if first else 0, wire_bytes=wire_bytes)
            still_used = row is not None and self._still_needed(conn, row["path"])
        if row is not None and not still_used:
            Path(row["path"]).unlink(missing_ok=True)

    def mark_retry(self, item_id: int, reason: str, *, delay: float, wire_bytes: int = 0) -> None:
        """A transient fault: back to ``queued``, due again after ``delay`` seconds."""
        now = time.time()
        with self._transaction() as conn:
            changed = conn.execute(
                """UPDATE outbox SET state = 'queued', last_error = ?, next_attempt_at = ?, updated_at = ?,
                   transient_faults = transient_faults + 1, attempts = attempts + 1, owner = NULL,
                   lease_until = NULL, wire_bytes = wire_bytes + ? WHERE id = ? AND state = 'sending'""",
                (reason, now + delay, now, wire_bytes, item_id),
            ).rowcount
            if changed:
                self._count(conn, retries=1, wire_bytes=wire_bytes)

    def mark_failed(self, item_id: int, reason: str, *, wire_bytes: int = 0) -> None:
        """The peer refused the object for good: ``failed`` with its reason; never retried
        automatically (``queue retry`` re-queues it)."""
        now = time.time()
        with self._transaction() as conn:
            changed = conn.execute(
                """UPDATE outbox SET state = 'failed', last_error = ?, updated_at = ?, owner = NULL,
                   lease_until = NULL, wire_bytes = wire_bytes + ?, attempts = attempts + 1
                   WHERE id = ? AND state != 'failed'""",
                (reason, now, wire_bytes, item_id),
            ).rowcount
            if changed:
                self._count(conn, failed=1, wire_bytes=wire_bytes)

    def save_transfer_state(self, item_id: int, state: dict[str, Any] | None) -> None:
        """Persist a transport's resumption data (an S3 UploadId and its finished parts)."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE outbox SET transfer_state = ?, updated_at = ? WHERE id = ?",
                (json.dumps(state) if state is not None else None, time.time(), item_id),
            )

    # --- looking and steering -----------------------------------------------------------------
    def counts(self, destination: str | None = None) -> dict[str, int]:
        """Number of rows per state (every state present, zero when empty), for one
        destination or all."""
        out = dict.fromkeys(STATES, 0)
        sql, params = "SELECT state, COUNT(*) AS n FROM outbox", ()
        if destination is not None:
            sql, params = sql + " WHERE destination = ?", (_stored_destination(destination),)
        with self._transaction() as conn:
            for row in conn.execute(sql + " GROUP BY state", params):
                out[row["state"]] = row["n"]
        return out

    def destinations(self) -> dict[str, dict[str, int]]:
        """{destination: counts per state} over the whole outbox."""
        out: dict[str, dict[str, int]] = {}
        with self._transaction() as conn:
            rows = conn.execute("SELECT destination, state, COUNT(*) AS n FROM outbox GROUP BY destination, state")
            for row in rows:
                out.setdefault(row["destination"], dict.fromkeys(STATES, 0))[row["state"]] = row["n"]
        return out

    def items(self, *, state: str | None = None, destination: str | None = None, limit: int | None = None) -> list[OutboxItem]:
        """Rows in delivery order (pending first by priority and age)."""
        clauses, params = [], []
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        if destination is not None:
            clauses.append("destination = ?")
            params.append(_stored_destination(destination))
        sql = "SELECT * FROM outbox"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY priority IS NULL, priority DESC, enqueued_at, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._transaction() as conn:
            return [OutboxItem.from_row(row) for row in conn.execute(sql, params)]

    def get(self, item_id: int) -> OutboxItem | None:
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM outbox WHERE id = ?", (item_id,)).fetchone()
        return OutboxItem.from_row(row) if row else None

    def due_by_destination(self, now: float | None) -> dict[str, float]:
        """{destination: earliest next attempt} over queued rows (due by ``now`` when given),
        counting rows a dead process left in ``sending`` as due."""
        with self._transaction() as conn:
            self._reclaim_orphans(conn, time.time())
            sql = "SELECT destination, MIN(next_attempt_at) AS t FROM outbox WHERE state = 'queued'"
            params: tuple[Any, ...] = ()
            if now is not None:
                sql += " AND next_attempt_at <= ?"
                params = (now,)
            rows = conn.execute(sql + " GROUP BY destination ORDER BY t", params).fetchall()
        return {row["destination"]: row["t"] for row in rows}

    def retry(self, *, failed: bool = True, waiting: bool = True) -> int:
        """Make rows due now: ``failed`` ones (re-queued) and/or ``queued`` ones in backoff."""
        now = time.time()
        changed = 0
        with self._transaction() as conn:
            if failed:
                changed += conn.execute(
                    "UPDATE outbox SET state = 'queued', next_attempt_at = ?, updated_at = ? WHERE state = 'failed'",
                    (now, now),
                ).rowcount
            if waiting:
                changed += conn.execute(
                    "UPDATE outbox SET next_attempt_at = ?, updated_at = ? WHERE state = 'queued' AND next_attempt_at > ?",
                    (now, now, now),
                ).rowcount
        return changed

    def purge(self, *, states: tuple[str, ...] = ("sent",)) -> int:
        """Delete rows in ``states`` (default: the ``sent`` history) and their spooled files."""
        bad = set(states) - set(STATES)
        if bad or "sending" in states:
            raise ValueError("purge accepts 'sent', 'failed' and 'queued'")
        marks = ",".join("?" * len(states))
        with self._transaction() as conn:
            paths = [Path(r["path"]) for r in conn.execute(f"SELECT path FROM outbox WHERE state IN ({marks})", states)]
            removed = conn.execute(f"DELETE FROM outbox WHERE state IN ({marks})", states).rowcount
        for path in paths:
            self._drop_if_orphan(path)
        return removed

    def stats(self) -> dict[str, Any]:
        """Figures for summaries and metrics: ``raw_bytes`` (size of sent objects),
        ``wire_bytes`` (bytes put on the wire, failed attempts included), ``retries``
        (transient faults), ``retried_objects`` and ``last_sent_at`` (epoch or None)."""
        with self._transaction() as conn:
            row = conn.execute(
                """SELECT COALESCE(SUM(CASE WHEN state = 'sent' THEN size END), 0) AS raw_bytes,
                          COALESCE(SUM(wire_bytes), 0) AS wire_bytes,
                          COALESCE(SUM(transient_faults), 0) AS retries,
                          COALESCE(SUM(CASE WHEN transient_faults > 0 THEN 1 END), 0) AS retried_objects,
                          MAX(sent_at) AS last_sent_at
                   FROM outbox"""
            ).fetchone()
        return dict(row)
