"""A scan day on the truck, end to end, with no server and no set-up: ``medsendx demo``.

1. Synthetic patients (realistic invented names, IDs, birth dates, accession numbers) are
   planted into copies of the bundled real head CT (12 slices).
2. A simulated scanner sends them over DICOM C-STORE to the gateway, which runs in this
   process on free loopback ports, exactly as ``medsendx gateway`` does.
3. The gateway stages, de-identifies, triages and queues each object, and delivers it to
   "HQ": a DICOM receiver writing into ``<out>/hq/``, reached through a loopback proxy that
   really resets a share of the connections (a flaky 4G link). ``--to URL`` delivers to a
   real PACS or bucket instead.
4. ``highlighted_scan.png`` (triage overlay of the highest-priority scan) and
   ``mining_report.png`` (fleet mining over the truck's QC features and a simulated fleet
   with one drifting scanner) are written to ``<out>``, with ``summary.json``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from medsendx.config import Settings
from medsendx.dicomio import read_dataset
from medsendx.fsutil import atomic_write_bytes
from medsendx.gateway.flakylink import FlakyLink
from medsendx.gateway.logs import configure_logging
from medsendx.gateway.scanday import PATIENTS, SyntheticPatient, plant_identity
from medsendx.sampledata import ct_head_files

MARKER = ".medsendx-demo"
HQ_AET = "HQ_PACS"


class DemoError(RuntimeError):
    """The demo cannot run as asked (a folder it must not touch, no gateway)."""


@dataclass
class DemoSummary:
    objects_scanned: int = 0
    objects_received: int = 0
    objects_deidentified: int = 0
    objects_quarantined: int = 0
    objects_delivered: int = 0  # the scanned objects that reached HQ
    results_delivered: int = 0  # triage results sent with them: SEG, TID 1500 SR, KOS per study
    destination: str = ""
    identities_planted: int = 0  # identifying values planted across all objects
    identities_found_at_hq: int = 0  # of those, how many reached HQ (must be 0)
    attributes_changed: int = 0  # attributes removed or replaced, from the audit log
    raw_bytes: int = 0
    wire_bytes: int = 0
    link_resets: int = 0
    delivery_retries: int = 0
    priorities: list[dict[str, Any]] = field(default_factory=list)
    fleet_alerts: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # parts that could not run, and why
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


class HQReceiver:
    """Stands in for the hospital: a C-STORE SCP that files objects by SOP Instance UID."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=HQ_AET)
        ae.maximum_pdu_size = 0
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = self._server.server_address[1]

    def _store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)  # a de-identified UID made by the gateway
        atomic_write_bytes(self.folder / f"{uid}.dcm", event.encoded_dataset())
        return 0x0000

    def stop(self) -> None:
        self._server.shutdown()


SCANNER_AET = "CT_VAN_SCANNER"


def scanner_send(files: list[Path], port: int, ae_title: str = SCANNER_AET, called: str = "MEDSENDX") -> list[int]:
    """A simulated scanner: one association, one C-STORE per file; returns the statuses."""
    ae = AE(ae_title=ae_title)
    datasets = [read_dataset(f) for f in files]
    for sop_class, ts in {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}:
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise DemoError("the gateway did not accept the scanner's association")
    statuses = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(getattr(status, "Status", 0xFFFF)))
    finally:
        assoc.release()
    return statuses


