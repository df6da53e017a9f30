"""The DICOM receiver, staging, drop-folder watcher and metrics, with dcmtk as the scanner."""

from __future__ import annotations

import stat
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pydicom
import pytest

from medsendx.config import GatewaySettings, Settings
from medsendx.gateway.metrics import MetricsServer, collect, parse_prometheus_text
from medsendx.gateway.receiver import Receiver
from medsendx.gateway.scanday import PATIENTS, plant_identity
from medsendx.gateway.staging import Staging
from medsendx.gateway.state import GatewayState
from medsendx.gateway.watcher import DONE_DIR, DropFolderWatcher
from servers import dcmtk


def _gateway(**kw) -> GatewaySettings:
    return GatewaySettings(**{"bind_address": "127.0.0.1", "dicom_port": 0, "min_free_bytes": 0,
                              "allowed_calling_aets": ["SCANNER"], **kw})


class Recorder:
    def __init__(self) -> None:
        self.staged: list[tuple[Path, int]] = []
        self.refused: list[str] = []

    def on_staged(self, path: Path, size: int) -> None:
        self.staged.append((path, size))

    def on_refused(self, reason: str) -> None:
        self.refused.append(reason)


@pytest.fixture
def receiver_factory(tmp_path):
    started: list[Receiver] = []

    def make(**kw) -> tuple[Receiver, Recorder]:
        rec = Recorder()
        receiver = Receiver(_gateway(**kw), Staging(tmp_path / "staging"), rec.on_staged, rec.on_refused).start()
        started.append(receiver)
        return receiver, rec

    yield make
    for receiver in started:
        receiver.stop()


def storescu(port: int, files: list[Path], *extra: str, aet: str = "SCANNER") -> subprocess.CompletedProcess:
    return subprocess.run(
        [dcmtk("storescu"), "-aet", aet, "-aec", "MEDSENDX", *extra, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )


def test_storescu_push_is_staged_durably_and_unchanged(receiver_factory, ct_head, tmp_path):
    receiver, rec = receiver_factory()
    done = storescu(receiver.port, ct_head)
    assert done.returncode == 0, done.stderr
    assert len(rec.staged) == len(ct_head) == 28
    staging = tmp_path / "staging"
    assert stat.S_IMODE(staging.stat().st_mode) == 0o700
    sent = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in ct_head}
    for path, size in rec.staged:
        assert path.parent == staging and path.stat().st_size == size
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        staged = pydicom.dcmread(path)
        original = sent.pop(staged.SOPInstanceUID)
        assert staged.PixelData == original.PixelData
        assert staged.PatientName == original.PatientName
    assert not sent  # every slice arrived
    # staged names are ours, never a value from the object
    assert all(str(ds_uid) not in "".join(p.name for p, _ in rec.staged) for ds_uid in [pydicom.dcmread(ct_head[0]).SOPInstanceUID])


# storescu proposes one compressed syntax per run: the option matching each file's encoding
PROPOSE = {
    "1.2.840.10008.1.2.5": "-xr",  # RLE Lossless
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 Lossless
}


def test_compressed_transfer_syntaxes_are_accepted_as_sent(receiver_factory, data_dir):
    receiver, rec = receiver_factory()
    files = sorted((data_dir / "transfer-syntaxes").glob("*.dcm"))
    by_ts: dict[str, list[Path]] = {}
    for f in files:
        by_ts.setdefault(str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID), []).append(f)
    assert set(PROPOSE) <= set(by_ts), "the sample data should cover every compressed syntax"
    for ts, group in by_ts.items():
        done = storescu(receiver.port, group, *([PROPOSE[ts]] if ts in PROPOSE else []))
        assert done.returncode == 0, done.stderr
    assert len(rec.staged) == len(files)
    staged_ts = [str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p, _ in rec.staged]
    for ts in PROPOSE:  # compressed objects arrive compressed: never decoded on the way in
        assert staged_ts.count(ts) == len(by_ts[ts])


def test_disk_nearly_full_answers_out_of_resources_and_keeps_nothing_half(receiver_factory, ct_head, tmp_path):
    receiver, rec = receiver_factory(min_free_bytes=1 << 62)
    done = storescu(receiver.port, ct_head[:3], "-v")
    assert done.returncode != 0
    assert "Refused: OutOfResources" in done.stderr  # the scanner is told the truth (0xA700)
    assert rec.staged == [] and rec.refused  # storescu stops at the first refusal
    assert list((tmp_path / "staging").iterdir()) == []


def test_calling_ae_title_not_allowed_is_rejected(receiver_factory, ct_head):
    receiver, rec = receiver_factory(allowed_calling_aets=["CT_VAN_1"])
    refused = storescu(receiver.port, ct_head[:1], aet="INTRUDER")
    assert refused.returncode != 0 and rec.staged == []
    accepted = storescu(receiver.port, ct_head[:1], aet="CT_VAN_1")
    assert accepted.returncode == 0, accepted.stderr
    assert len(rec.staged) == 1


