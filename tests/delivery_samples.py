"""Objects for the delivery tests: the real CT slices, and many small synthetic ones cut
from them (new UIDs, a 64x64 crop of real tissue) when a test needs hundreds."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid


@dataclass(frozen=True)
class Sample:
    path: Path
    sop_instance_uid: str
    study_instance_uid: str


def real_samples(paths: list[Path], folder: Path) -> list[Sample]:
    """Copies of real files (the outbox takes its input files over)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        copy = folder / f"{ds.SOPInstanceUID}.dcm"
        shutil.copyfile(path, copy)
        out.append(Sample(copy, ds.SOPInstanceUID, ds.StudyInstanceUID))
    return out


def synthetic_samples(source: Path, folder: Path, count: int, size: int = 64) -> list[Sample]:
    """``count`` small CT objects of one new study, each a different crop of a real slice."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array
    study, series = generate_uid(), generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    out = []
    for index in range(count):
        y = 128 + (index * 7) % (pixels.shape[0] - 256)
        x = 128 + (index * 13) % (pixels.shape[1] - 256)
        crop = np.ascontiguousarray(pixels[y:y + size, x:x + size])
        ds.Rows, ds.Columns = crop.shape
        ds.PixelData = crop.tobytes()
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = index + 1
        path = folder / f"{uid}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(Sample(path, uid, study))
    return out


def enqueue_all(outbox, samples: list[Sample], destination: str, priority: int | None = None) -> None:
    for sample in samples:
        assert outbox.enqueue(
            sample.path,
            sop_instance_uid=sample.sop_instance_uid,
            study_instance_uid=sample.study_instance_uid,
            destination=destination,
            priority=priority,
        )


def orthanc_objects(orthanc) -> dict:
    """{SOP Instance UID: dataset} of everything the PACS holds; fails on a duplicate."""
    import io

    out: dict[str, pydicom.Dataset] = {}
    for orthanc_id in orthanc.instance_ids():
        ds = pydicom.dcmread(io.BytesIO(orthanc.instance_file(orthanc_id)))
        assert ds.SOPInstanceUID not in out, "the PACS holds an instance twice"
        out[ds.SOPInstanceUID] = ds
    return out
