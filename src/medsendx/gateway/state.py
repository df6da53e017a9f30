"""The gateway's own durable state: counters, dropped files already handled, held studies,
streamed studies waiting for their triage results.

One SQLite database (WAL) in the state directory, next to the outbox. Every change is one
transaction, so a ``kill -9`` leaves either the old or the new value. Nothing identifying
is stored here: files are known by the SHA-256 of their content, objects by the UIDs the
de-identifier made.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from medsendx.sqlitedb import open_sqlite

# The counters the gateway keeps across restarts (exported on /metrics and by `status`).
COUNTERS = (
    "received",  # objects accepted from a scanner (C-STORE) or a drop folder
    "received_bytes",  # their raw size
    "deidentified",  # objects de-identified and committed to the outbox (or held)
    "quarantined",  # objects that went to quarantine instead
    "duplicates",  # objects that were already queued or sent (a scanner re-sent them)
    "refused",  # C-STORE requests answered with a failure status
    "errors",  # pipeline failures of our own (the staged object is kept and retried)
    "results_seg",  # triage results queued with released or quiet studies: Segmentations,
    "results_sr",  # TID 1500 reports
    "results_kos",  # and Key Object Selections
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS seen (
    sha256 TEXT PRIMARY KEY, outcome TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS held (
    sop_instance_uid TEXT PRIMARY KEY, study_instance_uid TEXT NOT NULL,
    path TEXT NOT NULL, priority INTEGER, held_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS held_study ON held (study_instance_uid);
CREATE TABLE IF NOT EXISTS streamed (
    study_instance_uid TEXT PRIMARY KEY, last_at REAL NOT NULL, arrivals INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS received (item TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS retrying (
    item TEXT PRIMARY KEY, reason TEXT NOT NULL, since REAL NOT NULL, attempts INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class HeldObject:
    sop_instance_uid: str
    study_instance_uid: str
    path: Path
    priority: int | None
    held_at: float


class GatewayState:
    """Thread-safe access to ``gateway.sqlite3`` (one connection guarded by a lock)."""

    def __init__(self, db_path: Path) -> None:
        self._lock = threading.Lock()
        # NORMAL in WAL mode: every transaction is atomic, the last few may be lost on a power
        # cut. Fine for counters and hashes (a lost "seen" mark means one harmless re-run
        # that the outbox deduplicates); the scans themselves are made durable elsewhere,
        # and the writes whose loss is not harmless are synced (``hold``, ``stream``).
        self._db = open_sqlite(Path(db_path), synchronous="NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- counters ------------------------------------------------------------------------
    def add(self, name: str, amount: int = 1, **more: int) -> None:
        """Add to one counter, or several in one transaction (``add("received", 1, received_bytes=n)``)."""
        amounts = {name: amount, **more}
        unknown = set(amounts) - set(COUNTERS)
        if unknown:
            raise ValueError(f"unknown counter {sorted(unknown)}")
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO counters(name, value) VALUES(?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                list(amounts.items()),
            )
            self._db.execute("COMMIT")

    def count_received(self, item: str, size: int) -> bool:
        """Count one received object once: ``item`` names it (its staged file, or a dropped
        file's content hash), so that counting again after a restart changes nothing and
        an object staged just before a kill is counted when the next start finds it."""
        with self._lock:
            self._db.execute("BEGIN")
            fresh = self._db.execute("INSERT OR IGNORE INTO received(item, at) VALUES(?, ?)",
                                     (item, time.time())).rowcount == 1
            if fresh:
                self._db.executemany(
                    "INSERT INTO counters(name, value) VALUES(?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    [("received", 1), ("received_bytes", int(size))],
                )
            self._db.execute("COMMIT")
        return fresh

    def forget_received(self, item: str) -> None:
        """The object is done with (its staged file removed): its mark is not needed."""
        with self._lock:
            self._db.execute("DELETE FROM received WHERE item = ?", (item,))

    def counters(self) -> dict[str, int]:
        with self._lock:
            rows = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return {name: int(rows.get(name, 0)) for name in COUNTERS}

    # --- dropped files already handled (by content hash) ------------------------------------
    def seen(self, sha256: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT outcome FROM seen WHERE sha256 = ?", (sha256,)).fetchone()
        return row[0] if row else None

    def mark_seen(self, sha256: str, outcome: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO seen(sha256, outcome, at) VALUES(?, ?, ?)", (sha256, outcome, time.time())
            )

    # --- studies held until quiet ------------------------------------------------------------
    def hold(self, sop_instance_uid: str, study_instance_uid: str, path: Path, priority: int | None) -> None:
        # Synced: the staged input is deleted once this returns, so a held row lost in a
        # power cut would leave its de-identified scan on disk, never queued.
        with self._lock, self._synced():
            self._db.execute(
                "INSERT OR IGNORE INTO held VALUES(?, ?, ?, ?, ?)",
                (sop_instance_uid, study_instance_uid, str(path), priority, time.time()),
            )

    @contextmanager
    def _synced(self) -> Iterator[None]:
        """(Lock held.) The statements inside commit with ``synchronous=FULL``: they survive
        a power cut, unlike this connection's NORMAL default."""
        self._db.execute("PRAGMA synchronous=FULL")
        try:
            yield
        finally:
            self._db.execute("PRAGMA synchronous=NORMAL")

    def quiet_studies(self, quiet_seconds: float, now: float | None = None) -> list[str]:
        """Studies whose newest held object arrived at least ``quiet_seconds`` ago."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT study_instance_uid FROM held GROUP BY study_instance_uid HAVING MAX(held_at) <= ?",
                (now - quiet_seconds,),
            ).fetchall()
        return [r[0] for r in rows]

    def held_objects(self, study_instance_uid: str | None = None) -> list[HeldObject]:
        """Held objects (of one study), highest triage priority first, then oldest first."""
        query = "SELECT * FROM held"
        args: tuple = ()
        if study_instance_uid is not None:
            query += " WHERE study_instance_uid = ?"
            args = (study_instance_uid,)
        query += " ORDER BY COALESCE(priority, -1) DESC, held_at ASC"
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [HeldObject(r[0], r[1], Path(r[2]), r[3], r[4]) for r in rows]

    def release(self, sop_instance_uid: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM held WHERE sop_instance_uid = ?", (sop_instance_uid,))

    # --- streamed studies whose triage results wait until the study is quiet ----------------
    # A row means: images of the study were queued since its results were last built.
    # ``arrivals`` counts them, so that a build does not clear images that came meanwhile.
    def stream(self, study_instance_uid: str) -> None:
        """An image of the study was queued (streaming mode): its results are due once quiet."""
        now = time.time()
        with self._lock:
            if self._db.execute("UPDATE streamed SET last_at = ?, arrivals = arrivals + 1 WHERE study_instance_uid = ?",
                                (now, study_instance_uid)).rowcount:
                return
            # The one write here whose loss in a power cut matters (the study would never get
            # its results; a lost update or delete only builds them again): synced.
            with self._synced():
                self._db.execute("INSERT INTO streamed VALUES(?, ?, 1)", (study_instance_uid, now))

    def quiet_streamed(self, quiet_seconds: float, now: float | None = None) -> list[tuple[str, int]]:
        """(study, arrivals) of the streamed studies without a new image for ``quiet_seconds``,
        the longest quiet first."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT study_instance_uid, arrivals FROM streamed WHERE last_at <= ? ORDER BY last_at",
                (now - quiet_seconds,),
            ).fetchall()
        return [(r[0], int(r[1])) for r in rows]

    def results_built(self, study_instance_uid: str, arrivals: int) -> bool:
        """The study's results were built after its ``arrivals``-th image: done with it,
        unless more came meanwhile (then it stays, for a later release). True when done."""
        with self._lock:
            return self._db.execute(
                "DELETE FROM streamed WHERE study_instance_uid = ? AND arrivals = ?", (study_instance_uid, arrivals)
            ).rowcount == 1

    def results_waiting(self) -> int:
        """Streamed studies whose results are not built yet."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM streamed").fetchone()[0])

    # --- objects kept after a failure of our own (retried until they are safe) ----------------
    def mark_retrying(self, item: str, reason: str) -> None:
        """``item`` (a staged file or a dropped file's path) could not be committed or
        quarantined; it stays where it is and is retried. ``reason`` is our own words."""
        with self._lock:
            self._db.execute(
                "INSERT INTO retrying(item, reason, since, attempts) VALUES(?, ?, ?, 1) "
                "ON CONFLICT(item) DO UPDATE SET reason = excluded.reason, attempts = attempts + 1",
                (item, reason, time.time()),
            )

    def clear_retrying(self, item: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM retrying WHERE item = ?", (item,))

    def retrying(self) -> list[tuple[str, int]]:
        """(reason, objects) for the objects kept for retry, most frequent reason first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT reason, COUNT(*) FROM retrying GROUP BY reason ORDER BY COUNT(*) DESC").fetchall()
        return [(r[0], int(r[1])) for r in rows]
