"""One way from a raw DICOM file to a queued, de-identified object.

    raw file -> de-identification (medsendx.deid) -> triage record (medsendx.triage)
             -> QC features (medsendx.fleet) -> outbox (medsendx.outbox), or held until
                its study is quiet (the gateway's study-aware mode)

Used by the gateway for every received or dropped object and by ``medsendx send`` for a
folder, so both behave the same. ``process_file`` never raises for bad input: the object
is quarantined (by the de-identifier) and the result says so. It is idempotent: the
de-identified UIDs are deterministic and the outbox refuses a SOP Instance UID it already
holds, so processing the same raw file twice (a restart after ``kill -9``) queues it once.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from medsendx.config import Settings
from medsendx.fsutil import TEMP_PREFIX, private_dir

log = logging.getLogger("medsendx.pipeline")

# "kept": the object had to go to quarantine but the quarantine copy could not be made
# (disk full, quarantine folder unusable): the input stays where it is and is retried.
Status = Literal["ready", "queued", "duplicate", "held", "quarantined", "error", "kept"]

# (sop_instance_uid, study_instance_uid, path, priority) -> None: keep the object back
# until its study is quiet instead of queueing it now.
HoldFn = Callable[[str, str, Path, "int | None"], None]


@dataclass
class PipelineResult:
    """What happened to one input file. ``reason`` is in our words, never the object's."""

    status: Status
    sop_instance_uid: str | None = None  # the de-identified UID
    study_instance_uid: str | None = None
    output: Path | None = None
    priority: int | None = None
    triage: dict[str, Any] | None = None
    reason: str = ""
    removed: int = 0  # attributes removed/replaced by de-identification, when reported
    features: dict[str, Any] | None = None  # the QC feature row (fleet analytics)

    @property
    def committed(self) -> bool:
        """The raw input may be deleted: its de-identified copy is queued or held, or the
        input itself is in quarantine ("quarantined" and "error" both put it there)."""
        return self.status in ("queued", "duplicate", "held", "quarantined", "error")


def triage_dir(settings: Settings) -> Path:
    return settings.state_dir / "triage"


def features_root(settings: Settings) -> Path:
    return settings.state_dir / "features"


