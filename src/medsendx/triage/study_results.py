"""Per study: keep what the DICOM results need while objects are triaged, then build the
SEG / SR / KOS (``medsendx.triage.dicom_results``) and queue them in the outbox with the
images, once the study is complete (``send``: the end of the folder; the gateway: a held
study released after ``--study-quiet-seconds``, or a streamed study quiet for
``gateway.results_quiet_seconds``).

What is kept: one file per triaged object, ``<state_dir>/triage/studies/<study>/<sop>.npz``
(the de-identified header without pixel data, the triage record, the label maps;
atomic, 0600, names are de-identified UIDs). It is written in ``prepare`` (possibly in a
worker process) before the object is committed, so a study's results can be built after
its images left the spool, and after a crash. Files older than ``KEEP_DAYS`` go.

Sent once: the results' UIDs are derived from the de-identified UIDs of the images they
cover (see ``dicom_results.derived_uid``) and the outbox refuses a SOP Instance UID it
already holds, so building a study again (a re-run, a restart) queues nothing new.

Released in parts (the gateway's hold expired, then more images of the study came): each
release covers every image kept so far; ``releases.json`` in the study's folder lists the
SR and KOS UIDs of the releases, oldest first, so that a later SR names the earlier ones
as predecessors and SR and KOS are numbered by release (``dicom_results.build_report``).
It is recorded before the results are queued: a release that was built is never renumbered.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsendx.config import Settings
from medsendx.fsutil import TEMP_PREFIX, atomic_write_bytes

log = logging.getLogger("medsendx.triage.results")

KEEP_DAYS = 7.0
KINDS = ("seg", "sr", "kos")


def store_dir(settings: Settings) -> Path:
    return settings.state_dir / "triage" / "studies"


def wanted(settings: Settings) -> bool:
    t = settings.triage
    return bool(t.results_seg or t.results_sr or t.results_kos)


def keep(settings: Settings, ds: Any, record: dict[str, Any], label_maps: list[Any] | None,
         data: bytes | None = None) -> Path | None:
    """Keep one triaged object's header, record and label maps for its study's results
    (``data``: the bytes ``ds`` was read from, whose head before the pixel data is kept as
    it is instead of encoding the header again). Never raises (advisory: the images go
    whether or not their results can be built)."""
    if record.get("status") != "triaged" or not wanted(settings):
        return None
    try:
        import numpy as np

        from medsendx.triage.dicom_results import TriagedObject, head_bytes, header_of, save_triaged

        study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
        labels = np.stack(label_maps).astype(np.int8) if (label_maps and settings.triage.results_seg) else None
        path = store_dir(settings) / _safe(study) / f"{_safe(sop)}.npz"
        save_triaged(path, TriagedObject(header_of(ds), record, labels), head_bytes(ds, data))
        return path
    except Exception as exc:
        log.warning("triage results input not kept", extra={"fields": {"error": type(exc).__name__}})
        return None


def _safe(uid: str) -> str:
    """A UID as a file name (UIDs are digits and dots; anything else is refused)."""
    if not uid or len(uid) > 64 or any(c not in "0123456789." for c in uid):
        raise ValueError("not a UID")
    return uid


@dataclass
class StudyResults:
    """What building a study's results did: objects queued per kind, duplicates (already
    queued or sent: a re-run), and why a kind was not built (our words)."""

    queued: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    duplicates: int = 0
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.queued.values())


def build_study(
    settings: Settings, study_uid: str, sop_uids: Iterable[str] | None = None
) -> tuple[list[tuple[str, Any]], int | None]:
    """The (kind, dataset) results of one study from the kept objects (all of the study's,
    or only ``sop_uids``) and the study's highest priority. An empty list when nothing
    of the study was kept."""
    from medsendx.triage import dicom_results as R

    folder = store_dir(settings) / _safe(study_uid)
    if not folder.is_dir():
        return [], None
    only = set(sop_uids) if sop_uids is not None else None
    objects = []
    for path in sorted(folder.glob("*.npz")):
        if path.name.startswith("."):
            continue  # a temp a killed writer left (pathlib's glob matches dot names)
        if only is not None and path.stem not in only:
            continue
        try:
            objects.append(R.load_triaged(path))
        except Exception:
            continue  # a damaged advisory file: the study's other results still go
    if not objects:
        return [], None
    priority = max((int(o.record["priority"]) for o in objects if o.record.get("priority") is not None), default=None)
    t = settings.triage
    station = settings.station_id
    out: list[tuple[str, Any]] = []
    if t.results_seg:
        series: dict[str, list[Any]] = defaultdict(list)
        for obj in objects:
            series[str(obj.header.get("SeriesInstanceUID", ""))].append(obj)
        for members in series.values():
            out += [("seg", seg) for seg in R.build_segmentations(members, station=station,
                                                                     compress=settings.outbox.compress)]
    history = releases(settings, study_uid)
    if t.results_sr:
        sr = R.build_report(objects, station=station, history=history["sr"])
        if sr is not None:
            out.append(("sr", sr))
    if t.results_kos:
        kos = R.build_key_objects(objects, station=station, limit=t.key_images, history=history["kos"])
        if kos is not None:
            out.append(("kos", kos))
    return out, priority


RELEASES = "releases.json"  # in the study's folder: its results' UIDs, release by release


def releases(settings: Settings, study_uid: str) -> dict[str, list[str]]:
    """The SOP Instance UIDs of a study's SRs and KOSs built so far, oldest first (a study
    released in parts has several: each later one covers every image kept so far)."""
    try:
        data = json.loads((store_dir(settings) / _safe(study_uid) / RELEASES).read_text())
        return {kind: [str(u) for u in data.get(kind, []) if isinstance(u, str)] for kind in ("sr", "kos")}
    except (OSError, ValueError, AttributeError):
        return {"sr": [], "kos": []}


def _record_release(settings: Settings, study_uid: str, built: list[tuple[str, Any]]) -> None:
    """Append this release's SR / KOS UIDs (atomic; a UID recorded already stays where it is)."""
    history = releases(settings, study_uid)
    changed = False
    for kind, ds in built:
        uid = str(ds.SOPInstanceUID)
        if kind in history and uid not in history[kind]:
            history[kind].append(uid)
            changed = True
    if not changed:
        return
    try:
        atomic_write_bytes(store_dir(settings) / _safe(study_uid) / RELEASES, json.dumps(history).encode(), 0o600)
    except OSError as exc:
        log.warning("triage results release not recorded", extra={"fields": {"error": type(exc).__name__}})


