"""STOW-RS delivery to a real Orthanc (DICOMweb plugin)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import JPEGLSLossless

from delivery_samples import orthanc_objects, enqueue_all, real_samples, synthetic_samples
from medsendx.config import load_settings
from medsendx.delivery import Deliverer
from medsendx.outbox import Outbox
from medsendx.transport.base import open_transport


def _settings(state: Path, **outbox):
    return load_settings(overrides={"state_dir": str(state), "outbox": outbox}, environ={})


def test_stow_delivers_every_object_once_compressed_and_bit_exact(orthanc, tmp_path: Path, ct_head) -> None:
    settings = _settings(tmp_path / "state", batch_max_bytes=600_000)  # several requests
    outbox = Outbox(settings.outbox_db)
    samples = real_samples(ct_head[:10], tmp_path / "in")
    originals = {s.sop_instance_uid: pydicom.dcmread(s.path).pixel_array for s in samples}
    raw = sum(s.path.stat().st_size for s in samples)
    destination = "dicomweb+" + orthanc.dicomweb_url
    enqueue_all(outbox, samples, destination)

    assert Deliverer(outbox, settings).run_once() == 10
    assert outbox.counts() == {"queued": 0, "sending": 0, "sent": 10, "failed": 0}
    stored = orthanc_objects(orthanc)
    assert set(stored) == set(originals)
    for uid, ds in stored.items():
        assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless
        assert np.array_equal(ds.pixel_array, originals[uid])
    assert outbox.stats()["wire_bytes"] < 0.3 * raw

    # Idempotent: the same objects again (what a crash before 'sent' leads to) -> one copy.
    transport = open_transport(destination, settings)
    again = real_samples(ct_head[:10], tmp_path / "again")
    items = {i.sop_instance_uid: i for i in outbox.items()}
    resend = [type(i)(**{**i.__dict__, "path": s.path}) for s in again for i in [items[s.sop_instance_uid]]]
    assert all(r.ok for r in transport.send(resend, lambda *_: None))
    transport.close()
    assert len(orthanc.instance_ids()) == 10


def test_a_refused_object_fails_with_the_peer_reason_and_the_others_go_on(orthanc, tmp_path: Path, ct_head) -> None:
    settings = _settings(tmp_path / "state")
    outbox = Outbox(settings.outbox_db)
    samples = synthetic_samples(ct_head[0], tmp_path / "in", 6)
    bad = samples[2]
    ds = pydicom.dcmread(bad.path)
    del ds.SeriesInstanceUID  # Orthanc cannot index it: FailedSOPSequence, reason 0xC000
    ds.save_as(bad.path)
    destination = "dicomweb+" + orthanc.dicomweb_url
    enqueue_all(outbox, samples, destination)

    Deliverer(outbox, settings).run_once()
    assert outbox.counts() == {"queued": 0, "sending": 0, "sent": 5, "failed": 1}
    (failed,) = outbox.items(state="failed")
    assert failed.sop_instance_uid == bad.sop_instance_uid
    assert failed.last_error == "peer refused the object (STOW-RS failure reason 0xC000)"
    assert sorted(orthanc.sop_instance_uids()) == sorted(s.sop_instance_uid for s in samples if s is not bad)
    # Not retried forever: another pass leaves it alone.
    assert Deliverer(outbox, settings).run_once() == 0


def test_unreachable_server_is_transient_and_backs_off(tmp_path: Path, ct_head) -> None:
    from servers import free_port

    settings = _settings(tmp_path / "state", connect_timeout_seconds=2.0, backoff_base_seconds=30.0)
    outbox = Outbox(settings.outbox_db)
    enqueue_all(outbox, real_samples(ct_head[:3], tmp_path / "in"), f"dicomweb+http://127.0.0.1:{free_port()}/dicom-web")
    deliverer = Deliverer(outbox, settings)
    assert deliverer.run_once() == 3
    rows = outbox.items()
    assert all(r.state == "queued" and r.transient_faults == 1 for r in rows)
    assert all("connection failed" in r.last_error for r in rows)
    assert deliverer.run_once() == 0, "the next pass respects the backoff"
