"""Delivery over a flaky link: a fault-injecting proxy between the sender and Orthanc."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from delivery_samples import orthanc_objects, enqueue_all, real_samples, synthetic_samples
from faultproxy import FaultProxy
from medsendx.config import load_settings
from medsendx.delivery import Deliverer
from medsendx.outbox import Outbox

FAST_RETRY = {"backoff_base_seconds": 0.02, "backoff_cap_seconds": 0.3, "connect_timeout_seconds": 2.0,
              "read_timeout_seconds": 10.0}


def _settings(state: Path, **outbox):
    return load_settings(overrides={"state_dir": str(state), "outbox": {**FAST_RETRY, **outbox}}, environ={})


def _deliver_until_done(outbox: Outbox, settings, seconds: float = 90.0) -> None:
    if not Deliverer(outbox, settings).drain(timeout=seconds).finished:
        pytest.fail(f"delivery did not finish: {outbox.counts()}")


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_resets_on_a_third_of_connections_every_object_arrives_once(kind, orthanc, tmp_path: Path, ct_head) -> None:
    port = orthanc.http_port if kind == "dicomweb" else orthanc.dicom_port
    proxy = FaultProxy(("127.0.0.1", port), reset_probability=1 / 3, reset_window=400_000, latency=0.001,
                       seed=3).start()
    try:
        # Small requests so that there are many connections to break.
        settings = _settings(tmp_path / "state", batch_max_objects=4, batch_max_bytes=300_000)
        outbox = Outbox(settings.outbox_db)
        samples = real_samples(ct_head[:12], tmp_path / "real") + synthetic_samples(ct_head[1], tmp_path / "syn", 24)
        originals = {s.sop_instance_uid: pydicom.dcmread(s.path).pixel_array for s in samples}
        destination = (f"dicomweb+http://127.0.0.1:{proxy.port}/dicom-web" if kind == "dicomweb"
                       else f"dimse://{orthanc.aet}@127.0.0.1:{proxy.port}")
        enqueue_all(outbox, samples, destination)
        _deliver_until_done(outbox, settings)
    finally:
        proxy.stop()
    assert proxy.resets >= 2, "the proxy must really have broken connections"
    assert outbox.counts() == {"queued": 0, "sending": 0, "sent": len(samples), "failed": 0}
    assert outbox.stats()["retries"] >= 1
    stored = orthanc_objects(orthanc)
    assert set(stored) == set(originals)
    for uid, ds in stored.items():
        assert np.array_equal(ds.pixel_array, originals[uid])


def test_a_refusal_period_delays_but_loses_nothing(orthanc, tmp_path: Path, ct_head) -> None:
    proxy = FaultProxy(("127.0.0.1", orthanc.http_port)).start()
    try:
        settings = _settings(tmp_path / "state")
        outbox = Outbox(settings.outbox_db)
        samples = real_samples(ct_head[:6], tmp_path / "in")
        enqueue_all(outbox, samples, f"dicomweb+http://127.0.0.1:{proxy.port}/dicom-web")
        proxy.link_down()
        deliverer = Deliverer(outbox, settings)
        for _ in range(5):
            deliverer.run_once()
            time.sleep(0.1)
        assert outbox.counts()["sent"] == 0
        assert all(r.state == "queued" and r.transient_faults >= 1 for r in outbox.items())
        proxy.link_up()
        _deliver_until_done(outbox, settings)
    finally:
        proxy.stop()
    assert sorted(orthanc.sop_instance_uids()) == sorted(s.sop_instance_uid for s in samples)


def test_a_reset_mid_cstore_is_retried_at_once_not_after_the_read_timeout(orthanc, tmp_path: Path, ct_head) -> None:
    """pynetdicom would wait the whole DIMSE timeout for the response to a C-STORE whose
    connection was reset. With a read timeout of 10 minutes, a stall like that could not
    finish inside the 2-minute drain below; the resets must be noticed when they happen."""
    proxy = FaultProxy(("127.0.0.1", orthanc.dicom_port), reset_every=700_000, seed=11).start()
    try:
        settings = _settings(tmp_path / "state", read_timeout_seconds=600.0, compress=False, batch_max_objects=2)
        outbox = Outbox(settings.outbox_db)
        samples = real_samples(ct_head[:6], tmp_path / "in")
        enqueue_all(outbox, samples, f"dimse://{orthanc.aet}@127.0.0.1:{proxy.port}")
        stats = Deliverer(outbox, settings).drain(timeout=120)
    finally:
        proxy.stop()
    assert proxy.resets >= 2, "the proxy must really have broken C-STOREs"
    assert stats.finished and stats.sent == 6, outbox.counts()
    assert stats.retried >= 1
    assert sorted(orthanc.sop_instance_uids()) == sorted(s.sop_instance_uid for s in samples)
