"""The worklist: one row per study, from the PACS's own objects, kept in a small SQLite cache.

The cache only saves the hub from asking the PACS for every report on every page view; it
holds nothing the PACS does not (except when the hub first saw a study, which orders
studies of equal priority) and can be deleted at any time: the next refresh rebuilds it.
A study is re-read when its QIDO-RS signature (instance count and modalities) changes,
so a report arriving after its images updates the row.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medsendx.sqlitedb import open_sqlite
from medsendx.hub.results import (
    DERIVED_MODALITIES,
    KOS_MODALITY,
    SEG_MODALITY,
    SR_MODALITY,
    read_key_objects,
    summarize_report,
)
from medsendx.hub.source import Source, SourceError, StudyInfo

log = logging.getLogger("medsendx.hub")

SCHEMA_VERSION = 1
READERS = 4  # studies read from the PACS at once when the cache is (re)built
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    signature TEXT NOT NULL,
    received REAL NOT NULL,          -- when this hub first saw the study (UTC epoch)
    received_day TEXT NOT NULL,      -- YYYY-MM-DD of received, for the date filter
    study_date TEXT, study_time TEXT,
    modality TEXT, station TEXT,
    priority INTEGER,                -- NULL: no report (yet)
    sort_priority INTEGER NOT NULL,  -- priority, -1 without a report: sorts last
    repeat_advised INTEGER NOT NULL,
    density REAL, composition TEXT,
    reasons TEXT NOT NULL, flags TEXT NOT NULL,  -- JSON lists
    objects INTEGER NOT NULL,
    detail TEXT NOT NULL             -- JSON: report groups, KOS, SEG and image references
);
CREATE INDEX IF NOT EXISTS studies_order ON studies (sort_priority DESC, received, study_uid);
CREATE INDEX IF NOT EXISTS studies_station ON studies (station, sort_priority DESC, received);
"""
LIST_COLUMNS = ("study_uid", "priority", "reasons", "flags", "repeat_advised", "modality", "station", "received",
                "study_date", "density", "composition", "objects")


def _connect(path: Path) -> sqlite3.Connection:
    return open_sqlite(path, synchronous="NORMAL")  # a cache: losing the last write costs a re-read


