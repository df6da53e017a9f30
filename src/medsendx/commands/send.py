"""``medsendx send INPUT --to URL``: de-identify a folder, queue it and deliver it."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from medsendx.commands._common import console, err_console, literal, settings_from_context
from medsendx.outbox import OutboxItem
from medsendx.transport.base import DeliveryResult, TransportError, open_transport, redact_url


@dataclass
class SendTally:
    """What this run did, for the summary (filled from two threads)."""

    files: int = 0
    queued: int = 0
    duplicates: int = 0
    quarantined: int = 0
    errors: list[str] = field(default_factory=list)
    sent: int = 0
    retries: int = 0
    retried: set[int] = field(default_factory=set)
    failed: Counter = field(default_factory=Counter)
    wire_bytes: int = 0
    sent_sizes: dict[str, int] = field(default_factory=dict)  # sent UID -> de-identified size
    # de-identified SOP Instance UID -> size of the scanner's file: "raw" in the summary is
    # what the scan weighed before anything (the de-identified copy may already be compressed)
    input_sizes: dict[str, int] = field(default_factory=dict)
    results: Counter = field(default_factory=Counter)  # triage results queued, per kind
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def raw_bytes(self) -> int:
        """Raw size of what was sent (the de-identified size for objects of earlier runs)."""
        with self.lock:
            return sum(self.input_sizes.get(uid, size) for uid, size in self.sent_sizes.items())

    def outcome(self, item: OutboxItem, result: DeliveryResult) -> None:
        with self.lock:
            self.wire_bytes += result.wire_bytes
            if result.ok:
                self.sent += 1
                self.sent_sizes[item.sop_instance_uid] = item.size
            elif result.permanent:
                self.failed[result.reason] += 1
            else:
                self.retries += 1
                self.retried.add(item.id)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


@click.command("send")
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.option("--to", "destination", metavar="URL", default=None,
              help="Where to deliver: dicomweb+http(s)://host:port/path, dimse://AET@host:port, "
                   "s3://bucket/prefix, file:///path or a folder (default: the settings' destination).")
@click.option("--compress/--no-compress", default=None,
              help="Lossless JPEG-LS / JPEG 2000 on the wire where the peer accepts it (default: on).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=None,
              help="Stop waiting for the link after this many seconds; what is left stays queued "
                   "(default: wait until every object is sent or refused).")
@click.pass_context
def send_cmd(ctx: click.Context, input_path: Path, destination: str | None, compress: bool | None,
             timeout_s: float | None) -> None:
    """De-identify the DICOM files in INPUT, queue them and deliver them to URL.

    Every file is de-identified (PS3.15 Annex E, settings [deid]), triaged for priority and
    queued in the crash-safe outbox of the state directory; delivery runs at the same time
    and retries transient faults (link down, resets, server errors) with backoff. An object
    the peer refuses is marked failed with the peer's reason; the others go on.

    Interrupted (Ctrl-C, power loss, kill -9) and run again with the same INPUT and URL, it
    resumes: objects already delivered are not sent again. Exit status: 0 when every object
    arrived, 1 when an input could not be de-identified or the peer refused an object, 3
    when --timeout left objects queued.
    """
    settings = settings_from_context(ctx, {"outbox": {"destination": destination, "compress": compress}})
    url = settings.destination
    try:
        open_transport(url, settings).close()  # a bad URL is a usage error, not a retry loop
    except TransportError as exc:
        raise click.UsageError(str(exc)) from None

    from medsendx.delivery import Deliverer
    from medsendx.dicomio import iter_dicom_files
    from medsendx.pipeline import Pipeline

    files = iter_dicom_files(input_path)
    tally = SendTally(files=len(files))
    pipeline = Pipeline(settings, destination=url)
    outbox = pipeline.outbox
    stop = threading.Event()
    already = outbox.counts(url)
    backlog = already["queued"] + already["sending"]

    progress = Progress(
        TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[extra]}"),
        TimeRemainingColumn(), console=console, transient=False,
    )
    deid_task = progress.add_task("de-identify", total=len(files), extra="")
    send_task = progress.add_task("deliver", total=backlog, extra="")

    def on_outcome(item: OutboxItem, result: DeliveryResult) -> None:
        tally.outcome(item, result)
        if result.ok or result.permanent:
            progress.advance(send_task)
        with tally.lock:
            extra = f"{_human(tally.wire_bytes)} on the wire"
            if tally.retries:
                extra += f", {tally.retries} retries"
        progress.update(send_task, extra=extra)

    deliverer = Deliverer(outbox, settings, on_outcome=on_outcome)
    worker = threading.Thread(target=deliverer.run_forever, args=(stop,), name="medsendx-deliver", daemon=True)
    interrupted = False
    timed_out = False
    started = time.monotonic()
    studies: list[str] = []  # de-identified Study Instance UIDs of this run, in order
    try:
        with progress:
            worker.start()
            for path in files:
                size = path.stat().st_size if path.is_file() else 0
                result = pipeline.process(path)
                if result.study_instance_uid and result.study_instance_uid not in studies:
                    studies.append(result.study_instance_uid)
                if result.sop_instance_uid:
                    with tally.lock:
                        tally.input_sizes[result.sop_instance_uid] = size
                if result.status in ("queued", "held"):
                    tally.queued += 1
                    progress.update(send_task, total=(progress.tasks[send_task].total or 0) + 1)
                    deliverer.wake()
                elif result.status == "duplicate":
                    tally.duplicates += 1
                elif result.status == "quarantined":
                    tally.quarantined += 1
                else:
                    tally.errors.append(f"{path}: {result.reason}")
                progress.advance(deid_task)
            _queue_results(settings, pipeline, url, studies, tally, progress, send_task)
            deliverer.wake()
            pipeline.flush()
            while True:
                counts = outbox.counts(url)
                if counts["queued"] == 0 and counts["sending"] == 0:
                    break
                if timeout_s is not None and time.monotonic() - started > timeout_s:
                    timed_out = True
                    break
                time.sleep(0.1)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop.set()
        deliverer.wake()
        worker.join(timeout=30)
        pipeline.close()

    _summary(tally, outbox.counts(url), url)
    if interrupted:
        err_console.print("[yellow]interrupted[/yellow]: run the same command again to resume")
        raise SystemExit(130)
    if timed_out:
        err_console.print("[yellow]timed out[/yellow]: the rest stays queued; run again or `medsendx queue status`")
        raise SystemExit(3)
    if tally.errors or tally.failed:
        raise SystemExit(1)


def _queue_results(settings, pipeline, url: str, studies: list[str], tally: SendTally, progress, task) -> None:
    """The whole folder is known: each study's SEG / SR / KOS go now, with its images."""
    from medsendx.triage import study_results

    for study in studies:
        outcome = study_results.queue_study(settings, pipeline.outbox, url, study)
        tally.results.update(outcome.queued)
        if outcome.total:
            progress.update(task, total=(progress.tasks[task].total or 0) + outcome.total)