@dataclass
class Pipeline:
    """The parts of the pipeline, built once and reused for many files (thread-safe).

    ``process(path)`` = ``commit(prepare(path))``. ``prepare`` is the CPU work (de-identify,
    triage, features) and may run in a worker process (see :class:`PreparePool`);
    ``commit`` queues (or holds) the result and collects its feature row, in the process
    that owns the outbox.
    """

    settings: Settings
    destination: str | None = None
    hold: HoldFn | None = None
    with_triage: bool = True
    with_features: bool = True
    compress: bool | None = None  # default: settings.outbox.compress
    feature_batch: int = 64
    _journal: "FeatureJournal | None" = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        from medsendx.deid import Deidentifier
        from medsendx.outbox import Outbox

        self.destination = self.destination or self.settings.destination
        if self.compress is None:
            self.compress = self.settings.outbox.compress
        # The pixel cleaner for objects at risk of burned-in text follows settings.pixels.
        self.deidentifier = Deidentifier(self.settings)
        self.outbox = Outbox(self.settings.outbox_db)
        # De-identified files are written straight into the outbox's spool folder, so that
        # committing them is a rename in one folder (the outbox takes them over on enqueue).
        self.out_dir = self.outbox.spool_dir

    def process(self, path: Path) -> PipelineResult:
        return self.commit(self.prepare(path))

    def prepare(self, path: Path) -> PipelineResult:
        """De-identify ``path`` into the spool folder, triage it, compute its QC features and
        compress it losslessly: all from the de-identified bytes in memory, written once."""
        finished: dict[str, Any] = {}
        outcome = self.deidentifier.deidentify_file(
            Path(path), self.out_dir, finish=lambda data: self._finish(data, finished)
        )
        if outcome.status != "ok" or outcome.output is None:
            # "quarantined" (must not leave) or "error" (unreadable input, unwritable
            # output): either way the de-identifier has put the input in quarantine with
            # its reason, so the raw copy is safe there and the object is done with here.
            status = "quarantined" if outcome.status == "quarantined" else "error"
            if not _safely_quarantined(self.settings.quarantine_dir, Path(path)):
                return PipelineResult("kept", reason="could not be quarantined; the input is kept and retried")
            return PipelineResult(status, reason=outcome.reason or "could not be de-identified")
        result = PipelineResult(
            "ready",
            sop_instance_uid=outcome.sop_instance_uid,
            study_instance_uid=outcome.study_instance_uid,
            output=outcome.output,
            removed=_removed_count(outcome.report),
            priority=finished.get("priority"),
            triage=finished.get("triage"),
            features=finished.get("features"),
        )
        if result.triage is not None:
            _write_advisory(private_dir(triage_dir(self.settings)) / f"{result.sop_instance_uid}.json",
                            json.dumps(result.triage).encode())
        return result

    def _finish(self, data: bytes, finished: dict[str, Any]) -> bytes:
        """Called by the de-identifier with the de-identified object before its one write:
        triage and QC features from one parse, then the bytes to write (JPEG-LS when that
        is smaller and verified bit for bit by :func:`medsendx.transcode.compress_lossless`;
        otherwise as de-identified). Compressing here, in the parallel prepare step, keeps
        it out of the single delivery thread; the deliverer decompresses for a peer that
        does not accept JPEG-LS. Never raises: all of this is an optimisation or advisory."""
        if not (self.compress or self.with_triage or self.with_features):
            return data
        import pydicom

        try:
            ds = pydicom.dcmread(io.BytesIO(data))  # the de-identified object: nothing raw here
        except Exception:
            return data
        try:
            # Decoded once, shared by triage, features and the compressor's verification;
            # read-only so that no advisory step can change the pixels that get encoded.
            ds.pixel_array.flags.writeable = False
        except Exception:
            pass  # no or undecodable pixels: each step below copes on its own
        self._triage_and_features(ds, finished, data)
        if self.compress:
            from pydicom.uid import JPEGLSLossless

            from medsendx.transcode import compress_lossless

            try:
                compressed = compress_lossless(data, JPEGLSLossless, ds)
            except Exception:
                compressed = None
            if compressed is not None and len(compressed) < len(data):
                return compressed
        return data

    def commit(self, result: PipelineResult) -> PipelineResult:
        """Queue a prepared object for delivery (or hold it for its study)."""
        if result.status != "ready":
            return result
        waiting = 0
        if result.features is not None:
            # Journaled (durable) before the object is queued: a kill after this line finds
            # the row at the next start; a kill before it processes the object again, and
            # the journal keeps one row per SOP Instance UID either way.
            waiting = self.journal.add(result.sop_instance_uid, result.features)
        if self.hold is not None:
            self.hold(result.sop_instance_uid, result.study_instance_uid, result.output, result.priority)
            result.status = "held"
        else:
            fresh = self.outbox.enqueue(
                result.output,
                sop_instance_uid=result.sop_instance_uid,
                study_instance_uid=result.study_instance_uid,
                destination=self.destination,
                priority=result.priority,
            )
            result.status = "queued" if fresh else "duplicate"
        if waiting >= self.feature_batch:
            self.flush()
        return result

    def _triage_and_features(self, ds: Any, finished: dict[str, Any], data: bytes | None = None) -> None:
        """Triage and QC features are advisory: a failure there never blocks delivery."""
        sop_uid = str(getattr(ds, "SOPInstanceUID", ""))  # the de-identified UID
        record: dict[str, Any] | None = None
        if self.with_triage:
            try:
                from medsendx.triage import segmenter_for, study_results, triage_dataset

                label_maps: list[Any] | None = [] if study_results.wanted(self.settings) else None
                triage = triage_dataset(ds, segmenter_for(self.settings), label_maps)
                record = triage.to_dict()
                finished["priority"] = int(triage.priority)
                finished["triage"] = record
                # what the study's SEG / SR / KOS need, kept before the object is committed
                study_results.keep(self.settings, ds, record, label_maps, data)
            except ImportError:
                pass
            except Exception as exc:
                log.warning("triage failed", extra={"fields": {"sop_instance_uid": sop_uid, "error": type(exc).__name__}})
        if self.with_features:
            try:
                from medsendx.fleet import extract_features

                finished["features"] = extract_features(ds, record)
            except ImportError:
                pass
            except Exception as exc:
                log.warning("QC features failed", extra={"fields": {"sop_instance_uid": sop_uid, "error": type(exc).__name__}})

    @property
    def journal(self) -> "FeatureJournal":
        """Opened on first use: worker processes (which only prepare) never open it."""
        with self._lock:
            if self._journal is None:
                self._journal = FeatureJournal(feature_journal_path(self.settings))
            return self._journal

    def flush(self) -> None:
        """Move journaled QC feature rows to the feature store (Parquet per station and day),
        including rows a killed run left behind."""
        try:
            self.journal.flush(features_root(self.settings))
        except Exception as exc:  # advisory data: keep the rows journaled, try at the next flush
            log.warning("QC features not stored yet", extra={"fields": {"error": type(exc).__name__}})

    def close(self) -> None:
        if self._journal is not None or feature_journal_path(self.settings).exists():
            self.flush()
            self.journal.close()


