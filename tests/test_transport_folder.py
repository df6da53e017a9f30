"""Folder destination and the lossless wire encoding (bit-exact round trips)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

from delivery_samples import enqueue_all, real_samples
from medsendx.config import load_settings
from medsendx.delivery import Deliverer
from medsendx.outbox import Outbox
from medsendx.transcode import UNCOMPRESSED_SYNTAXES, prepare_for_wire
from medsendx.transport.base import TransportError, open_transport


def _settings(state: Path, **outbox):
    return load_settings(overrides={"state_dir": str(state), "outbox": outbox}, environ={})


def test_folder_delivery_is_atomic_idempotent_and_lossless(tmp_path: Path, ct_head) -> None:
    settings = _settings(tmp_path / "state")
    outbox = Outbox(settings.outbox_db)
    hq = tmp_path / "hq"
    samples = real_samples(ct_head[:6], tmp_path / "in")
    originals = {s.sop_instance_uid: pydicom.dcmread(s.path) for s in samples}
    raw_total = sum(s.path.stat().st_size for s in samples)
    enqueue_all(outbox, samples, f"file://{hq}")
    deliverer = Deliverer(outbox, settings)
    assert deliverer.run_once() == 6
    assert outbox.counts()["sent"] == 6
    assert list(outbox.spool_dir.iterdir()) == []

    delivered = sorted(hq.rglob("*"))
    files = [p for p in delivered if p.is_file()]
    assert len(files) == 6
    assert not [p for p in files if p.name.startswith(".tmp-")]
    for path in files:
        got = pydicom.dcmread(path)
        want = originals[got.SOPInstanceUID]
        assert path.name == f"{got.SOPInstanceUID}.dcm"
        assert path.parent.name == want.StudyInstanceUID
        assert got.file_meta.TransferSyntaxUID == JPEGLSLossless
        assert np.array_equal(got.pixel_array, want.pixel_array), "pixels must survive bit for bit"
        assert got.PatientID == want.PatientID  # only the pixel encoding changed
    assert outbox.stats()["wire_bytes"] < raw_total * 0.3

    # Sending the same objects again (a crash after the write, before 'sent') leaves one copy.
    again = real_samples(ct_head[:6], tmp_path / "again")
    transport = open_transport(str(hq), settings)
    items = [outbox.get(i.id) for i in outbox.items()]
    copies = [type(items[0])(**{**item.__dict__, "path": s.path}) for item, s in
              zip(items, sorted(again, key=lambda s: [i.sop_instance_uid for i in items].index(s.sop_instance_uid)))]
    assert all(r.ok for r in transport.send(copies, lambda *_: None))
    assert len([p for p in hq.rglob("*") if p.is_file()]) == 6


@pytest.mark.parametrize("folder", ["transfer-syntaxes", "mr-brain-ge", "ct-phantom-philips"])
def test_wire_encoding_is_bit_exact(data_dir: Path, folder: str) -> None:
    """Every real file we have: the decoded pixels after the wire equal the originals."""
    checked = 0
    for path in sorted((data_dir / folder).iterdir())[:8]:
        try:
            original = pydicom.dcmread(path)
            pixels = original.pixel_array
        except Exception:
            continue  # not an image (README, non-image object)
        for accepted in (None, [str(JPEG2000Lossless)], list(UNCOMPRESSED_SYNTAXES)):
            payload = prepare_for_wire(path, accepted)
            if accepted is not None:
                assert payload.transfer_syntax in accepted
            got = pydicom.dcmread(io.BytesIO(payload.data))
            assert got.SOPInstanceUID == original.SOPInstanceUID
            assert np.array_equal(got.pixel_array, pixels), f"{path.name} via {payload.transfer_syntax.name}"
            checked += 1
    assert checked >= 6


def test_unknown_scheme_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="unsupported destination scheme"):
        open_transport("ftp://example/x", _settings(tmp_path))