def _summary(tally: SendTally, counts: dict[str, int], url: str) -> None:
    table = Table(title=f"send to {redact_url(url)}", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("input files", str(tally.files))
    table.add_row("de-identified and queued", str(tally.queued))
    table.add_row("already queued or sent (skipped)", str(tally.duplicates))
    table.add_row("quarantined", str(tally.quarantined))
    table.add_row("triage results queued (SEG / SR / KOS)",
                  " / ".join(str(tally.results[kind]) for kind in ("seg", "sr", "kos")))
    table.add_row("unreadable / errors", str(len(tally.errors)))
    table.add_row("sent", str(tally.sent))
    table.add_row("retried (objects / attempts)", f"{len(tally.retried)} / {tally.retries}")
    table.add_row("failed (refused by the peer)", str(sum(tally.failed.values())))
    table.add_row("still queued", str(counts["queued"] + counts["sending"]))
    raw = tally.raw_bytes
    if raw:
        ratio = tally.wire_bytes / raw
        table.add_row("bytes on the wire vs raw input", f"{_human(tally.wire_bytes)} / {_human(raw)} ({ratio:.1%})")
    console.print(table)
    for reason, count in tally.failed.most_common():
        err_console.print(f"[red]failed[/red] {count} object(s): {literal(reason)}", soft_wrap=True)
    for line in tally.errors:
        err_console.print(f"[red]error[/red] {literal(line)}", soft_wrap=True)