def feature_journal_path(settings: Settings) -> Path:
    return settings.state_dir / "features-journal.sqlite3"


class FeatureJournal:
    """QC feature rows kept durably (SQLite, fsynced commits) from the moment their object is
    committed until they are in the Parquet feature store.

    One row per de-identified SOP Instance UID: an object processed again after a crash adds
    nothing. Flushing takes the waiting rows as a numbered batch (committed), writes them as
    one Parquet file, then marks the batch done. A batch still "writing" at the next flush
    was interrupted: the Parquet file may or may not exist, so its rows are written again
    minus those the store already holds. Done rows are kept ``keep_days`` so that a late
    re-processing of the same object is still recognised, then pruned.
    """

    def __init__(self, db_path: Path, keep_days: float = 7.0) -> None:
        from medsendx.sqlitedb import open_sqlite

        self._lock = threading.Lock()
        self._keep_seconds = keep_days * 86400
        self._db = open_sqlite(db_path, synchronous="FULL")  # a committed row survives a power cut
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS batches (
                id INTEGER PRIMARY KEY, state TEXT NOT NULL, started REAL NOT NULL, done REAL);
            CREATE TABLE IF NOT EXISTS rows (
                sop_instance_uid TEXT PRIMARY KEY, row TEXT NOT NULL, batch INTEGER);
            CREATE INDEX IF NOT EXISTS rows_batch ON rows (batch);
            """
        )

    def add(self, sop_instance_uid: str, row: dict[str, Any]) -> int:
        """Journal one row (ignored if that object already has one); returns how many wait."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO rows(sop_instance_uid, row, batch) VALUES(?, ?, NULL)",
                (sop_instance_uid, json.dumps(row, default=str)),
            )
            return int(self._db.execute("SELECT COUNT(*) FROM rows WHERE batch IS NULL").fetchone()[0])

    def waiting(self) -> int:
        """Rows not yet in the feature store (waiting or in an unfinished batch)."""
        with self._lock:
            return int(self._db.execute(
                "SELECT COUNT(*) FROM rows LEFT JOIN batches ON rows.batch = batches.id "
                "WHERE rows.batch IS NULL OR batches.state != 'done'").fetchone()[0])

    def flush(self, store_root: Path) -> int:
        """Write every waiting row to the feature store; returns how many rows were written."""
        from medsendx.fleet import FeatureStore

        store = FeatureStore(str(store_root))
        written = 0
        with self._lock:  # one flush at a time; add() waits for the few ms of a Parquet write
            for batch_id, started in self._db.execute(
                "SELECT id, started FROM batches WHERE state = 'writing' ORDER BY id").fetchall():
                rows = self._batch_rows(batch_id)
                present = _stored_uids(store_root, since=started - 1.0)
                rows = [r for r in rows if r.get("sop_instance_uid") not in present]
                written += self._write(store, batch_id, rows)
            now = time.time()
            if not self._db.execute("SELECT 1 FROM rows WHERE batch IS NULL LIMIT 1").fetchone():
                return written
            self._db.execute("BEGIN IMMEDIATE")
            cursor = self._db.execute("INSERT INTO batches(state, started) VALUES('writing', ?)", (now,))
            batch_id = cursor.lastrowid
            self._db.execute("UPDATE rows SET batch = ? WHERE batch IS NULL", (batch_id,))
            self._db.execute("COMMIT")
            written += self._write(store, batch_id, self._batch_rows(batch_id))
            self._db.execute(
                "DELETE FROM rows WHERE batch IN (SELECT id FROM batches WHERE state = 'done' AND done < ?)",
                (now - self._keep_seconds,))
            self._db.execute("DELETE FROM batches WHERE state = 'done' AND done < ? "
                             "AND id NOT IN (SELECT DISTINCT batch FROM rows WHERE batch IS NOT NULL)",
                             (now - self._keep_seconds,))
        return written

    def _batch_rows(self, batch_id: int) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self._db.execute(
            "SELECT row FROM rows WHERE batch = ? ORDER BY rowid", (batch_id,)).fetchall()]

    def _write(self, store: Any, batch_id: int, rows: list[dict[str, Any]]) -> int:
        if rows:
            store.append(rows)  # atomic file (temp + fsync + rename)
        self._db.execute("UPDATE batches SET state = 'done', done = ? WHERE id = ?", (time.time(), batch_id))
        return len(rows)

    def clear(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM rows")
            self._db.execute("DELETE FROM batches")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _stored_uids(store_root: Path, since: float) -> set[str]:
    """SOP Instance UIDs in the local feature store's Parquet files written since ``since``."""
    import pyarrow.parquet as pq

    uids: set[str] = set()
    root = Path(store_root)
    if not root.is_dir():
        return uids
    for path in root.rglob("*.parquet"):
        try:
            if path.stat().st_mtime < since:
                continue
            column = pq.read_table(path, columns=["sop_instance_uid"]).column("sop_instance_uid")
        except Exception:
            continue
        uids.update(str(u) for u in column.to_pylist() if u is not None)
    return uids


# --- preparing in worker processes -------------------------------------------------------------
# De-identification, triage and features are CPU-bound Python; in threads they would share
# one core (the GIL) with the receiver and the deliverer. Worker processes use every core.

_worker_pipeline: Pipeline | None = None


def _init_worker(settings: Settings, parent_pid: int) -> None:
    import signal

    from medsendx.dicomio import skip_value_validation

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _exit_with_parent(parent_pid)
    _prefer_fast_jpegls_decoder()
    skip_value_validation()
    global _worker_pipeline
    _worker_pipeline = Pipeline(settings, with_features=True)


def _exit_with_parent(parent_pid: int) -> None:
    """A worker whose gateway was killed (``kill -9``, power supervisor) would otherwise live
    on, idle, forever: gone within a second of its parent (at once if the parent died while
    this worker was still starting). Its unfinished object is still staged and is processed
    again by the next gateway."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _prefer_fast_jpegls_decoder() -> None:
    """Verifying each JPEG-LS encoding decodes it again; pyjpegls (CharLS) does that about
    three times faster than pylibjpeg's libjpeg, with identical (lossless) output. Both
    stay installed; in our worker processes pydicom is told to use CharLS when present."""
    try:
        import jpeg_ls  # noqa: F401  (pyjpegls)
        from pydicom.pixels.decoders import JPEGLSLosslessDecoder

        if "pyjpegls" in JPEGLSLosslessDecoder.available_plugins and "pylibjpeg" in JPEGLSLosslessDecoder.available_plugins:
            JPEGLSLosslessDecoder.remove_plugin("pylibjpeg")
    except Exception:
        pass  # keep pydicom's default decoder


def _noop() -> None:
    return None


def _prepare_in_worker(path: str) -> PipelineResult:
    assert _worker_pipeline is not None
    return _worker_pipeline.prepare(Path(path))


class PreparePool:
    """``prepare`` in ``processes`` worker processes (spawned: no fork of a threaded parent)."""

    def __init__(self, settings: Settings, processes: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(
            max_workers=max(1, processes), mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker, initargs=(settings, os.getpid()),
        )

        self._processes = max(1, processes)

    def warm(self) -> None:
        """Start the worker processes now rather than on the first object (lower latency)."""
        for _ in range(self._processes):
            self._pool.submit(_noop)

    def prepare(self, path: Path) -> PipelineResult:
        return self._pool.submit(_prepare_in_worker, str(path)).result()

    def broken(self) -> bool:
        """True once a worker process died (the pool then refuses every object)."""
        return bool(getattr(self._pool, "_broken", False))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _safely_quarantined(quarantine_dir: Path, source: Path) -> bool:
    """Is a complete copy of ``source`` in quarantine (stored under the SHA-256 of its
    content, see :mod:`medsendx.quarantine`)? Checked here, apart from the de-identifier's
    own report, because the input may be the only copy: it is deleted only once this holds.
    An input that no longer exists has nothing left to lose."""
    from medsendx.fsutil import sha256_file

    try:
        digest = sha256_file(source)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        return (quarantine_dir / f"{digest}.dcm").stat().st_size == source.stat().st_size
    except OSError:
        return False


def _write_advisory(path: Path, data: bytes) -> None:
    """Atomic (temp + rename) but not fsynced: a triage record can be recomputed from the
    object, so it is not worth a disk flush per object on the receive path."""
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _removed_count(report: Any) -> int:
    """How many attributes de-identification removed or replaced (every action but Keep)."""
    counts = getattr(report, "counts", None) or {}
    return int(sum(n for action, n in counts.items() if action != "K" and isinstance(n, int)))


def process_file(path: Path, settings: Settings, *, pipeline: Pipeline | None = None, **options: Any) -> PipelineResult:
    """De-identify, triage, extract features and queue one file. See :class:`Pipeline`."""
    own = pipeline is None
    pipeline = pipeline or Pipeline(settings, **options)
    try:
        return pipeline.process(Path(path))
    finally:
        if own:
            pipeline.close()
