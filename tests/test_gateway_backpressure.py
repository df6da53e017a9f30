"""Backpressure: scanners pushing faster than the gateway can process, with the destination
down. The receiver slows the scanners instead of piling objects up, every object is still
accepted and staged durably, and everything is delivered once the destination returns."""

from __future__ import annotations

import subprocess
import threading
import time

import httpx
import pytest

from medsendx.gateway.flakylink import FlakyLink
from medsendx.gateway.scanday import PATIENTS, plant_identity
from servers import dcmtk
from test_gateway_service import GatewayProcess, wait_for

QUEUE_SIZE = 3
WORKERS = 2
SCANNERS = 3


@pytest.mark.slow
def test_flood_with_destination_down_stays_bounded_and_loses_nothing(orthanc, ct_head, tmp_path):
    # three scanners, each with its own series (own UIDs, own synthetic patient)
    series = []
    for s in range(SCANNERS):
        folder = tmp_path / f"scanner{s}"
        folder.mkdir()
        series.append([plant_identity(src, folder / f"{i:03d}.dcm", PATIENTS[s % len(PATIENTS)],
                                      new_uids_seed=f"flood-{s}") for i, src in enumerate(ct_head)])
    total = sum(len(files) for files in series)

    link = FlakyLink(("127.0.0.1", orthanc.http_port), reset_fraction=0.0).start()
    link.down()  # the hospital is unreachable for the whole flood
    gateway = GatewayProcess(
        tmp_path / "state", f"dicomweb+http://127.0.0.1:{link.port}/dicom-web",
        # one worker process: the pipeline is much slower than three scanners on loopback
        env={"MEDSENDX_GATEWAY__QUEUE_SIZE": str(QUEUE_SIZE), "MEDSENDX_GATEWAY__WORKERS": str(WORKERS),
             "MEDSENDX_GATEWAY__PROCESSES": "1"},
    ).start()
    try:
        peaks = {"queue": 0, "staged": 0}
        flooding = threading.Event()
        flooding.set()

        def watch() -> None:
            while flooding.is_set():
                health = httpx.get(f"http://127.0.0.1:{gateway.http_port}/healthz", timeout=5).json()
                for key in peaks:
                    peaks[key] = max(peaks[key], int(health[key]))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        scanners = [
            subprocess.Popen([dcmtk("storescu"), "-aet", f"CT_VAN{s}", "-aec", "MEDSENDX", "127.0.0.1",
                              str(gateway.dicom_port), *map(str, files)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for s, files in enumerate(series)
        ]
        for scanner in scanners:
            _, err = scanner.communicate(timeout=300)
            assert scanner.returncode == 0, err  # every object accepted (success), none refused
        wait_for(lambda: gateway.metrics()["deidentified_total"] == total, timeout=300,
                 what="every flooded object de-identified and queued")
        flooding.clear()
        watcher.join(timeout=10)

        # bounded: objects wait in the queue up to its size; beyond it each association holds
        # one staged object while the scanner is made to wait (one per scanner at most)
        assert 0 < peaks["queue"] <= QUEUE_SIZE
        assert peaks["staged"] <= QUEUE_SIZE + WORKERS + SCANNERS
        figures = gateway.metrics()
        assert figures["received_total"] == total and figures["refused_total"] == 0
        assert figures["sent_total"] == 0 and figures["queued"] == total and figures["staged"] == 0
        assert orthanc.instance_ids() == []

        link.up()
        wait_for(lambda: gateway.metrics()["sent_total"] == total, timeout=300, what="delivery after the link returned")
    finally:
        assert gateway.terminate() == 0
        link.stop()
    uids = orthanc.sop_instance_uids()
    assert len(uids) == total and len(set(uids)) == total  # nothing lost, nothing twice
