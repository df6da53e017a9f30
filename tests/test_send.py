"""``medsendx send`` and ``medsendx queue`` from the command line, against real peers."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from conftest import cli_env
from delivery_samples import orthanc_objects, enqueue_all, real_samples
from faultproxy import FaultProxy
from medsendx.outbox import Outbox


def test_send_deidentifies_delivers_and_resumes_without_resending(cli, orthanc, state_dir: Path, data_dir: Path, ct_head) -> None:
    url = "dicomweb+" + orthanc.dicomweb_url
    first = cli("send", data_dir / "ct-head-ge", "--to", url)
    assert first.returncode == 0, first.stderr
    # 28 slices and the study's triage results (SEG, SR, KOS: tests/test_triage_results.py)
    assert re.search(r"sent\s*│\s*31", first.stdout)
    wire = re.search(r"bytes on the wire vs raw input.*\((\d+\.\d)%\)", first.stdout)
    assert wire and float(wire.group(1)) <= 25.0, "CT on the wire must be at most a quarter of raw"

    stored = {uid: ds for uid, ds in orthanc_objects(orthanc).items() if ds.Modality == "CT"}
    assert len(stored) == 28
    originals = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in ct_head}
    original_names = {str(pydicom.dcmread(p, stop_before_pixels=True).PatientName) for p in ct_head}
    assert not originals & set(stored), "only de-identified UIDs reach the PACS"
    assert not original_names & {str(ds.PatientName) for ds in stored.values()}
    assert all(ds.PatientIdentityRemoved == "YES" for ds in stored.values())
    # Triage ran: every row carries a priority.
    assert all(item.priority is not None for item in Outbox(state_dir / "outbox.sqlite3").items())

    again = cli("send", data_dir / "ct-head-ge", "--to", url)
    assert again.returncode == 0, again.stderr
    assert re.search(r"already queued or sent \(skipped\)\s*│\s*28", again.stdout)
    assert re.search(r"sent\s*│\s*0", again.stdout)
    assert len(orthanc.instance_ids()) == 31


@pytest.mark.slow
def test_send_killed_then_run_again_delivers_each_object_once(orthanc, state_dir: Path, ct_head, tmp_path: Path) -> None:
    inbox = tmp_path / "scans"
    inbox.mkdir()
    for path in ct_head:
        shutil.copy(path, inbox / path.name)
    proxy = FaultProxy(("127.0.0.1", orthanc.http_port), bandwidth=1_500_000).start()  # a slow link
    try:
        url = f"dicomweb+http://127.0.0.1:{proxy.port}/dicom-web"
        command = [sys.executable, "-m", "medsendx", "send", str(inbox), "--to", url]
        proc = subprocess.Popen(command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(orthanc.instance_ids()) < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, "the run must still be busy when killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        partial = len(orthanc.instance_ids())
        assert 0 < partial < 31

        done = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr
    finally:
        proxy.stop()
    assert len(orthanc_objects(orthanc)) == 28 + 3  # the slices and their SEG, SR, KOS, each once
    counts = Outbox(state_dir / "outbox.sqlite3").counts()
    assert counts == {"queued": 0, "sending": 0, "sent": 31, "failed": 0}


def test_send_with_the_link_down_times_out_keeps_the_queue_and_resumes(cli, orthanc, state_dir: Path, ct_head, tmp_path: Path) -> None:
    inbox = tmp_path / "scans"
    inbox.mkdir()
    for path in ct_head[:4]:
        shutil.copy(path, inbox / path.name)
    proxy = FaultProxy(("127.0.0.1", orthanc.http_port)).start()
    try:
        url = f"dicomweb+http://127.0.0.1:{proxy.port}/dicom-web"
        proxy.link_down()
        stalled = cli("send", inbox, "--to", url, "--timeout", "3")
        assert stalled.returncode == 3, stalled.stderr
        assert "timed out" in stalled.stderr
        status = cli("queue", "status")
        assert status.returncode == 0
        assert re.search(r"total\s*│\s*7\s*│\s*0\s*│\s*0\s*│\s*0", status.stdout), status.stdout  # 4 + SEG/SR/KOS
        proxy.link_up()
        assert cli("queue", "retry").returncode == 0
        resumed = cli("send", inbox, "--to", url)
        assert resumed.returncode == 0, resumed.stderr
    finally:
        proxy.stop()
    assert len(orthanc_objects(orthanc)) == 4 + 3


def test_queue_list_retry_purge(cli, state_dir: Path, ct_head, tmp_path: Path) -> None:
    outbox = Outbox(state_dir / "outbox.sqlite3")
    samples = real_samples(ct_head[:3], tmp_path / "in")
    enqueue_all(outbox, samples, f"file://{tmp_path / 'hq'}")
    first, second, third = outbox.claim(limit=3)
    outbox.mark_sent(first.id)
    outbox.mark_failed(second.id, "peer refused the object (C-STORE status 0xA900)")
    outbox.mark_retry(third.id, "connection failed (ConnectError)", delay=3600)

    listed = cli("queue", "list", "--state", "failed", "--json")
    assert listed.returncode == 0
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["sop_instance_uid"] == second.sop_instance_uid
    assert row["last_error"] == "peer refused the object (C-STORE status 0xA900)"
    table = cli("queue", "list")
    assert table.returncode == 0 and "failed" in table.stdout and "sent" in table.stdout
    assert cli("queue", "retry", "--no-waiting").stdout.startswith("1 object")
    assert outbox.get(second.id).state == "queued"
    assert outbox.get(third.id).next_attempt_at > time.time() + 3000
    assert cli("queue", "retry").stdout.startswith("1 object")  # the one in backoff
    assert outbox.get(third.id).next_attempt_at <= time.time()
    purged = cli("queue", "purge")
    assert purged.returncode == 0 and purged.stdout.startswith("1 row")
    assert outbox.counts() == {"queued": 2, "sending": 0, "sent": 0, "failed": 0}
    assert cli("queue", "purge", "--no-sent").returncode != 0  # nothing to purge: usage error
