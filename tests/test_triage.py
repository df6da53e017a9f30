"""Triage on real scans: exact clustering, labels that make physical sense, padding and
out-of-circle pixels excluded, every transfer syntax, multi-frame and series input."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from sklearn.cluster import KMeans

from medsendx.dicomio import modality_pixels, padding_mask, read_dataset, stored_pixels
from medsendx.triage import KMeansSegmenter, segment_frame, triage_dataset, triage_series
from medsendx.triage.cluster import intensity_histogram, kmeans_1d
from medsendx.triage.segmenter import frame_input

from triage_synthetic import multiframe_from

REAL_FOLDERS = ["ct-head-ge", "ct-phantom-philips", "mr-brain-ge", "transfer-syntaxes"]


def _image_files(data_dir: Path, folder: str) -> list[Path]:
    return [p for p in sorted((data_dir / folder).glob("*.dcm")) if "PixelData" in read_dataset(p, stop_before_pixels=False)]


def _sse(values: np.ndarray, labels: np.ndarray) -> float:
    """Within-cluster sum of squares in float64, the same formula for both methods."""
    values = values.astype(np.float64)
    return float(sum(((values[labels == c] - values[labels == c].mean()) ** 2).sum() for c in np.unique(labels)))


def _brute_force_sse(x: np.ndarray, w: np.ndarray, k: int) -> float:
    best = np.inf
    for cuts in combinations(range(1, len(x)), k - 1):
        edges = [0, *cuts, len(x)]
        total = 0.0
        for a, b in zip(edges[:-1], edges[1:]):
            mean = np.dot(x[a:b], w[a:b]) / w[a:b].sum()
            total += float(np.dot(w[a:b], (x[a:b] - mean) ** 2))
        best = min(best, total)
    return best


# ---------------------------------------------------------------- the exact algorithm


def test_kmeans_1d_matches_brute_force_on_every_small_weighted_case() -> None:
    rng = np.random.default_rng(0)
    for _ in range(400):
        n = int(rng.integers(1, 12))
        k = int(rng.integers(1, 5))
        x = np.sort(rng.choice(200, n, replace=False)).astype(float)
        w = rng.integers(1, 30, n).astype(float)
        result = kmeans_1d(x, w, k)
        expected = _brute_force_sse(x, w, min(k, n))
        assert result.sse == pytest.approx(expected, rel=1e-9, abs=1e-6)
        assert result.k == min(k, n)
        assert np.all(np.diff(result.centres) > 0)
        assert result.weights.sum() == pytest.approx(w.sum())


def test_kmeans_1d_unsorted_repeated_values_equal_their_histogram() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(-50, 50, 5000)
    direct = kmeans_1d(pixels, k=3)
    distinct, counts = intensity_histogram(pixels)
    from_histogram = kmeans_1d(distinct, counts, 3)
    assert direct.sse == pytest.approx(from_histogram.sse)
    np.testing.assert_allclose(direct.centres, from_histogram.centres)
    assert counts.sum() == pixels.size


def test_histogram_of_non_integer_values_is_exact() -> None:
    values = np.array([0.5, 0.25, 0.5, 3.75], dtype=np.float32)
    distinct, counts = intensity_histogram(values)
    assert distinct.tolist() == [0.25, 0.5, 3.75]
    assert counts.tolist() == [1, 2, 1]


def test_kmeans_1d_rejects_empty_input() -> None:
    with pytest.raises(ValueError):
        kmeans_1d(np.array([]), k=3)


# ---------------------------------------------------------------- real scans


@pytest.mark.slow
@pytest.mark.parametrize("folder", REAL_FOLDERS)
def test_never_worse_than_scikit_learn_on_every_real_slice(data_dir: Path, folder: str) -> None:
    """Our SSE is never larger than scikit-learn KMeans' on exactly the same pixels."""
    for path in _image_files(data_dir, folder):
        ds = read_dataset(path)
        pixels, seg = segment_frame(ds)
        values = pixels.values[pixels.valid]
        ours = _sse(values, seg.labels[pixels.valid])
        sklearn = KMeans(n_clusters=3, n_init=1, random_state=0).fit(values.reshape(-1, 1).astype(np.float64))
        theirs = _sse(values, sklearn.labels_)
        assert ours <= theirs * (1 + 1e-9), f"{folder}/{path.name}: {ours} > {theirs}"
        assert seg.sse == pytest.approx(ours, rel=1e-9)


