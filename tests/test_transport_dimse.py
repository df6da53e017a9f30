"""C-STORE delivery: to a real Orthanc, and to a pynetdicom SCP that refuses some objects."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from delivery_samples import enqueue_all, real_samples, synthetic_samples
from medsendx.config import load_settings
from medsendx.delivery import Deliverer
from medsendx.outbox import Outbox
from medsendx.transport.dimse import store_status_outcome
from servers import free_port


def _settings(state: Path, **outbox):
    return load_settings(overrides={"state_dir": str(state), "outbox": outbox}, environ={})


def test_cstore_to_orthanc_negotiates_jpeg_ls_and_is_bit_exact(orthanc, tmp_path: Path, ct_head) -> None:
    settings = _settings(tmp_path / "state")
    outbox = Outbox(settings.outbox_db)
    samples = real_samples(ct_head[:8], tmp_path / "in")
    originals = {s.sop_instance_uid: pydicom.dcmread(s.path).pixel_array for s in samples}
    destination = f"dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    enqueue_all(outbox, samples, destination)
    assert Deliverer(outbox, settings).run_once() == 8
    assert outbox.counts()["sent"] == 8
    stored = {}
    for orthanc_id in orthanc.instance_ids():
        ds = pydicom.dcmread(io.BytesIO(orthanc.instance_file(orthanc_id)))
        stored[ds.SOPInstanceUID] = ds
    assert set(stored) == set(originals)
    for uid, ds in stored.items():
        assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless
        assert np.array_equal(ds.pixel_array, originals[uid])

    # The same objects again: Orthanc still holds one copy of each.
    outbox2 = Outbox(tmp_path / "state2" / "outbox.sqlite3")
    enqueue_all(outbox2, real_samples(ct_head[:8], tmp_path / "again"), destination)
    stats = Deliverer(outbox2, settings).drain(timeout=60)
    assert (stats.finished, stats.sent, stats.failed) == (True, 8, 0)
    assert len(orthanc.instance_ids()) == 8


class RefusingSCP:
    """A real pynetdicom Storage SCP that refuses chosen SOP Instance UIDs with a status and
    accepts only uncompressed transfer syntaxes."""

    def __init__(self, refuse: dict[str, int], max_associations: int = 10) -> None:
        self.refuse = refuse
        self.stored: dict[str, pydicom.Dataset] = {}
        self.syntaxes: list[str] = []
        self.port = free_port()
        ae = AE(ae_title="REFUSER")
        ae.maximum_associations = max_associations
        ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        uid = ds.SOPInstanceUID
        if uid in self.refuse:
            return self.refuse[uid]
        self.syntaxes.append(str(event.context.transfer_syntax))
        self.stored[uid] = ds
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def refusing_scp():
    scps: list[RefusingSCP] = []

    def make(refuse: dict[str, int], max_associations: int = 10) -> RefusingSCP:
        scps.append(RefusingSCP(refuse, max_associations))
        return scps[-1]

    yield make
    for scp in scps:
        scp.stop()


def test_failure_status_marks_failed_with_reason_and_others_go_on(refusing_scp, tmp_path: Path, ct_head) -> None:
    samples = synthetic_samples(ct_head[0], tmp_path / "in", 6)
    refused, busy = samples[1], samples[4]
    scp = refusing_scp({refused.sop_instance_uid: 0xA900, busy.sop_instance_uid: 0xA700})
    settings = _settings(tmp_path / "state", backoff_base_seconds=60.0)
    outbox = Outbox(settings.outbox_db)
    originals = {s.sop_instance_uid: pydicom.dcmread(s.path).pixel_array for s in samples}
    enqueue_all(outbox, samples, f"dimse://REFUSER@127.0.0.1:{scp.port}")

    Deliverer(outbox, settings).run_once()
    assert outbox.counts() == {"queued": 1, "sending": 0, "sent": 4, "failed": 1}
    (failed,) = outbox.items(state="failed")
    assert failed.sop_instance_uid == refused.sop_instance_uid
    assert failed.last_error == "peer refused the object (C-STORE status 0xA900)"
    (waiting,) = outbox.items(state="queued")
    assert waiting.sop_instance_uid == busy.sop_instance_uid  # out of resources: retried later
    assert "0xA700" in waiting.last_error
    # The peer took no compressed syntax: the objects went uncompressed, pixels intact.
    assert set(scp.syntaxes) <= {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
    assert len(scp.syntaxes) == 4
    for uid, ds in scp.stored.items():
        assert np.array_equal(ds.pixel_array, originals[uid])


def test_status_classification() -> None:
    assert store_status_outcome(0x0000) == (True, False)
    assert store_status_outcome(0xB007) == (True, False)
    assert store_status_outcome(0xA700) == (False, False)
    assert store_status_outcome(0xA900) == (False, True)
    assert store_status_outcome(0xC000) == (False, True)
    assert store_status_outcome(0x0122) == (False, True)


def test_unreachable_peer_is_transient(tmp_path: Path, ct_head) -> None:
    settings = _settings(tmp_path / "state", connect_timeout_seconds=2.0, backoff_base_seconds=60.0)
    outbox = Outbox(settings.outbox_db)
    enqueue_all(outbox, real_samples(ct_head[:2], tmp_path / "in"), f"dimse://NOBODY@127.0.0.1:{free_port()}")
    Deliverer(outbox, settings).run_once()
    assert [r.state for r in outbox.items()] == ["queued", "queued"]
    assert all(r.transient_faults == 1 for r in outbox.items())


def test_drain_gives_up_at_its_timeout_while_the_peer_stays_down(tmp_path: Path, ct_head) -> None:
    settings = _settings(tmp_path / "state", connect_timeout_seconds=1.0, backoff_base_seconds=0.05,
                         backoff_cap_seconds=0.2)
    outbox = Outbox(settings.outbox_db)
    enqueue_all(outbox, real_samples(ct_head[:2], tmp_path / "in"), f"dimse://NOBODY@127.0.0.1:{free_port()}")
    stats = Deliverer(outbox, settings).drain(timeout=1.5)
    assert not stats.finished
    assert stats.sent == 0 and stats.retried >= 2 and stats.passes >= 1
    assert outbox.counts()["queued"] == 2, "nothing is dropped when the drain stops"


def test_file_whose_meta_lacks_the_sop_uids_is_still_delivered(orthanc, tmp_path: Path, ct_head) -> None:
    """Streaming a file unchanged reads the instance's UIDs from its meta group; a file
    written without them is sent decoded instead, never stuck in retries."""
    (sample,) = synthetic_samples(ct_head[2], tmp_path / "in", 1)
    ds = pydicom.dcmread(sample.path)
    del ds.file_meta.MediaStorageSOPClassUID
    del ds.file_meta.MediaStorageSOPInstanceUID
    ds.save_as(sample.path, enforce_file_format=False)
    assert "MediaStorageSOPInstanceUID" not in pydicom.dcmread(sample.path).file_meta
    settings = _settings(tmp_path / "state", compress=False)
    outbox = Outbox(settings.outbox_db)
    enqueue_all(outbox, [sample], f"dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}")
    stats = Deliverer(outbox, settings).drain(timeout=30)
    assert stats.finished and stats.sent == 1, outbox.items()
    assert orthanc.sop_instance_uids() == [sample.sop_instance_uid]


def test_peer_that_takes_one_association_at_a_time_gets_everything(refusing_scp, tmp_path: Path, ct_head) -> None:
    """The second association of a batch is rejected (a limit of one): the first carries
    the whole batch, and nothing is refused or lost."""
    samples = synthetic_samples(ct_head[3], tmp_path / "in", 6)
    scp = refusing_scp({}, max_associations=1)
    settings = _settings(tmp_path / "state", dimse_associations=2, backoff_base_seconds=60.0)
    outbox = Outbox(settings.outbox_db)
    enqueue_all(outbox, samples, f"dimse://REFUSER@127.0.0.1:{scp.port}")
    stats = Deliverer(outbox, settings).drain(timeout=30)
    assert (stats.finished, stats.sent, stats.retried, stats.failed) == (True, 6, 0, 0)
    assert set(scp.stored) == {s.sop_instance_uid for s in samples}