class WorklistCache:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._open()
        self.last_refresh: float | None = None
        self.last_error: str | None = None

    def _open(self) -> None:
        self._conn = _connect(self.path)
        self._inode = self.path.stat().st_ino
        version = None
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            version = int(row[0]) if row else None
        except sqlite3.DatabaseError:
            pass
        if version != SCHEMA_VERSION:  # a cache of another layout: start afresh
            self._conn.executescript("DROP TABLE IF EXISTS studies; DROP TABLE IF EXISTS meta;")
        self._conn.executescript(SCHEMA)
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def _reopen_if_deleted(self) -> None:
        """Someone deleted (or replaced) the cache file: start a new one, read from the PACS."""
        try:
            same = self.path.stat().st_ino == self._inode
        except FileNotFoundError:
            same = False
        if not same:
            with self._lock:
                old = self._conn
                self._open()
                old.close()

    # --- filling ---------------------------------------------------------------------
    def refresh(self, source: Source) -> int:
        """Bring the cache up to date with the source; returns the number of studies re-read."""
        self._reopen_if_deleted()
        try:
            studies = source.studies()
        except SourceError as exc:
            self.last_error = str(exc)
            raise
        known = dict(self._conn.execute("SELECT study_uid, signature FROM studies").fetchall())
        changed = [s for uid, s in studies.items() if known.get(uid) != s.signature]
        now = time.time()

        def read(info: StudyInfo) -> dict[str, Any] | None:
            try:
                return build_row(source, info)
            except SourceError as exc:
                self.last_error = str(exc)
                log.warning("study could not be read", extra={"fields": {"reason": str(exc)}})
                return None

        # A few studies at a time: each is a handful of small requests, mostly waiting for
        # the PACS (a first build of 10,000 studies is minutes one by one).
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(READERS) as pool:
            for row in pool.map(read, changed):
                if row is not None:
                    self._store(row, now)
        gone = set(known) - set(studies)
        if gone:
            with self._lock:
                self._conn.executemany("DELETE FROM studies WHERE study_uid = ?", [(u,) for u in gone])
        self.last_refresh = now
        self.last_error = None
        return len(changed)

    def _store(self, row: dict[str, Any], now: float) -> None:
        with self._lock:
            existing = self._conn.execute("SELECT received FROM studies WHERE study_uid = ?", (row["study_uid"],)).fetchone()
            received = existing[0] if existing else row.pop("received", None) or now
            row.pop("received", None)
            day = datetime.fromtimestamp(received, timezone.utc).strftime("%Y-%m-%d")
            priority = row["priority"]
            self._conn.execute(
                """INSERT OR REPLACE INTO studies (study_uid, signature, received, received_day, study_date, study_time,
                       modality, station, priority, sort_priority, repeat_advised, density, composition, reasons, flags,
                       objects, detail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                (row["study_uid"], row["signature"], received, day, row["study_date"], row["study_time"], row["modality"],
                 row["station"], priority, -1 if priority is None else int(priority), int(row["repeat_advised"]),
                 row["density"], row["composition"], json.dumps(row["reasons"]), json.dumps(row["flags"]),
                 row["objects"], json.dumps(row["detail"])),
            )

    def insert_rows(self, rows: list[dict[str, Any]]) -> None:
        """Rows built elsewhere (the benchmark fills 10,000 studies this way)."""
        now = time.time()
        for row in rows:
            self._store(dict(row), now)

    # --- reading ---------------------------------------------------------------------
    def worklist(self, *, station: str | None = None, modality: str | None = None, flag: str | None = None,
                 day: str | None = None, limit: int = 200, offset: int = 0) -> dict[str, Any]:
        where, params = [], []
        if station:
            where.append("station = ?")
            params.append(station)
        if modality:
            where.append("modality = ?")
            params.append(modality)
        if flag == "repeat":
            where.append("repeat_advised = 1")
        elif flag == "report":
            where.append("priority IS NOT NULL")
        elif flag == "noreport":
            where.append("priority IS NULL")
        elif flag == "dense":
            where.append("density >= 50")
        if day:
            where.append("received_day = ?")
            params.append(day)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = self._conn.execute(f"SELECT count(*) FROM studies {clause}", params).fetchone()[0]
        rows = self._conn.execute(
            f"""SELECT {', '.join(LIST_COLUMNS)} FROM studies {clause}
                ORDER BY sort_priority DESC, received, study_uid LIMIT ? OFFSET ?""",
            params + [int(limit), int(offset)],
        ).fetchall()
        return {"total": total, "offset": offset, "studies": [self._row(r) for r in rows]}

    @staticmethod
    def _row(r: tuple) -> dict[str, Any]:
        d = dict(zip(LIST_COLUMNS, r))
        d["reasons"] = json.loads(d["reasons"])
        d["flags"] = json.loads(d["flags"])
        d["repeat_advised"] = bool(d["repeat_advised"])
        d["received"] = datetime.fromtimestamp(d["received"], timezone.utc).isoformat(timespec="seconds")
        return d

    def study(self, study_uid: str) -> dict[str, Any] | None:
        r = self._conn.execute(f"SELECT {', '.join(LIST_COLUMNS)}, detail FROM studies WHERE study_uid = ?",
                               (study_uid,)).fetchone()
        if r is None:
            return None
        d = self._row(r[:-1])
        d["detail"] = json.loads(r[-1])
        return d

    def choices(self) -> dict[str, list[str]]:
        """Values for the filters' drop-downs."""
        return {
            "stations": [r[0] for r in self._conn.execute("SELECT DISTINCT station FROM studies WHERE station != '' ORDER BY 1")],
            "modalities": [r[0] for r in self._conn.execute("SELECT DISTINCT modality FROM studies WHERE modality != '' ORDER BY 1")],
            "days": [r[0] for r in self._conn.execute("SELECT DISTINCT received_day FROM studies ORDER BY 1 DESC LIMIT 60")],
        }

    def per_station(self) -> dict[str, dict[str, Any]]:
        """Studies, last arrival and repeats advised per station (for the fleet page)."""
        out = {}
        for station, n, last, repeats in self._conn.execute(
            "SELECT station, count(*), max(received), sum(repeat_advised) FROM studies GROUP BY station"
        ):
            out[station or "UNKNOWN"] = {
                "studies": n,
                "last_received": datetime.fromtimestamp(last, timezone.utc).isoformat(timespec="seconds"),
                "repeats_advised": int(repeats or 0),
            }
        return out

    def count(self) -> int:
        return self._conn.execute("SELECT count(*) FROM studies").fetchone()[0]

    def close(self) -> None:
        self._conn.close()


def build_row(source: Source, info: StudyInfo) -> dict[str, Any]:
    """Read one study's series and its SR / KOS into a worklist row."""
    series = source.series(info.study_uid, with_instances_of=(SR_MODALITY, KOS_MODALITY, SEG_MODALITY))
    images = [s for s in series if s.modality not in DERIVED_MODALITIES]
    counts = Counter()
    for s in images:
        counts[s.modality] += s.instances
    modality = counts.most_common(1)[0][0] if counts else (info.modalities[0] if info.modalities else "")
    station = next((s.station for s in images if s.station), "") or next((s.station for s in series if s.station), "")
    reports: list[dict[str, Any]] = []
    kos: list[dict[str, Any]] = []
    segs: list[dict[str, str]] = []
    for s in series:
        for sop in s.sop_uids:
            if s.modality == SEG_MODALITY:
                segs.append({"series_uid": s.series_uid, "sop_uid": sop})
                continue
            ds = source.instance(info.study_uid, s.series_uid, sop)
            if s.modality == SR_MODALITY:
                try:
                    summary = summarize_report(ds)
                except ValueError:
                    continue  # another sender's SR: not a triage report, nothing for the worklist
                reports.append(summary | {"sop_uid": sop, "series_uid": s.series_uid})
            elif s.modality == KOS_MODALITY:
                kos.append(read_key_objects(ds) | {"sop_uid": sop, "series_uid": s.series_uid})
    # a study the truck released in parts: each later report names the earlier ones as
    # predecessors (and covers their images), each later KOS has a higher Instance Number
    replaced = {uid for r in reports for uid in r.get("predecessors", [])}
    report: dict[str, Any] | None = None
    for summary in reports:
        if summary["sop_uid"] in replaced:
            continue
        # several current reports (another sender, a re-send): the highest priority is
        # what the reader must see
        if report is None or (summary["priority"] or -1) > (report["priority"] or -1):
            report = summary
    latest: dict[str, int] = {}
    for k in kos:
        latest[k["series_uid"]] = max(latest.get(k["series_uid"], 0), k.get("instance_number", 0))
    kos = [k for k in kos if k.get("instance_number", 0) == latest[k["series_uid"]]]
    flags = list(report["flags"]) if report else []
    for k in kos:
        if k["quality_issue"]:
            flags.append(f"key objects: {k['title']}")
    repeat = bool(flags)
    image_series = [{"series_uid": s.series_uid, "modality": s.modality, "instances": s.instances} for s in images]
    return {
        "study_uid": info.study_uid,
        "signature": info.signature,
        "study_date": info.study_date,
        "study_time": info.study_time,
        "modality": modality,
        "station": station,
        "priority": report["priority"] if report else None,
        "repeat_advised": repeat,
        "density": report["breast_density_percent"] if report else None,
        "composition": report["breast_composition"] if report else None,
        "reasons": report["reasons"] if report else [],
        "flags": flags,
        "objects": sum(s.instances for s in series),
        "detail": {"report": report, "key_objects": kos, "segmentations": segs, "image_series": image_series},
    }
