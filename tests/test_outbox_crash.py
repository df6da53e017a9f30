"""Crash safety: a sender killed with SIGKILL at random moments, restarted, again and again.

At the end the PACS (a real Orthanc) holds every SOP Instance UID exactly once (the pixels
of a random 40 decoded and compared), and the outbox agrees: all sent, the spool empty.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import httpx

import numpy as np
import pydicom
import pytest

from conftest import cli_env
from delivery_samples import synthetic_samples
from medsendx.outbox import Outbox

# Enqueue whatever is still in the input folder, then deliver until nothing is left.
WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import pydicom
    from medsendx.config import load_settings
    from medsendx.delivery import Deliverer
    from medsendx.outbox import Outbox

    state, inbox, destination = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    settings = load_settings(overrides={"state_dir": str(state), "outbox": {
        "backoff_base_seconds": 0.05, "backoff_cap_seconds": 0.5, "batch_max_objects": 8}}, environ={})
    outbox = Outbox(settings.outbox_db)
    for path in sorted(inbox.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        outbox.enqueue(path, sop_instance_uid=ds.SOPInstanceUID, study_instance_uid=ds.StudyInstanceUID,
                       destination=destination)
    assert Deliverer(outbox, settings).drain().finished
    print("done", flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(orthanc, tmp_path: Path, ct_head) -> None:
    rng = random.Random(int(os.environ.get("MEDSENDX_CRASH_SEED", "20261124")))
    inbox = tmp_path / "inbox"
    samples = synthetic_samples(ct_head[5], inbox, 200)
    originals = {s.sop_instance_uid: pydicom.dcmread(s.path).pixel_array for s in samples}
    state = tmp_path / "state"
    destination = "dicomweb+" + orthanc.dicomweb_url
    command = [sys.executable, "-c", WORKER, str(state), str(inbox), destination]

    # Kills are placed by progress, not by the clock (the whole run took under 0.8 s on
    # one machine, over 2 s on another): some in the first second (start-up, enqueueing,
    # the first batch), the rest once the PACS holds a random 1..25 more objects than when
    # the run started. A run that ends on its own before its kill ends the loop.
    kills = mid_delivery_kills = 0
    finished = False
    deadline = time.monotonic() + 120
    while kills < 8 and time.monotonic() < deadline:
        stored_before = orthanc.statistics()["CountInstances"]
        early = rng.random() < 0.25
        kill_at, goal = time.monotonic() + rng.uniform(0.2, 1.0), stored_before + rng.randint(1, 25)
        proc = subprocess.Popen(command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = False
        while proc.poll() is None:
            stored = orthanc.statistics()["CountInstances"]
            if (early and time.monotonic() >= kill_at) or (not early and stored >= goal) or time.monotonic() > deadline:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                kills += 1
                mid_delivery_kills += 0 < stored < len(samples)
                break
            time.sleep(0.01)
        if killed:
            proc.communicate()
            continue
        out, err = proc.communicate()
        assert proc.returncode == 0, err[-2000:]
        finished = True
        break
    if not finished:  # the last run goes to the end
        done = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
    assert mid_delivery_kills >= 2, "the test must really kill the sender mid-delivery"

    outbox = Outbox(state / "outbox.sqlite3")
    assert outbox.counts() == {"queued": 0, "sending": 0, "sent": len(samples), "failed": 0}
    assert [p for p in outbox.spool_dir.iterdir()] == [], "sent objects leave the spool"
    assert list(inbox.glob("*.dcm")) == []

    # Every stored instance, with its UID, in one request; then the pixels of a sample.
    stored = httpx.get(f"{orthanc.url}/instances", params={"expand": ""}, timeout=60).json()
    uids = Counter(entry["MainDicomTags"]["SOPInstanceUID"] for entry in stored)
    assert uids.keys() == originals.keys()
    assert set(uids.values()) == {1}, "each SOP Instance UID exactly once at the PACS"
    for entry in rng.sample(stored, 40):
        ds = pydicom.dcmread(io.BytesIO(orthanc.instance_file(entry["ID"])))
        assert np.array_equal(ds.pixel_array, originals[ds.SOPInstanceUID]), "stored pixels differ"
