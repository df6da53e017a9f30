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

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from medsendx.config import Settings
from medsendx.fsutil import TEMP_PREFIX, private_dir

log = logging.getLogger("medsendx.pipeline")

Status = Literal["ready", "queued", "duplicate", "held", "quarantined", "error"]

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
    _rows: list[dict[str, Any]] = field(default_factory=list, init=False)
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
        """De-identify ``path`` into the spool folder, triage it and compute its QC features."""
        outcome = self.deidentifier.deidentify_file(Path(path), self.out_dir)
        if outcome.status != "ok" or outcome.output is None:
            # "quarantined" (must not leave) or "error" (unreadable input, unwritable
            # output): either way the de-identifier has put the input in quarantine with
            # its reason, so the raw copy is safe there and the object is done with here.
            status = "quarantined" if outcome.status == "quarantined" else "error"
            return PipelineResult(status, reason=outcome.reason or "could not be de-identified")
        result = PipelineResult(
            "ready",
            sop_instance_uid=outcome.sop_instance_uid,
            study_instance_uid=outcome.study_instance_uid,
            output=outcome.output,
            removed=_removed_count(outcome.report),
        )
        self._triage_and_features(result)
        if self.compress:
            self._compress(result)
        return result

    def _compress(self, result: PipelineResult) -> None:
        """Compress losslessly now, in the (parallel) prepare step, rather than in the single
        delivery thread: the deliverer sends a JPEG-LS object as it is when the peer accepts
        it, and decompresses it for a peer that does not. The codec output is verified bit
        for bit by :func:`medsendx.transcode.compress_lossless`; if it cannot be, the object
        stays as the de-identifier wrote it."""
        from pydicom.uid import JPEGLSLossless

        from medsendx.fsutil import atomic_write_bytes
        from medsendx.transcode import compress_lossless

        raw = result.output.read_bytes()
        data = compress_lossless(raw, JPEGLSLossless)
        if data is not None and len(data) < len(raw):
            atomic_write_bytes(result.output, data, mode=0o600)

    def commit(self, result: PipelineResult) -> PipelineResult:
        """Queue a prepared object for delivery (or hold it for its study)."""
        if result.status != "ready":
            return result
        if result.features is not None:
            with self._lock:
                self._rows.append(result.features)
                full = len(self._rows) >= self.feature_batch
            if full:
                self.flush()
        if self.hold is not None:
            self.hold(result.sop_instance_uid, result.study_instance_uid, result.output, result.priority)
            result.status = "held"
            return result
        fresh = self.outbox.enqueue(
            result.output,
            sop_instance_uid=result.sop_instance_uid,
            study_instance_uid=result.study_instance_uid,
            destination=self.destination,
            priority=result.priority,
        )
        result.status = "queued" if fresh else "duplicate"
        return result

    def _triage_and_features(self, result: PipelineResult) -> None:
        """Triage and QC features are advisory: a failure there never blocks delivery."""
        if not (self.with_triage or self.with_features):
            return
        from medsendx.dicomio import read_dataset

        try:
            ds = read_dataset(result.output)  # the de-identified object: nothing raw here
        except Exception:
            return
        record: dict[str, Any] | None = None
        if self.with_triage:
            try:
                from medsendx.triage import triage_dataset

                triage = triage_dataset(ds)
                record = triage.to_dict()
                result.priority = int(triage.priority)
                result.triage = record
                _write_advisory(private_dir(triage_dir(self.settings)) / f"{result.sop_instance_uid}.json",
                                json.dumps(record).encode())
            except ImportError:
                pass
            except Exception as exc:
                log.warning("triage failed", extra={"fields": {"sop_instance_uid": result.sop_instance_uid, "error": type(exc).__name__}})
        if self.with_features:
            try:
                from medsendx.fleet import extract_features

                result.features = extract_features(ds, record)
            except ImportError:
                pass
            except Exception as exc:
                log.warning("QC features failed", extra={"fields": {"sop_instance_uid": result.sop_instance_uid, "error": type(exc).__name__}})

    def flush(self) -> None:
        """Write buffered QC feature rows to the feature store (Parquet per station and day)."""
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return
        try:
            from medsendx.fleet import FeatureStore

            FeatureStore(str(features_root(self.settings))).append(rows)
        except Exception as exc:
            log.warning("QC features not stored", extra={"fields": {"rows": len(rows), "error": type(exc).__name__}})

    def close(self) -> None:
        self.flush()


# --- preparing in worker processes -------------------------------------------------------------
# De-identification, triage and features are CPU-bound Python; in threads they would share
# one core (the GIL) with the receiver and the deliverer. Worker processes use every core.

_worker_pipeline: Pipeline | None = None


def _init_worker(settings: Settings) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _prefer_fast_jpegls_decoder()
    global _worker_pipeline
    _worker_pipeline = Pipeline(settings, with_features=True)


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
            initializer=_init_worker, initargs=(settings,),
        )

        self._processes = max(1, processes)

    def warm(self) -> None:
        """Start the worker processes now rather than on the first object (lower latency)."""
        for _ in range(self._processes):
            self._pool.submit(_noop)

    def prepare(self, path: Path) -> PipelineResult:
        return self._pool.submit(_prepare_in_worker, str(path)).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


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