def test_ct_head_classes_are_air_soft_tissue_bone_in_hounsfield_units(ct_head: list[Path]) -> None:
    for path in ct_head:
        record = triage_dataset(read_dataset(path))
        frame = record.frames[0]
        names = [c.label for c in frame.classes]
        centres = [c.centre for c in frame.classes]
        assert names == ["Air", "Soft tissue", "Bone"]
        assert record.units == "HU"
        assert centres[0] < -500, path.name  # air
        assert -200 <= centres[1] <= 200, path.name  # soft tissue (fat to dense tissue)
        assert centres[2] > 300, path.name  # bone
        assert frame.sanity_problems == [] and record.sanity_ok


def test_padding_is_excluded_from_the_classes(ct_head: list[Path]) -> None:
    """GE pads outside the scan with -1500 HU; those pixels are no tissue, and the air
    class therefore starts at the real air floor, not at the padding value."""
    ds = read_dataset(ct_head[9])
    stored = stored_pixels(ds)
    pad = padding_mask(ds, stored)
    assert pad.sum() > 50_000  # the GE slices really are padded
    pixels, seg = segment_frame(ds)
    assert not (pixels.valid & pad).any()
    assert (seg.labels[pad] == -1).all()
    assert sum(seg.counts) == int(pixels.valid.sum())
    assert seg.ranges[0][0] > -1100  # the air class holds no -1500 padding pixel
    # with the padding counted as tissue, the darkest class would sit near -1500 HU
    hu = modality_pixels(ds)
    naive = kmeans_1d(*intensity_histogram(hu.astype(np.int32)), 3)
    assert naive.centres[0] < seg.centres[0] - 100


def test_pixels_outside_the_reconstruction_circle_are_excluded(data_dir: Path) -> None:
    """The Philips phantom has no padding value but a 231 mm reconstruction circle."""
    ds = read_dataset(data_dir / "ct-phantom-philips" / "10.dcm")
    pixels = frame_input(ds)
    assert pixels.padding_pixels == 0
    # 1 - pi/4 of a square image lies outside its inscribed circle
    assert pixels.outside_circle_pixels / pixels.values.size == pytest.approx(1 - np.pi / 4, abs=0.01)
    assert not pixels.valid[0, 0] and not pixels.valid[-1, -1] and pixels.valid[256, 256]


def test_mr_classes_are_signal_levels(data_dir: Path) -> None:
    record = triage_dataset(read_dataset(data_dir / "mr-brain-ge" / "00024.dcm"))
    assert [c.label for c in record.frames[0].classes] == ["Low signal", "Medium signal", "High signal"]
    assert record.units == "signal units"
    assert record.modality == "MR"


def test_every_transfer_syntax_gives_the_same_record(data_dir: Path) -> None:
    records = [triage_dataset(read_dataset(p)).to_dict() for p in sorted((data_dir / "transfer-syntaxes").glob("*.dcm"))]
    assert len(records) == 9
    for record in records[1:]:
        assert record == records[0]


def test_result_is_deterministic_and_json_able(ct_head: list[Path]) -> None:
    ds = read_dataset(ct_head[5])
    first = triage_dataset(ds).to_dict()
    second = triage_dataset(read_dataset(ct_head[5])).to_dict()
    assert first == second
    text = json.dumps(first)
    assert "NOT a diagnosis" in text
    assert json.loads(text)["priority"] == first["priority"]


def test_record_carries_no_value_from_the_object(ct_head: list[Path]) -> None:
    ds = read_dataset(ct_head[0])
    ds.PatientName = "Planted^Identity"
    ds.PatientID = "PID-9911"
    ds.StudyInstanceUID = "1.2.3.4.5.6789"
    text = json.dumps(triage_dataset(ds).to_dict())
    for value in ("Planted", "PID-9911", "1.2.3.4.5.6789"):
        assert value not in text