def test_c_echo_is_answered(receiver_factory):
    receiver, _ = receiver_factory()
    echo = subprocess.run([dcmtk("echoscu"), "-aet", "SCANNER", "-aec", "MEDSENDX", "127.0.0.1", str(receiver.port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr


def test_staging_resumes_after_a_crash_and_drops_partial_writes(tmp_path, ct_head):
    staging = Staging(tmp_path / "staging")
    first = staging.stage_bytes(ct_head[0].read_bytes())
    second = staging.stage_bytes(ct_head[1].read_bytes())
    (staging.root / ".tmp-half-written").write_bytes(b"DICM" * 10)  # a kill -9 mid-write
    again = Staging(tmp_path / "staging")  # what the next start sees
    assert again.pending() == [first, second]
    assert not (staging.root / ".tmp-half-written").exists()
    again.remove(first)
    assert again.pending() == [second]


# --- drop folders ---------------------------------------------------------------------------------

class Collected:
    def __init__(self) -> None:
        self.items = []
        self.event = threading.Event()

    def submit(self, item) -> None:
        self.items.append(item)
        self.event.set()


def test_watcher_waits_for_a_slow_copy_and_handles_each_file_once(tmp_path, ct_head):
    drop = tmp_path / "drop"
    drop.mkdir()
    state = GatewayState(tmp_path / "gateway.sqlite3")
    got = Collected()
    watcher = DropFolderWatcher([drop], got.submit, state.seen, policy="move", settle_seconds=1.0).start()
    try:
        data = ct_head[0].read_bytes()
        target = drop / "usb" / "IM000001"
        target.parent.mkdir()
        with open(target, "wb") as fh:  # copied in four pieces, 0.4 s apart
            for i in range(4):
                fh.write(data[i * len(data) // 4:(i + 1) * len(data) // 4])
                fh.flush()
                time.sleep(0.4)
                assert not got.items, "a file still being written was taken"
        assert got.event.wait(10)
        item = got.items[0]
        assert item.path == target and item.size == len(data)
        assert item.path.read_bytes() == data
        state.mark_seen(item.sha256, "queued")
        watcher.done(item)
        assert (drop / DONE_DIR / "usb" / "IM000001").read_bytes() == data
        # the same content dropped again is recognised and not processed a second time
        (drop / "again.dcm").write_bytes(data)
        time.sleep(2.5)
        assert len(got.items) == 1
        assert (drop / DONE_DIR / "again.dcm").exists() and not (drop / "again.dcm").exists()
    finally:
        watcher.stop()
        state.close()


def test_watcher_reads_dicomdir_media_and_never_sends_the_index(tmp_path, ct_head):
    drop = tmp_path / "drop"
    media = drop / "CDROM"
    (media / "DICOM" / "ST000001").mkdir(parents=True)
    for i, src in enumerate(ct_head[:3]):
        plant_identity(src, media / "DICOM" / "ST000001" / f"IM{i:06d}", PATIENTS[0])
    (media / "DICOMDIR").write_bytes(b"index with patient names")
    state = GatewayState(tmp_path / "gateway.sqlite3")
    got = Collected()
    watcher = DropFolderWatcher([drop], got.submit, state.seen, policy="delete", settle_seconds=0.3).start()
    try:
        deadline = time.monotonic() + 15
        while len(got.items) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(i.path.name for i in got.items) == ["IM000000", "IM000001", "IM000002"]
        for item in got.items:
            state.mark_seen(item.sha256, "queued")
            watcher.done(item)
        assert not any(p.is_file() for p in drop.rglob("*")), "originals and DICOMDIR should be deleted"
    finally:
        watcher.stop()
        state.close()


# --- metrics --------------------------------------------------------------------------------------

def test_metrics_endpoint_serves_durable_counters(tmp_path):
    settings = Settings(state_dir=tmp_path / "state")
    settings.state_dir.mkdir()
    state = GatewayState(settings.state_dir / "gateway.sqlite3")
    state.add("received", 5)
    state.add("received_bytes", 5 * 1000)
    state.add("quarantined")
    server = MetricsServer(0, lambda: collect(settings, state), lambda: {"status": "ok"}).start()
    try:
        page = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
        assert "# TYPE medsendx_received_total counter" in page
        values = parse_prometheus_text(page)
        assert values["medsendx_received_total"] == 5
        assert values["medsendx_received_bytes_total"] == 5000
        assert values["medsendx_quarantined_total"] == 1
        assert values["medsendx_sent_total"] == 0
        # /healthz of a real service (and a dead thread): test_gateway_truthful.py
        assert httpx.get(f"http://127.0.0.1:{server.port}/nothing").status_code == 404
    finally:
        server.stop()
        state.close()
    # the counters survive a restart of the process (they live in SQLite)
    again = GatewayState(settings.state_dir / "gateway.sqlite3")
    assert again.counters()["received"] == 5
    again.close()
