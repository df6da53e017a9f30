"""The pipeline writes each de-identified object once, already in its final (JPEG-LS) form,
with triage and QC features computed from the same in-memory object."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import JPEGLSLossless

from medsendx.config import Settings
from medsendx.gateway.scanday import PATIENTS, plant_identity
from medsendx.pipeline import Pipeline


def test_object_is_written_once_compressed_and_pixel_identical(ct_head, tmp_path, monkeypatch):
    source = plant_identity(ct_head[0], tmp_path / "in.dcm", PATIENTS[0])
    pipeline = Pipeline(Settings(state_dir=tmp_path / "state"), destination=f"folder:{tmp_path / 'hq'}")
    spool = pipeline.out_dir.resolve()
    into_spool: list[str] = []
    real_replace = os.replace

    def counting_replace(src, dst, *args, **kwargs):
        if Path(dst).resolve().parent == spool:
            into_spool.append(Path(dst).name)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", counting_replace)
    result = pipeline.prepare(source)
    monkeypatch.undo()
    pipeline.close()

    assert result.status == "ready"
    assert into_spool == [result.output.name]  # one atomic write, no rewrite after compression
    written = pydicom.dcmread(result.output)
    assert written.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert result.output.stat().st_size < source.stat().st_size / 2
    assert np.array_equal(written.pixel_array, pydicom.dcmread(source).pixel_array)
    assert written.PatientIdentityRemoved == "YES"
    identity = [v.encode() for v in PATIENTS[0].identifying_values()]
    assert not [v for v in identity if v in result.output.read_bytes()]
    # triage and QC features came from the same object (its de-identified UID)
    assert result.priority is not None and result.triage is not None
    assert result.features["sop_instance_uid"] == result.sop_instance_uid == written.SOPInstanceUID