def test_real_clean_scans_raise_no_quality_flag(data_dir: Path) -> None:
    for folder in REAL_FOLDERS:
        for path in _image_files(data_dir, folder):
            record = triage_dataset(read_dataset(path))
            assert record.flags == [], f"{folder}/{path.name}: {[f.message for f in record.flags]}"
            assert record.priority < 90


def test_object_without_pixels_is_skipped_not_failed(data_dir: Path) -> None:
    record = triage_dataset(read_dataset(data_dir / "ct-phantom-philips" / "01.dcm"))
    assert record.status == "skipped"
    assert record.priority == 0
    assert "no pixel data" in record.skipped_reason


def test_multi_frame_object_is_triaged_per_frame(ct_head: list[Path]) -> None:
    paths = [ct_head[0], ct_head[13], ct_head[27]]
    record = triage_dataset(multiframe_from(paths))
    assert len(record.frames) == 3
    for frame, path in zip(record.frames, paths):
        single = triage_dataset(read_dataset(path)).frames[0]
        assert [c.centre for c in frame.classes] == pytest.approx([c.centre for c in single.classes])
        assert [c.pixels for c in frame.classes] == [c.pixels for c in single.classes]
    assert record.priority == max(f.priority for f in record.frames)


def test_series_folder_gives_per_slice_records_and_a_summary(data_dir: Path) -> None:
    series = triage_series(sorted((data_dir / "ct-phantom-philips").glob("*.dcm")))
    summary = series.summary()
    assert summary["objects"] == 29
    assert summary["triaged"] == 28 and summary["skipped"] == 1  # 01.dcm has no image
    assert summary["priority"] == max(r.priority for _, r in series.slices)
    assert set(summary["mean_class_fractions"]) == {"Air", "Soft tissue", "Bone"}
    assert json.loads(json.dumps(series.to_dict()))["summary"]["triaged"] == 28


