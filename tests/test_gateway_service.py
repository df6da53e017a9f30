"""The gateway as a user runs it: a subprocess fed by dcmtk storescu or a drop folder,
delivering to a real Orthanc over DICOMweb, killed and restarted, starved of disk, cut off
from its destination."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest

from conftest import cli_env, run_cli
from medsendx.gateway.flakylink import FlakyLink
from medsendx.gateway.metrics import parse_prometheus_text
from medsendx.gateway.scanday import PATIENTS, plant_identity
from servers import dcmtk, free_port

PATIENT = PATIENTS[0]


class GatewayProcess:
    """``medsendx gateway`` in a subprocess on free loopback ports."""

    def __init__(self, state: Path, destination: str, *, extra_args: list[str] | None = None, env: dict | None = None):
        self.state = state
        self.destination = destination
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.extra_args = extra_args or []
        self.env = {
            "MEDSENDX_STATE_DIR": str(state),
            "MEDSENDX_GATEWAY__BIND_ADDRESS": "127.0.0.1",
            # the scanners the tests play (storescu's default calling AE title is STORESCU)
            "MEDSENDX_GATEWAY__ALLOWED_CALLING_AETS": "CT_VAN,STORESCU,CT_VAN0,CT_VAN1,CT_VAN2",
            "MEDSENDX_GATEWAY__MIN_FREE_BYTES": "0",
            "MEDSENDX_OUTBOX__BACKOFF_BASE_SECONDS": "0.2",
            "MEDSENDX_OUTBOX__BACKOFF_CAP_SECONDS": "1.5",
            # these tests count the images a PACS gets; a streamed study's triage results
            # (after gateway.results_quiet_seconds) are tested where they are asked for
            "MEDSENDX_GATEWAY__RESULTS_QUIET_SECONDS": "0",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None
        self.logs = state.parent / f"gateway-{id(self)}.log"

    def start(self) -> "GatewayProcess":
        self.state.mkdir(parents=True, exist_ok=True)
        log = open(self.logs, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "medsendx", "gateway", "--dicom-port", str(self.dicom_port),
             "--http-port", str(self.http_port), "--to", self.destination, *self.extra_args],
            env=cli_env(self.env), stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.logs.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("gateway did not come up:\n" + self.logs.read_text())

    def metrics(self) -> dict[str, float]:
        page = httpx.get(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5).text
        return {k.removeprefix("medsendx_"): v for k, v in parse_prometheus_text(page).items()}

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        """SIGKILL the gateway; its worker processes must not outlive it."""
        workers = self.children()
        self.proc.kill()
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while workers and time.monotonic() < deadline:
            workers = [pid for pid in workers if Path(f"/proc/{pid}").exists()
                       and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()]
            time.sleep(0.2)
        assert not workers, "worker processes outlived the killed gateway"

    def children(self) -> list[int]:
        pids: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                pids += [int(c) for c in (task / "children").read_text().split()]
            except FileNotFoundError:  # a short-lived thread (an association) ended meanwhile
                continue
        return pids


@pytest.fixture
def planted_series(ct_head, tmp_path) -> list[Path]:
    """The 28 real CT slices with a synthetic patient's identity planted in copies."""
    folder = tmp_path / "scanner"
    folder.mkdir()
    return [plant_identity(src, folder / f"{i:03d}.dcm", PATIENT) for i, src in enumerate(ct_head)]


