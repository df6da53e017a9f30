"""Synthetic scans for the triage tests: real CT slices with a planted defect, a
mammography phantom with a known dense fraction, and a multi-frame object built from
real slices. Cases that the real files in ../shared/data do not contain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medsendx.dicomio import modality_pixels, padding_mask, read_dataset, stored_pixels


def ct_with_hu(template: Path, edit) -> Dataset:
    """A real CT slice whose HU image is replaced by ``edit(hu, inside)``; padding stays
    where it was (``inside`` is the non-padding mask)."""
    ds = read_dataset(template)
    stored = stored_pixels(ds)
    inside = ~padding_mask(ds, stored)
    hu = modality_pixels(ds).astype(np.float64)
    new_hu = np.asarray(edit(hu.copy(), inside), dtype=np.float64)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    new_stored = np.round((new_hu - intercept) / slope)
    limits = np.iinfo(stored.dtype)
    new_stored = np.clip(new_stored, limits.min, limits.max)
    new_stored[~inside] = stored[~inside]
    ds.PixelData = new_stored.astype(stored.dtype).tobytes()
    ds.SOPInstanceUID = generate_uid()
    return ds


def metal_streaks(hu: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """A dental-filling-like metal disc at 3071 HU with bright and dark radial streaks."""
    rows, cols = hu.shape
    cy, cx = rows // 2 + 60, cols // 2
    y, x = np.mgrid[:rows, :cols]
    angle = np.arctan2(y - cy, x - cx)
    radius = np.hypot(y - cy, x - cx)
    streaks = 400.0 * np.cos(12 * angle) * np.exp(-radius / 120.0)
    hu = np.where(inside & (hu > -500), hu + streaks, hu)
    hu[radius <= 7] = 3071.0
    return hu


def clipped(hu: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """A detector that saturates at +80 HU: everything brighter piles up there."""
    return np.where(inside, np.minimum(hu, 80.0), hu)


def truncated_fov(hu: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The head magnified 1.8x about the centre, so that it runs across the edge of the
    reconstruction circle (a field of view too small for the patient)."""
    rows, cols = hu.shape
    y, x = np.mgrid[:rows, :cols]
    sy = np.clip(np.round((y - rows / 2) / 1.8 + rows / 2).astype(int), 0, rows - 1)
    sx = np.clip(np.round((x - cols / 2) / 1.8 + cols / 2).astype(int), 0, cols - 1)
    return hu[sy, sx]


def noisy(hu: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Noise of 150 HU s.d. (a tube-current failure), far above head CT's few HU."""
    rng = np.random.default_rng(7)
    return np.where(inside, hu + rng.normal(0.0, 150.0, hu.shape), hu)


def empty(hu: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Nothing on the table: air only."""
    rng = np.random.default_rng(8)
    return np.where(inside, -1000.0 + rng.normal(0.0, 4.0, hu.shape), hu)


def dataset_from_pixels(
    pixels: np.ndarray, modality: str, photometric: str = "MONOCHROME2", **attributes
) -> Dataset:
    """A minimal, valid single-frame greyscale object around ``pixels`` (uint16 / int16)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if pixels.dtype == np.int16 else 14
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def mammography_phantom(
    dense_fraction: float, photometric: str = "MONOCHROME2", seed: int = 3, cut_off: bool = False
) -> tuple[Dataset, float]:
    """A breast-shaped phantom: background, fatty tissue and dense blobs covering a known
    share of the breast. Returns the dataset and the true percent density. ``cut_off``
    makes the breast run across the nipple-side edge (a detector too small)."""
    rng = np.random.default_rng(seed)
    rows, cols = 600, 480
    y, x = np.mgrid[:rows, :cols]
    # half-ellipse breast against the chest wall (left edge)
    reach = cols * (1.6 if cut_off else 0.8)
    breast = ((y - rows / 2) / (rows * 0.42)) ** 2 + (x / reach) ** 2 <= 1.0
    image = np.full((rows, cols), 60.0)
    image[breast] = 1100.0
    # dense tissue: blobs grown until they cover the wanted share of the breast
    dense = np.zeros_like(breast)
    target = dense_fraction * breast.sum()
    while dense.sum() < target:
        cy, cx = rng.integers(0, rows), rng.integers(0, cols)
        r = rng.integers(10, 35)
        blob = ((y - cy) ** 2 + (x - cx) ** 2 <= r * r) & breast
        dense |= blob
    image[dense] = 2300.0
    image += rng.normal(0.0, 70.0, image.shape)
    stored = np.clip(np.round(image), 0, 16383).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (16383 - stored).astype(np.uint16)
    truth = 100.0 * dense.sum() / breast.sum()
    ds = dataset_from_pixels(stored, "MG", photometric, PixelSpacing=[0.1, 0.1])
    return ds, truth


def multiframe_from(paths: list[Path]) -> Dataset:
    """One multi-frame object whose frames are the pixel data of real single slices."""
    first = read_dataset(paths[0])
    frames = [stored_pixels(read_dataset(p)) for p in paths]
    first.NumberOfFrames = len(frames)
    first.PixelData = np.stack(frames).astype(frames[0].dtype).tobytes()
    first.SOPInstanceUID = generate_uid()
    return first


def save(ds: Dataset, path: Path) -> Path:
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path