def test_series_lists_unreadable_files_and_goes_on(ct_head: list[Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not dicom at all")
    series = triage_series([ct_head[0], broken, ct_head[1]])
    assert [name for name, _ in series.slices] == [ct_head[0].name, ct_head[1].name]
    assert series.errors == [("broken.dcm", "not a DICOM file (no DICM preamble)")]


def test_segmenter_can_be_replaced_without_touching_callers(ct_head: list[Path]) -> None:
    """A different segmenter (here: k=2) goes through the same record and overlay code."""
    record = triage_dataset(read_dataset(ct_head[10]), KMeansSegmenter(k=2))
    assert [c.label for c in record.frames[0].classes] == ["Air", "Soft tissue"]
    assert record.method == "kmeans-1d-exact(k=2)"


def _assert_same_segmentation(fast, slow, where: str) -> None:
    assert np.array_equal(fast.labels, slow.labels), where
    assert fast.centres == slow.centres and fast.counts == slow.counts, where
    assert fast.ranges == slow.ranges and fast.boundaries == slow.boundaries, where
    assert fast.sse == slow.sse and fast.names == slow.names, where
    assert np.array_equal(fast.histogram[0], slow.histogram[0]) and np.array_equal(fast.histogram[1], slow.histogram[1]), where


@pytest.mark.slow
def test_stored_histogram_path_equals_per_pixel_path_on_every_real_slice(data_dir: Path) -> None:
    """The fast path (histogram of the stored values, rescale and padding applied to the
    histogram, labels through thresholds in stored units) gives exactly what the per-pixel
    path gives (modality values, mask, histogram, label per value) on every real slice, for
    k = 2..5, with the same padding and out-of-circle counts and the same valid pixels as
    dicomio's padding mask."""
    import os
    import shutil

    from medsendx.triage.segmenter import segment_pixels, segment_stored_histogram

    native = os.environ.get("MEDSENDX_TRIAGE_NATIVE", "1") != "0" and (shutil.which("cc") or shutil.which("gcc"))
    used = 0
    for folder in REAL_FOLDERS:
        for path in _image_files(data_dir, folder):
            ds = read_dataset(path)
            where = f"{folder}/{path.name}"
            for k in (2, 3, 4, 5):
                fast_frame, slow_frame = frame_input(ds), frame_input(ds)
                fast = segment_stored_histogram(fast_frame, k, "m")
                if fast is None:
                    assert not native or folder != "ct-head-ge", where  # GE CT: int16, integer rescale
                    break
                used += 1
                slow = segment_pixels(slow_frame, k, "m")
                _assert_same_segmentation(fast, slow, f"{where} k={k}")
                # counts set by the fast path == counts from the masks
                assert fast_frame.padding_pixels == slow_frame.padding_pixels, where
                assert fast_frame.outside_circle_pixels == slow_frame.outside_circle_pixels, where
            pad = padding_mask(ds, stored_pixels(ds))
            assert np.array_equal(frame_input(ds).padding, pad), where
    if native:
        assert used >= 4 * 28  # every GE slice at least


def test_stored_histogram_path_handles_inverted_unsigned_and_multiframe(ct_head: list[Path]) -> None:
    """MONOCHROME1 (labels reversed), unsigned 16-bit data with a rescale slope of 2 and a
    padding range, and the frames of a multi-frame object: identical to the per-pixel path."""
    from medsendx.triage.segmenter import segment_pixels, segment_stored_histogram

    from triage_synthetic import mammography_phantom

    if segment_stored_histogram(frame_input(read_dataset(ct_head[0])), 3, "m") is None:
        pytest.skip("compiled code unavailable (no C compiler or MEDSENDX_TRIAGE_NATIVE=0): only the per-pixel path exists")
    mg, _ = mammography_phantom(0.3, photometric="MONOCHROME1")
    ct = read_dataset(ct_head[3])
    unsigned = (stored_pixels(ct).astype(np.int32) + 1500).astype(np.uint16)  # padding -> 0
    ct.PixelRepresentation = 0
    ct.PixelData = unsigned.tobytes()
    ct.RescaleSlope, ct.RescaleIntercept = 2, -3000
    ct.PixelPaddingValue, ct.PixelPaddingRangeLimit = 3, 0
    frames = [frame_input(multiframe_from(ct_head[:3]), i) for i in range(3)]
    for name, frame in [("MG MONOCHROME1", frame_input(mg)), ("unsigned CT", frame_input(ct)), *[(f"frame {i}", f) for i, f in enumerate(frames)]]:
        fast = segment_stored_histogram(frame, 3, "m")
        assert fast is not None, name
        _assert_same_segmentation(fast, segment_pixels(frame, 3, "m"), name)
    assert frame_input(ct).padding_range == (0, 3)
    assert frame_input(mg).inverted


def test_compiled_and_numpy_paths_give_identical_results(ct_head: list[Path], data_dir: Path, monkeypatch) -> None:
    """The compiled inner loops (_ckmeans.c) and their numpy twins agree bit for bit; on a
    machine with a C compiler the compiled ones are really in use."""
    import os
    import shutil

    from medsendx.triage import _native

    if os.environ.get("MEDSENDX_TRIAGE_NATIVE", "1") != "0" and (shutil.which("cc") or shutil.which("gcc")):
        assert _native.load() is not None
    paths = [ct_head[0], ct_head[14], data_dir / "mr-brain-ge" / "00024.dcm", data_dir / "ct-phantom-philips" / "20.dcm"]
    native = [segment_frame(read_dataset(p)) for p in paths]
    pixels0 = native[0][0]
    distinct, counts = intensity_histogram(pixels0.values[pixels0.valid])
    native_k = [kmeans_1d(distinct, counts, k) for k in (2, 4, 6)]
    monkeypatch.setattr(_native, "load", lambda: None)
    numpy_distinct, numpy_counts = intensity_histogram(pixels0.values[pixels0.valid])
    assert np.array_equal(distinct, numpy_distinct) and np.array_equal(counts, numpy_counts)
    for k, result in zip((2, 4, 6), native_k):
        twin = kmeans_1d(distinct, counts, k)
        assert np.array_equal(result.lows, twin.lows) and result.sse == twin.sse
    for path, (pixels, seg) in zip(paths, native):
        numpy_pixels, numpy_seg = segment_frame(read_dataset(path))
        assert np.array_equal(seg.labels, numpy_seg.labels), path.name
        assert seg.centres == numpy_seg.centres and seg.ranges == numpy_seg.ranges
        assert seg.sse == numpy_seg.sse
