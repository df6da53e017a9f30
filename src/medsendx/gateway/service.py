"""The gateway service: receiver + drop folders -> pipeline workers -> outbox -> delivery.

Lifecycle:
- start: staged objects left by an earlier run (a crash, ``kill -9``, a power cut) are
  queued again first; then the receiver, the drop-folder watcher, the pipeline workers,
  the deliverer and the health/metrics port start.
- run: a bounded queue feeds ``gateway.workers`` pipeline threads. When it is full, the
  receiver's C-STORE handler and the watcher wait: the scanner is slowed, not overrun.
  A study's triage results (SEG / SR / KOS) go with it: built when a held study is
  released (``gateway.study_quiet_seconds``), or, streaming, once a study whose images
  were queued has had no new one for ``gateway.results_quiet_seconds`` (durable: a study
  left waiting by a kill gets them after the restart).
- stop (SIGTERM, Ctrl-C): no new associations, the workers finish the object in hand,
  buffered QC features are written, the deliverer stops between two objects. Whatever is
  still staged is processed at the next start.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from medsendx.config import Settings
from medsendx.gateway.logs import get_logger, log_event
from medsendx.gateway.metrics import MetricsServer, collect, gateway_db, staging_dir
from medsendx.gateway.receiver import Receiver
from medsendx.gateway.sdnotify import Notifier
from medsendx.gateway.staging import Staging
from medsendx.gateway.state import GatewayState
from medsendx.gateway.watcher import DropFolderWatcher, DroppedFile

if TYPE_CHECKING:
    from medsendx.pipeline import PipelineResult

log = get_logger("medsendx.gateway.service")

RETRY_ERROR_SECONDS = 10.0  # a staged object whose processing failed on our side is retried


@dataclass(frozen=True)
class Job:
    path: Path
    dropped: DroppedFile | None = None  # None: a staged object from the receiver
    resumed: bool = False  # staged by an earlier run (a kill may have come after its commit)


class GatewayService:
    """Everything ``medsendx gateway`` runs, startable and stoppable in-process (tests, demo)."""

    def __init__(
        self,
        settings: Settings,
        *,
        dicom_port: int | None = None,
        http_port: int | None = None,
        deliver: bool = True,
        transport_factory: Callable[[str, Settings], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.gw = settings.gateway
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.state = GatewayState(gateway_db(settings))
        self.staging = Staging(staging_dir(settings))
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max(1, self.gw.queue_size))
        self._queued: set[Path] = set()
        self._queued_lock = threading.Lock()
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._needed: list[threading.Thread] = []
        self._deliver = deliver
        self._transport_factory = transport_factory
        self.pipeline = self._make_pipeline()
        self.results_quiet = self._results_quiet_seconds()
        self._resumed = threading.Event()  # the objects an earlier run left are queued
        self.deliverer = self._make_deliverer() if deliver else None
        self.receiver = Receiver(
            self.gw, self.staging, self._on_staged, self._on_refused,
            port=self.gw.dicom_port if dicom_port is None else dicom_port,
        )
        self.watcher = (
            DropFolderWatcher(
                [Path(d) for d in self.gw.watch_dirs], self._on_dropped, self.state.seen,
                policy=self.gw.originals, settle_seconds=self.gw.settle_seconds,
            )
            if self.gw.watch_dirs
            else None
        )
        self.metrics_server = MetricsServer(
            self.gw.http_port if http_port is None else http_port, self.metrics, self.health
        )
        self.notifier = Notifier()  # systemd Type=notify; does nothing outside systemd

    def _make_pipeline(self):
        from medsendx.dicomio import skip_value_validation
        from medsendx.pipeline import Pipeline, PreparePool

        skip_value_validation()

        hold = self._hold if self.gw.study_quiet_seconds > 0 else None
        self.preparer = PreparePool(self.settings, self.gw.processes) if self.gw.processes > 0 else None
        return Pipeline(self.settings, hold=hold)

    def _results_quiet_seconds(self) -> float:
        """How long a streamed study must be quiet before its results are built; 0: never
        (results off, or a study hold, whose release builds them)."""
        from medsendx.triage import study_results

        if self.gw.study_quiet_seconds > 0 or not study_results.wanted(self.settings):
            return 0.0
        return self.gw.results_quiet_seconds

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "GatewayService":
        if self.preparer is not None:
            self.preparer.warm()
        for i in range(max(1, self.gw.workers)):
            self._spawn(self._worker, f"pipeline-{i}", needed=True)
        # What is staged now was left by an earlier run; listed before the receiver starts
        # so that it never races with objects arriving in this run.
        leftovers = self.staging.pending()
        self._spawn(lambda: self._resume(leftovers), "resume-staged")
        if self.gw.study_quiet_seconds > 0:
            self._spawn(self._release_quiet_studies, "study-hold", needed=True)
        if self.results_quiet > 0:
            self._spawn(self._build_quiet_results, "study-results", needed=True)
        if self._deliver:
            self._spawn(self._deliver_forever, "deliverer", needed=True)
        self.metrics_server.start()
        self.receiver.start()
        if self.watcher is not None:
            self.watcher.start()
        log_event(
            log, "gateway started", station=self.settings.station_id, dicom_port=self.receiver.port,
            http_port=self.metrics_server.port, workers=self.gw.workers,
            study_quiet_seconds=self.gw.study_quiet_seconds, results_quiet_seconds=self.results_quiet,
        )
        # READY only now that the receiver's port accepts associations; the watchdog is fed
        # while the threads the service cannot work without are alive.
        self.notifier.ready(f"listening on DICOM port {self.receiver.port}")
        self.notifier.start_watchdog(self.needed_threads_alive)
        return self

    def stop(self) -> None:
        """Graceful stop: finish what is in hand, keep the rest staged for the next start."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self._wake_deliverer()  # else its idle wait (up to 5 s) delays the stop
        self.notifier.stopping()
        self.notifier.stop_watchdog()
        log_event(log, "gateway stopping")
        self.receiver.stop()
        if self.watcher is not None:
            self.watcher.stop()
        # Unblock the workers: drain what is queued (it stays staged) and post one stop mark each.
        while True:
            try:
                self.jobs.get_nowait()
            except queue.Empty:
                break
        for _ in range(max(1, self.gw.workers)):
            try:
                self.jobs.put_nowait(None)
            except queue.Full:
                break
        for thread in self._threads:
            thread.join(timeout=60)
        if self.preparer is not None:
            self.preparer.close()
        self.pipeline.close()
        self.metrics_server.stop()
        log_event(log, "gateway stopped", staged_left=len(self.staging.pending()))
        self.state.close()

    def run_until_signalled(self) -> None:
        """Run until SIGTERM or SIGINT, then stop gracefully."""
        signalled = threading.Event()

        def handler(signum: int, frame: Any) -> None:
            log_event(log, "signal received", signal=signal.Signals(signum).name)
            signalled.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        self.start()
        while not signalled.wait(timeout=1.0):
            pass
        self.stop()

    def needed_threads_alive(self) -> bool:
        """Every needed part runs (what the systemd watchdog feeds on): the same check as /healthz."""
        return not self.dead_parts()

    def _spawn(self, target: Callable[[], None], name: str, needed: bool = False) -> None:
        """Start a thread; ``needed`` ones must run as long as the service does (/healthz)."""
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        if needed:
            self._needed.append(thread)

    def dead_parts(self) -> list[str]:
        """The parts of the service that should be running and are not (for /healthz)."""
        dead = [t.name for t in self._needed if not t.is_alive()]
        if not self.receiver.alive():
            dead.append("receiver")
        if self.watcher is not None and not self.watcher.alive():
            dead.append("drop-folder-watcher")
        if self.preparer is not None and self.preparer.broken():
            dead.append("worker-processes")
        return dead

    # --- intake -------------------------------------------------------------------------------
    def _submit(self, job: Job) -> None:
        """Queue a job once; blocks while the queue is full (backpressure)."""
        with self._queued_lock:
            if job.path in self._queued:
                return
            self._queued.add(job.path)
        while not self.stopping.is_set():
            try:
                self.jobs.put(job, timeout=0.5)
                return
            except queue.Full:
                continue
        with self._queued_lock:
            self._queued.discard(job.path)

    def _on_staged(self, path: Path, size: int) -> None:
        self.state.count_received(path.name, size)
        self._submit(Job(path))

    def _on_refused(self, reason: str) -> None:
        self.state.add("refused")

    def _on_dropped(self, item: DroppedFile) -> None:
        # Keyed by content: a file taken again after a kill (or a retry) is counted once.
        self.state.count_received(f"drop:{item.sha256}", item.size)
        self._submit(Job(item.path, dropped=item))

    def _resume(self, pending: list[Path]) -> None:
        self.pipeline.flush()  # QC feature rows a killed run had journaled but not yet stored
        if pending:
            log_event(log, "resuming staged objects from an earlier run", count=len(pending))
        for path in pending:
            if self.stopping.is_set():
                return
            try:  # staged just before a kill, before it was counted: count it now (once)
                self.state.count_received(path.name, path.stat().st_size)
            except OSError:
                pass
            self._submit(Job(path, resumed=True))
        self._resumed.set()  # results wait for these: a study quiet since a kill may have more

    # --- work ---------------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None or self.stopping.is_set():
                return
            try:
                self._process(job)
            finally:
                with self._queued_lock:
                    self._queued.discard(job.path)

    def _process(self, job: Job) -> None:
        if not job.path.exists():  # already handled (and removed) through another route
            self.state.clear_retrying(str(job.path))
            return
        try:
            if self.preparer is not None:
                result = self.pipeline.commit(self.preparer.prepare(job.path))
            else:
                result = self.pipeline.process(job.path)
        except Exception as exc:  # our own bug or a full disk: keep the raw object, retry later
            self.state.add("errors")
            self.state.mark_retrying(str(job.path), f"pipeline failed ({type(exc).__name__})")
            log_event(log, "pipeline failed; object kept for retry", logging.ERROR, error=type(exc).__name__)
            self._retry_later(job)
            return
        fields = {"status": result.status, "sop_instance_uid": result.sop_instance_uid, "priority": result.priority}
        if not result.committed:  # e.g. quarantine could not take it: keep the raw object, try again
            self.state.add("errors")
            self.state.mark_retrying(str(job.path), result.reason or "not processed")
            log_event(log, "object not processed; kept for retry", logging.ERROR, reason=result.reason)
            self._retry_later(job)
            return
        self.state.clear_retrying(str(job.path))
        if result.status in ("quarantined", "error"):  # either way the input is in quarantine
            self.state.add("quarantined")
            fields["reason"] = result.reason
        elif result.status == "duplicate":
            self.state.add("duplicates")
        else:
            self.state.add("deidentified")
            if result.status == "queued":
                self._wake_deliverer()
        log_event(log, "object processed", **fields)
        self._stream_results(job, result)
        if job.dropped is not None:
            self.state.mark_seen(job.dropped.sha256, result.status)
            if self.watcher is not None:
                self.watcher.done(job.dropped)
            self.state.forget_received(f"drop:{job.dropped.sha256}")
        else:
            self.staging.remove(job.path)  # the only raw copy goes as soon as it is committed
            self.state.forget_received(job.path.name)

    def _retry_later(self, job: Job) -> None:
        def again() -> None:
            if not self.stopping.wait(RETRY_ERROR_SECONDS):
                if job.dropped is None:
                    self._submit(job)
                elif self.watcher is not None:
                    self.watcher.forget(job.dropped)

        threading.Thread(target=again, name="retry", daemon=True).start()

    # --- results of streamed studies -----------------------------------------------------------
    def _stream_results(self, job: Job, result: "PipelineResult") -> None:
        """Note a queued image's study for its results, before the input is let go (a kill
        before this line processes the input again). A duplicate counts only when a kill
        may have come between its commit and this line (an input left by an earlier run,
        a dropped file still there): a scanner re-sending images changes no results."""
        if self.results_quiet <= 0 or not result.study_instance_uid:
            return
        if result.status == "queued" or (result.status == "duplicate" and (job.resumed or job.dropped is not None)):
            self.state.stream(result.study_instance_uid)

    def _build_quiet_results(self) -> None:
        quiet = self.results_quiet
        while not self._resumed.is_set():
            if self.stopping.wait(0.2):
                return
        while not self.stopping.wait(max(0.1, min(1.0, quiet / 2))):
            self.build_quiet_results(quiet)

    def build_quiet_results(self, quiet_seconds: float) -> int:
        """Build and queue the results of every streamed study quiet long enough; returns
        how many studies. Built again after a kill, they queue nothing twice (derived UIDs).
        Not while images wait for the pipeline: their study is known only once they are
        de-identified (one may belong to a study that looks quiet), and images go first."""
        built = 0
        for study, arrivals in self.state.quiet_streamed(quiet_seconds):
            if self.stopping.is_set() or self._pipeline_busy():
                break
            self._queue_results(study)
            if not self.state.results_built(study, arrivals):
                log_event(log, "more images came while the results were built", study_instance_uid=study)
            self._wake_deliverer()
            built += 1
        return built

    def _pipeline_busy(self) -> bool:
        with self._queued_lock:
            return bool(self._queued)

    # --- study-aware sending --------------------------------------------------------------------
    def _hold(self, sop_uid: str, study_uid: str, path: Path, priority: int | None) -> None:
        self.state.hold(sop_uid, study_uid, path, priority)

    def _release_quiet_studies(self) -> None:
        quiet = self.gw.study_quiet_seconds
        while not self.stopping.wait(min(1.0, quiet / 2)):
            self.release_quiet_studies(quiet)

    def release_quiet_studies(self, quiet_seconds: float) -> int:
        """Queue every held study that has been quiet long enough, highest priority first."""
        released = 0
        for study in self.state.quiet_studies(quiet_seconds):
            objects = self.state.held_objects(study)
            self._queue_results(study)  # before the release: a kill in between builds them again
            for obj in objects:
                fresh = self.pipeline.outbox.enqueue(
                    obj.path, sop_instance_uid=obj.sop_instance_uid, study_instance_uid=obj.study_instance_uid,
                    destination=self.pipeline.destination, priority=obj.priority,
                )
                if not fresh:
                    self.state.add("duplicates")
                self.state.release(obj.sop_instance_uid)
                released += 1
            self._wake_deliverer()
            log_event(log, "quiet study released", study_instance_uid=study, objects=len(objects))
        return released

    def _queue_results(self, study: str) -> None:
        """The study's SEG / SR / KOS (medsendx.triage.study_results), queued once: their
        UIDs follow from the images', so building them again queues nothing new."""
        from medsendx.triage import study_results

        outcome = study_results.queue_study(self.settings, self.pipeline.outbox, self.pipeline.destination, study)
        if outcome.total:
            q = outcome.queued
            self.state.add("results_seg", q["seg"], results_sr=q["sr"], results_kos=q["kos"])
            log_event(log, "triage results queued", study_instance_uid=study, **outcome.queued)

    # --- delivery -----------------------------------------------------------------------------
    def _make_deliverer(self):
        from medsendx.delivery import Deliverer

        def on_outcome(item, result) -> None:
            if result.ok:
                log_event(log, "object delivered", sop_instance_uid=item.sop_instance_uid, wire_bytes=result.wire_bytes)
            elif result.permanent:
                log_event(log, "destination refused object", logging.ERROR, sop_instance_uid=item.sop_instance_uid,
                          reason=result.reason)
            else:
                log_event(log, "delivery will be retried", logging.WARNING, sop_instance_uid=item.sop_instance_uid,
                          reason=result.reason)

        extra = {"transport_factory": self._transport_factory} if self._transport_factory else {}
        return Deliverer(self.pipeline.outbox, self.settings, on_outcome=on_outcome, **extra)

    def _deliver_forever(self) -> None:
        try:
            self.deliverer.run_forever(self.stopping)
        except Exception as exc:  # the thread ends: /healthz reports "deliverer" dead (503)
            log_event(log, "deliverer stopped on an error", logging.ERROR, error=type(exc).__name__)

    def _wake_deliverer(self) -> None:
        if self.deliverer is not None:
            self.deliverer.wake()

    # --- health and figures ---------------------------------------------------------------------
    def metrics(self):
        return collect(self.settings, self.state)

    def health(self) -> dict[str, Any]:
        dead = [] if self.stopping.is_set() else self.dead_parts()
        status = "stopping" if self.stopping.is_set() else "failing" if dead else "ok"
        return {
            "status": status,  # anything but "ok" answers 503
            "dead": dead,
            "station": self.settings.station_id,
            "dicom_port": self.receiver.port,
            "staged": len(self.staging.pending()),
            "queue": self.jobs.qsize(),
            "free_bytes": self.staging.free_bytes(),
            "time": time.time(),
        }
