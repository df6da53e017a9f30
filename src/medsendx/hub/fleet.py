"""The fleet view: ``mine``'s analysis (medsendx.fleet.report) over the feature store,
re-run when the store's files change, kept in memory for the fleet page and the API."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from medsendx.config import Settings

log = logging.getLogger("medsendx.hub")


class FleetView:
    def __init__(self, store: str, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._lock = threading.Lock()
        self._signature: tuple | None = None
        self.report: dict[str, Any] | None = None
        self.analysed_at: float | None = None
        self.seconds: float | None = None
        self.error: str | None = None

    def _files_signature(self) -> tuple:
        from medsendx.fleet.store import FeatureStore

        if not self.store.startswith("s3://") and Path(self.store).is_file():
            files = [self.store]  # one Parquet file (the demo's features.parquet)
        else:
            files = FeatureStore(self.store, self.settings).files()
        if self.store.startswith("s3://"):
            return tuple(files)  # the store writes each object once: new data = new keys
        out = []
        for f in files:
            try:
                st = os.stat(f)
            except OSError:
                continue
            out.append((f, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def refresh(self, force: bool = False) -> bool:
        """Re-mine when the store changed; returns whether it did."""
        with self._lock:
            try:
                signature = self._files_signature()
            except Exception as exc:  # S3 down, permissions: keep the last analysis
                self.error = f"the feature store could not be listed ({type(exc).__name__})"
                return False
            if signature == self._signature and not force:
                return False
            started = time.monotonic()
            if not signature:
                self.report, self._signature, self.error = None, signature, None
                self.analysed_at, self.seconds = time.time(), 0.0
                return True
            from medsendx.fleet.report import analyse, connect, load_sources

            try:
                con = connect()
                found = load_sources(con, [self.store], self.settings, progress=False)
                with tempfile.TemporaryDirectory(prefix="medsendx-hub-") as tmp:
                    report = analyse(con, Path(tmp), found, render_png=False)
                con.close()
            except Exception as exc:
                self.error = f"the feature store could not be analysed ({type(exc).__name__})"
                log.warning("fleet analysis failed", extra={"fields": {"error": type(exc).__name__}})
                return False
            self.report, self._signature, self.error = report, signature, None
            self.analysed_at, self.seconds = time.time(), time.monotonic() - started
            return True

    def stations(self, worklist_stations: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """One row per station: status, scans, alerts (the sentences ``mine`` writes) and,
        from the worklist, studies and the last one received."""
        worklist_stations = worklist_stations or {}
        rows: dict[str, dict[str, Any]] = {}
        for s in (self.report or {}).get("stations", []):
            rows[s["station"]] = {"station": s["station"], "status": s["status"], "scans": s["scans"],
                                  "alerts": s["alerts"], "studies": 0, "last_received": None, "repeats_advised": 0}
        for station, w in worklist_stations.items():
            row = rows.setdefault(station, {"station": station, "status": "no QC data", "scans": 0, "alerts": [],
                                            "studies": 0, "last_received": None, "repeats_advised": 0})
            row.update(w)
        order = {"alert": 0, "ok": 1}
        return sorted(rows.values(), key=lambda r: (order.get(r["status"], 2), r["station"]))

    def alerts(self) -> list[dict[str, Any]]:
        out = []
        for s in (self.report or {}).get("stations", []):
            for a in s["alerts"]:
                out.append({"station": s["station"]} | a)
        return out