def push(port: int, files: list[Path], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [dcmtk("storescu"), "-aet", "CT_VAN", "-aec", "MEDSENDX", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=timeout,
    )


def wait_for(condition, timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def secrets_of(files: list[Path]) -> list[bytes]:
    """Everything identifying the delivered objects must not contain: the planted identity
    and the original UIDs."""
    values = {v.encode() for v in PATIENT.identifying_values()}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        values |= {str(ds.SOPInstanceUID).encode(), str(ds.StudyInstanceUID).encode(), str(ds.SeriesInstanceUID).encode()}
    return sorted(values)


def assert_delivered_clean(orthanc, originals: list[Path]) -> None:
    """Orthanc holds one de-identified study with every slice, pixel-identical, nothing
    identifying anywhere in the stored bytes."""
    studies = httpx.get(f"{orthanc.url}/studies").json()
    assert len(studies) == 1
    ids = orthanc.instance_ids()
    assert len(ids) == len(originals)
    uids = orthanc.sop_instance_uids()
    assert len(set(uids)) == len(originals)
    by_number = {int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber): f for f in originals}
    secrets = secrets_of(originals)
    for orthanc_id in ids:
        data = orthanc.instance_file(orthanc_id)
        leaked = [s for s in secrets if s in data]
        assert not leaked, "identifying values reached the PACS"
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
        assert ds.PatientIdentityRemoved == "YES"
        original = pydicom.dcmread(by_number[int(ds.InstanceNumber)])
        assert np.array_equal(ds.pixel_array, original.pixel_array)


def assert_logs_clean(gateway: GatewayProcess, originals: list[Path]) -> None:
    text = gateway.logs.read_bytes()
    assert not [s for s in secrets_of(originals) if s in text], "identifying values in the logs"


def test_storescu_to_gateway_to_orthanc(orthanc, planted_series, tmp_path):
    gateway = GatewayProcess(tmp_path / "state", f"dicomweb+{orthanc.dicomweb_url}").start()
    try:
        done = push(gateway.dicom_port, planted_series)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: len(orthanc.instance_ids()) == 28 and gateway.metrics()["sent_total"] == 28,
                 what="28 instances in Orthanc")
        figures = gateway.metrics()
        assert figures["received_total"] == 28
        assert figures["deidentified_total"] == 28
        assert figures["quarantined_total"] == 0
        assert figures["sent_total"] == 28 and figures["queued"] == 0 and figures["failed_total"] == 0
        # raw bytes as received (the receiver writes its own file meta header, a few bytes each)
        assert figures["received_bytes_total"] == pytest.approx(sum(p.stat().st_size for p in planted_series), rel=1e-3)
        assert 0 < figures["wire_bytes_total"]
        assert figures["seconds_since_last_delivery"] >= 0
        assert figures["staged"] == 0  # raw copies removed once committed
        # the crew's view says the same
        status = run_cli("status", "--json", "--http-port", gateway.http_port, env=gateway.env)
        assert status.returncode == 0, status.stderr
        crew = json.loads(status.stdout)
        assert crew["running"] is True
        assert crew["received_total"] == 28 and crew["sent_total"] == 28 and crew["quarantined_total"] == 0
    finally:
        assert gateway.terminate() == 0  # graceful stop on SIGTERM
    assert_delivered_clean(orthanc, planted_series)
    assert_logs_clean(gateway, planted_series)
    assert list((tmp_path / "state" / "staging").iterdir()) == []