def prepare_out(out: Path) -> Path:
    """Use ``out`` for this run; an earlier demo's state there is cleared first."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("state", "hq"):
        folder = out / name
        if folder.exists():
            if not (out / MARKER).exists():
                raise DemoError(f"{folder} exists and was not made by the demo; choose another --out")
            shutil.rmtree(folder)
    (out / MARKER).write_text("made by medsendx demo; safe to delete\n")
    return out


def demo_settings(out: Path, destination: str) -> Settings:
    from medsendx.config import load_settings

    settings = load_settings(None, environ={})  # the demo ignores the user's own settings
    settings.state_dir = out / "state"
    settings.outbox.destination = destination
    settings.outbox.backoff_base_seconds = 0.2  # a demo should not wait minutes for a retry
    settings.outbox.backoff_cap_seconds = 2.0
    settings.gateway.bind_address = "127.0.0.1"
    settings.gateway.allowed_calling_aets = [SCANNER_AET]  # only the simulated scanner may push
    settings.gateway.dicom_port = 0
    settings.gateway.http_port = 0
    settings.gateway.min_free_bytes = 64 * 1024 * 1024
    settings.gateway.workers = 2
    return settings


def plant_scan_day(workdir: Path, sources: list[Path], patients: list[SyntheticPatient]) -> list[tuple[Path, SyntheticPatient]]:
    """Split the series among the patients; each gets its own study (new UIDs)."""
    planted = []
    per = max(1, len(sources) // len(patients))
    for i, src in enumerate(sources):
        patient = patients[min(i // per, len(patients) - 1)]
        dst = workdir / f"scan{i:03d}.dcm"
        plant_identity(src, dst, patient, new_uids_seed=patient.patient_id)
        planted.append((dst, patient))
    return planted


def run_demo(out: Path, to: str | None = None, *, report: Callable[[str], None] = print,
             timeout: float = 180.0, seed: int = 7) -> DemoSummary:
    """Play the scan day; returns what happened (also written to ``<out>/summary.json``).
    The gateway holds each study until it is quiet for a second, so that its SEG / SR / KOS
    go with it (what the radiologist's viewer and the hub's worklist read)."""
    from medsendx.gateway.service import GatewayService
    from medsendx.outbox import Outbox
    from medsendx.transport.base import redact_url

    started = time.monotonic()
    out = prepare_out(Path(out))
    summary = DemoSummary()
    hq: HQReceiver | None = None
    link: FlakyLink | None = None
    transport_factory = None
    if to:
        destination = to
    else:
        hq = HQReceiver(out / "hq")
        link = FlakyLink(("127.0.0.1", hq.port), reset_fraction=0.35, max_reset_offset=300_000, seed=seed).start()
        destination = f"dimse://{HQ_AET}@127.0.0.1:{link.port}"
        transport_factory = _link_fallback(out / "hq", summary)
    # The user's URL may carry a password or token: only its redacted form is shown or written.
    summary.destination = redact_url(destination) if to else "HQ folder over a flaky link"
    settings = demo_settings(out, destination if transport_factory is None else str(out / "hq"))
    settings.gateway.study_quiet_seconds = 1.0

    scanner_disk = tempfile.TemporaryDirectory(prefix="medsendx-scanner-")  # identities: removed at the end
    try:
        planted = plant_scan_day(Path(scanner_disk.name), ct_head_files(), PATIENTS)
        planted_copies = [p for p, _ in planted]
        summary.objects_scanned = len(planted)
        secrets = sorted({v for _, p in planted for v in p.identifying_values()})
        summary.identities_planted = sum(len(p.identifying_values()) for _, p in planted)
        report(f"scanner: {len(planted)} CT slices of {len({p for _, p in planted})} synthetic patients")

        configure_logging("INFO", stream=open(out / "gateway.log", "w"))  # JSON lines, nothing identifying
        service = GatewayService(settings, transport_factory=transport_factory).start()
        try:
            statuses = scanner_send([p for p, _ in planted], service.receiver.port)
            report(f"scanner -> gateway over C-STORE: {statuses.count(0)}/{len(statuses)} accepted")
            outbox = Outbox(settings.outbox_db)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                counts = outbox.counts()
                c = service.state.counters()
                if (counts["sent"] + counts["failed"] + c["quarantined"] >= len(planted) and not service.staging.pending()
                        and not service.state.held_objects() and not counts["queued"] + counts["sending"]):
                    break
                time.sleep(0.2)
        finally:
            service.stop()
        return _finish(settings, out, summary, planted_copies, secrets, link, hq, to, seed, started)
    finally:
        scanner_disk.cleanup()


def _finish(settings: Settings, out: Path, summary: DemoSummary, planted_copies: list[Path], secrets: list[str],
            link: FlakyLink | None, hq: "HQReceiver | None", to: str | None, seed: int, started: float) -> DemoSummary:
    from medsendx.outbox import Outbox

    if link is not None:
        link.stop()
    if hq is not None:
        hq.stop()

    from medsendx.gateway.state import GatewayState
    from medsendx.gateway.metrics import gateway_db

    state = GatewayState(gateway_db(settings))
    counters = state.counters()
    state.close()
    outbox = Outbox(settings.outbox_db)
    counts, totals = outbox.counts(), outbox.stats()
    summary.objects_received = counters["received"]
    summary.objects_deidentified = counters["deidentified"]
    summary.objects_quarantined = counters["quarantined"]
    summary.results_delivered = min(counts["sent"], counters["results_seg"] + counters["results_sr"] + counters["results_kos"])
    summary.objects_delivered = counts["sent"] - summary.results_delivered
    summary.raw_bytes = counters["received_bytes"]
    summary.wire_bytes = totals["wire_bytes"]
    summary.delivery_retries = totals["retries"]
    if link is not None and link.stats.connections:
        summary.link_resets = link.stats.resets + link.stats.refused
    if not to:
        summary.identities_found_at_hq = _identities_at(out / "hq", secrets)
    summary.priorities = _priorities(settings)
    summary.attributes_changed = _audited_changes(settings)
    if to:
        with tempfile.TemporaryDirectory(prefix="medsendx-deid-") as tmp:
            _overlay(_local_copies(settings, planted_copies, Path(tmp)), out, summary)
    else:
        _overlay(out / "hq", out, summary)
    _mining(settings, out, summary, seed)
    summary.seconds = round(time.monotonic() - started, 1)
    (out / "summary.json").write_text(json.dumps(asdict(summary), indent=1))
    return summary


def _link_fallback(folder: Path, summary: DemoSummary):
    """Without a DIMSE transport on this install, deliver into the HQ folder through a
    transport that fails a share of attempts, so retries still happen for real."""
    try:
        import medsendx.transport.dimse  # noqa: F401
    except ImportError:
        from medsendx.gateway.flakylink import flaky_transport_factory

        summary.notes.append("no DIMSE transport on this install: link drops are simulated above the folder transport")
        return flaky_transport_factory(0.35, stats=summary)
    return None


def _identities_at(folder: Path, secrets: list[str]) -> int:
    """How many planted identifying values appear anywhere in the delivered bytes."""
    found = 0
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += sum(1 for s in secrets if s.encode() in data)
    return found


def _audited_changes(settings: Settings) -> int:
    """Attributes removed or replaced (every action but Keep), summed over the audit log."""
    total = 0
    if settings.audit_log.exists():
        for line in settings.audit_log.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("status") == "ok":
                total += sum(n for action, n in entry.get("actions", {}).items() if action != "K")
    return total


def _priorities(settings: Settings) -> list[dict[str, Any]]:
    from medsendx.pipeline import triage_dir

    records = []
    for path in sorted(triage_dir(settings).glob("*.json")):
        record = json.loads(path.read_text())
        records.append({"sop_instance_uid": path.stem, "priority": record.get("priority"),
                        "reasons": record.get("reasons", [])})
    return sorted(records, key=lambda r: -(r["priority"] or 0))


def _overlay(local_copies: Path, out: Path, summary: DemoSummary) -> None:
    """``highlighted_scan.png``: the triage overlay of the highest-priority scan."""
    target = out / "highlighted_scan.png"
    try:
        from medsendx.triage import render_overlay, triage_dataset
    except ImportError:
        summary.missing.append("triage (medsendx.triage) not installed: no highlighted_scan.png")
        return
    candidates = sorted(local_copies.rglob("*.dcm"))
    if summary.priorities:
        best = summary.priorities[0]["sop_instance_uid"]
        candidates = [p for p in candidates if best in p.name] or candidates
    if not candidates:
        summary.missing.append("no de-identified object available locally for the overlay")
        return
    ds = read_dataset(candidates[0])
    render_overlay(ds, triage_dataset(ds), target)
    summary.outputs["highlighted_scan"] = str(target)


def _local_copies(settings: Settings, planted: list[Path], folder: Path) -> Path:
    """De-identified copies to draw from when HQ is remote (``--to``): the same engine and
    secret give the same objects the gateway delivered."""
    from medsendx.deid import Deidentifier

    deid = Deidentifier(settings)
    for path in planted:
        deid.deidentify_file(path, folder)
    return folder


def _mining(settings: Settings, out: Path, summary: DemoSummary, seed: int) -> None:
    """``mining_report.png``: this truck's QC features beside a simulated fleet in which one
    scanner drifts, mined as HQ would."""
    try:
        from medsendx.fleet.report import mine
        from medsendx.fleet.simulate import Fault, simulate_ct_fleet
    except ImportError:
        summary.missing.append("fleet mining (medsendx.fleet) not installed: no mining_report.png")
        return
    from medsendx.pipeline import features_root

    with tempfile.TemporaryDirectory(prefix="medsendx-fleet-") as tmp:
        stations = {
            "CT_VAN_NORTH": None,
            "CT_VAN_SOUTH": None,
            "CT_VAN_EAST": Fault("drift", 4.0, start=0.5),
            "CT_VAN_WEST": None,
        }
        simulate_ct_fleet(ct_head_files(), Path(tmp), stations, scans_per_station=24, seed=seed)
        sources = [tmp]
        if features_root(settings).exists() and any(features_root(settings).rglob("*.parquet")):
            sources.append(str(features_root(settings)))
        else:
            sources.append(str(out / "hq"))
        report = mine(sources, out, settings, progress=False)
    summary.outputs["mining_report"] = str(out / "mining_report.png")
    for station in report.get("stations", []):
        for alert in station.get("alerts", []):
            summary.fleet_alerts.append(alert.get("message", ""))
