"""Fleet features (issue 5): the fast integer path gives the values of a plain float
reference on every real slice, and the mammography (MG) features behave as physics says."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from medsendx.dicomio import read_dataset
from medsendx.fleet import extract_features
from medsendx.fleet import features as F

IMAGE_FEATURES = ("mean", "std", "peak", "air_mean_hu", "air_noise_hu", "air_fraction", "soft_tissue_hu",
                  "bone_peak_hu", "uniformity_hu", "background_level", "snr")


# --- a straightforward reference: float64 modality values, strided tiles, scipy morphology ---


def _reference(ds: pydicom.Dataset) -> dict:
    stored = ds.pixel_array
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    pad = stored == ds.PixelPaddingValue if "PixelPaddingValue" in ds else np.zeros(stored.shape, bool)
    image = values[~pad]
    out = {"mean": image.mean(), "std": image.std(), "peak": image.max()}
    h, w = values.shape
    h8, w8 = h - h % 8, w - w % 8
    blocks = values[:h8, :w8].reshape(h8 // 8, 8, w8 // 8, 8).transpose(0, 2, 1, 3).reshape(h8 // 8, w8 // 8, 64)
    means, variances = blocks.mean(axis=2), blocks.var(axis=2, ddof=1)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) <= min(h, w) / 2 - 1
    tile = lambda m: m[:h8, :w8].reshape(h8 // 8, 8, w8 // 8, 8).transpose(0, 2, 1, 3).reshape(h8 // 8, w8 // 8, 64)  # noqa: E731
    whole = tile(inside).all(axis=2) & ~tile(pad).any(axis=2)
    cross = ndimage.generate_binary_structure(2, 1)
    erode = lambda m: ndimage.binary_erosion(m, cross, border_value=1)  # noqa: E731
    if ds.Modality == "CT":
        body = whole & (means > -500)
        air = erode(whole & (means < -700)) & ~ndimage.binary_fill_holes(body)
        if air.any():
            air &= np.abs(means - np.median(means[air])) < 20
            air &= variances <= 4 * np.median(variances[air])
            out["air_mean_hu"], out["air_noise_hu"] = means[air].mean(), math.sqrt(variances[air].mean())
        out["air_fraction"] = air.sum() / whole.sum()
        lattice = values[::2, ::2][~pad[::2, ::2]]
        hist = np.histogram(np.clip(lattice, -1100, 3099).astype(int), bins=4200, range=(-1100, 3100))[0]
        out["soft_tissue_hu"] = F._mode(hist, (-100, 100), -1100, smooth=5, min_count=50)
        out["bone_peak_hu"] = F._upper_level(hist, (300, 3000), -1100, fraction=0.9, min_count=50)
        soft = whole & (means > -100) & (means < 100)
        if body.sum() >= 16 and soft.sum() >= 8:
            ys, xs = np.nonzero(body)
            ty, tx = np.nonzero(soft)
            dist = np.hypot(ty - ys.mean(), tx - xs.mean())
            extent = np.hypot(ys - ys.mean(), xs - xs.mean()).max()
            central, outer = dist < 0.35 * extent, (dist >= 0.5 * extent) & (dist < 0.9 * extent)
            if central.sum() >= 2 and outer.sum() >= 2:
                out["uniformity_hu"] = means[ty, tx][outer].mean() - means[ty, tx][central].mean()
        return out
    sign = -1.0 if ds.PhotometricInterpretation == "MONOCHROME1" else 1.0
    flipped, tile_top = sign * image, (sign * values[:h8, :w8]).reshape(h8 // 8, 8, w8 // 8, 8).max(axis=(1, 3))
    bottom, top = flipped.min(), flipped.max()
    hist, edges = np.histogram(flipped, bins=1024, range=(bottom, top))
    threshold = bottom + 0.1 * (edges[np.searchsorted(np.cumsum(hist), 0.99 * flipped.size)] - bottom)
    low = whole & (tile_top < threshold)
    background = erode(low) if erode(low).any() else low
    level, noise = (sign * means)[background].mean(), math.sqrt(variances[background].mean())
    out["background_level"] = sign * level
    if noise > 0:  # a blank slice has no noise to compare with
        true_noise = noise / 0.655 if ds.Modality == "MR" else noise
        out["snr"] = (flipped[flipped > threshold].mean() - level) / true_noise
    return out


def _real_images(data_dir: Path) -> list[Path]:
    folders = ("ct-head-ge", "ct-phantom-philips", "mr-brain-ge", "transfer-syntaxes")
    return [p for f in folders for p in sorted((data_dir / f).glob("*.dcm")) if "PixelData" in pydicom.dcmread(p, stop_before_pixels=False)]


def _assert_same(got: dict, want: dict, label: str) -> None:
    for key in IMAGE_FEATURES:
        expected = want.get(key)
        if expected is None:
            assert got[key] is None, (label, key, got[key])
        else:
            assert got[key] == pytest.approx(float(expected), rel=1e-9, abs=1e-6), (label, key)


def test_fast_features_equal_a_plain_float_reference_on_every_real_slice(data_dir: Path) -> None:
    paths = _real_images(data_dir)
    assert len(paths) >= 28 + 28 + 24 + 9
    checked = {"CT": 0, "MR": 0}
    for path in paths:
        ds = read_dataset(path)
        got = extract_features(ds)
        _assert_same(got, _reference(ds), str(path.relative_to(data_dir)))
        checked[got["modality"]] += 1
        if got["modality"] == "CT":
            assert got["air_mean_hu"] is not None  # the comparison covers the physics, not only Nones
    assert checked["CT"] >= 56 and checked["MR"] >= 33


# --- mammography: a synthetic detector image (no real MG file in ../shared/data) ---------


def _mammogram(path: Path, *, background: float = 300.0, tissue: float = 2600.0, noise: float = 12.0,
               monochrome1: bool = False, seed: int = 5) -> Path:
    """A 14-bit MG 'for presentation' image: a breast (half-disc with a thinning skin line and
    some glandular texture) against the detector background, with Gaussian quantum noise."""
    rng = np.random.default_rng(seed)
    rows, cols = 640, 512
    yy, xx = np.mgrid[0:rows, 0:cols]
    r = np.hypot(yy - rows / 2, xx) / 300.0  # chest wall on the left edge
    thickness = np.clip(1.0 - r**4, 0.0, 1.0)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (rows, cols)), 6) * 400
    signal = np.where(r < 1.0, background + (tissue - background) * thickness + texture * thickness, background)
    image = np.clip(np.rint(signal + rng.normal(0, noise, (rows, cols))), 0, 16383).astype(np.uint16)
    if monochrome1:
        image = (16383 - image).astype(np.uint16)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography - For Presentation
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.StationName = "MG", "BREAST", "MAMMO_TRUCK_1"
    ds.Manufacturer, ds.KVP = "SYNTHETIC", "28"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 14, 13, 0
    ds.PixelData = image.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_mammogram_features_measure_background_and_snr(tmp_path: Path) -> None:
    row = extract_features(read_dataset(_mammogram(tmp_path / "mg.dcm")))
    assert row["modality"] == "MG" and row["group_key"] == "MG/BREAST/standard" and row["station"] == "MAMMO_TRUCK_1"
    assert row["air_mean_hu"] is None and row["soft_tissue_hu"] is None  # no HU physics outside CT
    assert row["background_level"] == pytest.approx(300.0, abs=3.0)  # the detector background
    # SNR: breast signal over the background's noise (12); the thinning breast averages
    # about 1600 above the background
    assert 100 < row["snr"] < 170
    noisy = extract_features(read_dataset(_mammogram(tmp_path / "noisy.dcm", noise=24.0)))
    assert noisy["background_level"] == pytest.approx(row["background_level"], abs=3.0)
    assert noisy["snr"] / row["snr"] == pytest.approx(0.5, rel=0.05)  # twice the noise, half the SNR
    brighter = extract_features(read_dataset(_mammogram(tmp_path / "offset.dcm", background=500.0, tissue=2800.0)))
    assert brighter["background_level"] - row["background_level"] == pytest.approx(200.0, abs=3.0)
    assert brighter["snr"] == pytest.approx(row["snr"], rel=0.05)  # an offset is not a change of quality


def test_monochrome1_mammogram_finds_the_background_at_the_bright_end(tmp_path: Path) -> None:
    normal = extract_features(read_dataset(_mammogram(tmp_path / "m2.dcm")))
    inverted_ds = read_dataset(_mammogram(tmp_path / "m1.dcm", monochrome1=True))
    inverted = extract_features(inverted_ds)
    assert inverted["background_level"] == pytest.approx(16383 - normal["background_level"], abs=0.01)
    assert inverted["snr"] == pytest.approx(normal["snr"], rel=1e-9)
    for ds in (read_dataset(tmp_path / "m2.dcm"), inverted_ds):
        _assert_same(extract_features(ds), _reference(ds), ds.PhotometricInterpretation)