def test_drop_folder_with_slow_copy_and_corrupt_file(orthanc, planted_series, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    gateway = GatewayProcess(
        tmp_path / "state", f"dicomweb+{orthanc.dicomweb_url}",
        extra_args=["--watch", str(drop), "--originals", "move"],
        env={"MEDSENDX_GATEWAY__SETTLE_SECONDS": "1.0"},
    ).start()
    try:
        *quick, slow = planted_series
        for i, src in enumerate(quick):
            (drop / f"IMG{i:04d}").write_bytes(src.read_bytes())
        data = slow.read_bytes()
        with open(drop / "SLOWCOPY", "wb") as fh:  # a USB stick copying in pieces
            for k in range(5):
                fh.write(data[k * len(data) // 5:(k + 1) * len(data) // 5])
                fh.flush()
                time.sleep(0.4)
        corrupt = bytearray(planted_series[0].read_bytes()[:3000])
        (drop / "BROKEN").write_bytes(bytes(corrupt))  # truncated inside the header
        wait_for(lambda: len(orthanc.instance_ids()) == 28 and gateway.metrics()["quarantined_total"] == 1,
                 what="27+1 delivered and the corrupt file quarantined")
        figures = gateway.metrics()
        assert figures["received_total"] == 29 and figures["deidentified_total"] == 28
        wait_for(lambda: gateway.metrics()["sent_total"] == 28, what="metrics to agree")
    finally:
        assert gateway.terminate() == 0
    assert_delivered_clean(orthanc, planted_series)
    quarantined = list((tmp_path / "state" / "quarantine").glob("*.json"))
    assert len(quarantined) == 1
    # originals are tidied away into done/, nothing left to pick up
    assert sorted(p.name for p in (drop / "done").iterdir()) == sorted([f"IMG{i:04d}" for i in range(27)] + ["SLOWCOPY", "BROKEN"])
    assert [p for p in drop.iterdir() if p.name != "done"] == []


@pytest.mark.slow
def test_sigkill_at_random_moments_delivers_each_object_once(orthanc, planted_series, tmp_path):
    rng = random.Random(1234)
    state = tmp_path / "state"
    destination = f"dicomweb+{orthanc.dicomweb_url}"
    for round_ in range(3):
        gateway = GatewayProcess(state, destination).start()
        scanner = subprocess.Popen(
            [dcmtk("storescu"), "-aet", "CT_VAN", "-aec", "MEDSENDX", "127.0.0.1", str(gateway.dicom_port),
             *map(str, planted_series)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 2.5))
        gateway.kill()  # power cut: no goodbye
        scanner.wait(timeout=60)
    # the scanner re-sends the series (it was never told success for some of it)
    gateway = GatewayProcess(state, destination).start()
    try:
        done = push(gateway.dicom_port, planted_series)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: len(orthanc.instance_ids()) == 28 and gateway.metrics()["queued"] == 0
                 and gateway.metrics()["staged"] == 0, what="every object delivered after the crashes")
        figures = gateway.metrics()
        assert figures["sent_total"] == 28 and figures["failed_total"] == 0
    finally:
        assert gateway.terminate() == 0
    assert_delivered_clean(orthanc, planted_series)
    from medsendx.outbox import Outbox

    rows = Outbox(state / "outbox.sqlite3").items()
    assert len(rows) == 28 and {r.state for r in rows} == {"sent"}
    assert sorted(r.sop_instance_uid for r in rows) == sorted(orthanc.sop_instance_uids())
    # the QC feature rows survived the kills too: one per delivered object, none twice
    import pyarrow.parquet as pq

    feature_uids = [uid for path in (state / "features").rglob("*.parquet")
                    for uid in pq.read_table(path, columns=["sop_instance_uid"]).column("sop_instance_uid").to_pylist()]
    assert sorted(feature_uids) == sorted(r.sop_instance_uid for r in rows)


def test_disk_nearly_full_refuses_then_destination_down_then_back(orthanc, planted_series, tmp_path):
    state = tmp_path / "state"
    link = FlakyLink(("127.0.0.1", orthanc.http_port), reset_fraction=0.0).start()
    destination = f"dicomweb+http://127.0.0.1:{link.port}/dicom-web"
    # 1. disk nearly full: the scanner is told "out of resources" and keeps its images
    full = GatewayProcess(state, destination, env={"MEDSENDX_GATEWAY__MIN_FREE_BYTES": str(1 << 62)}).start()
    try:
        refused = subprocess.run(
            [dcmtk("storescu"), "-v", "-aec", "MEDSENDX", "127.0.0.1", str(full.dicom_port), str(planted_series[0])],
            capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "OutOfResources" in refused.stderr
        figures = full.metrics()
        assert figures["refused_total"] >= 1 and figures["received_total"] == 0
    finally:
        assert full.terminate() == 0
    # 2. disk fine, destination unreachable: everything is accepted and waits in the outbox
    link.down()
    gateway = GatewayProcess(state, destination).start()
    try:
        done = push(gateway.dicom_port, planted_series)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: gateway.metrics()["deidentified_total"] == 28 and gateway.metrics()["retries_total"] >= 2,
                 what="objects queued and delivery retried while the link is down")
        figures = gateway.metrics()
        assert figures["sent_total"] == 0 and figures["queued"] == 28
        assert orthanc.instance_ids() == []
        # 3. the link comes back: delivery resumes on its own
        link.up()
        wait_for(lambda: gateway.metrics()["sent_total"] == 28, what="delivery after the link returned")
    finally:
        assert gateway.terminate() == 0
        link.stop()
    assert_delivered_clean(orthanc, planted_series)