def queue_study(settings: Settings, outbox: Any, destination: str, study_uid: str,
                sop_uids: Iterable[str] | None = None) -> StudyResults:
    """Build one study's results and queue them (priority: the study's highest). Never
    raises: a failure is logged (type only) and the images go on without results."""
    from medsendx.triage import dicom_results as R

    outcome = StudyResults()
    if not wanted(settings):
        return outcome
    try:
        with warnings.catch_warnings():
            # highdicom's value warnings quote values (de-identified here, but logs and
            # the terminal never carry DICOM values)
            warnings.simplefilter("ignore")
            built, priority = build_study(settings, study_uid, sop_uids)
    except Exception as exc:
        log.warning("triage results not built", extra={"fields": {"error": type(exc).__name__}})
        outcome.skipped["all"] = "the results could not be built"
        return outcome
    _record_release(settings, study_uid, built)
    for kind, ds in built:
        uid = str(ds.SOPInstanceUID)
        # a pid-named temp: the outbox's stale-temp sweep removes it after a kill
        path = outbox.spool_dir / f"{TEMP_PREFIX}{os.getpid()}-results-{uid}.dcm"
        try:
            # durable before the outbox row exists (as the de-identified images are)
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
                fh.write(R.encode(ds))
                fh.flush()
                os.fsync(fh.fileno())
            fresh = outbox.enqueue(path, sop_instance_uid=uid, study_instance_uid=study_uid,
                                   destination=destination, priority=priority)
        except Exception as exc:
            log.warning("triage result not queued", extra={"fields": {"kind": kind, "error": type(exc).__name__}})
            path.unlink(missing_ok=True)
            continue
        path.unlink(missing_ok=True)  # a refused duplicate leaves our copy behind
        if fresh:
            outcome.queued[kind] += 1
        else:
            outcome.duplicates += 1
    _prune(settings)
    return outcome


def _prune(settings: Settings) -> None:
    """Studies whose newest kept object is older than KEEP_DAYS."""
    root = store_dir(settings)
    cutoff = time.time() - KEEP_DAYS * 86400
    try:
        folders = list(root.iterdir())
    except OSError:
        return
    for folder in folders:
        try:
            newest = max((p.stat().st_mtime for p in folder.iterdir()), default=0.0)
            if newest < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue
