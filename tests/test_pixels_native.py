"""The screen on Pixel Data bytes as stored (issue 12, speed): the values are pydicom's
(a second decoder is the oracle), the regions are the decoded screen's and cover every
planted line (tests/burned_corpus.py), and whatever the fast path cannot vouch for
(planted text, bits above Bits Stored) still gets the full check through the de-identifier."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

import burned_corpus as bc
from medsendx.config import PixelSettings, load_settings
from medsendx.deid import Deidentifier
from medsendx.pixels import PixelCleaner
from medsendx.pixels.native import layout_of, native_frames
from medsendx.pixels.screen import candidate_regions


def _saved(ds: pydicom.Dataset) -> pydicom.Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def _with_pixels(ds: pydicom.Dataset, raw: np.ndarray, stored: int, signed: int, syntax=ExplicitVRLittleEndian) -> pydicom.Dataset:
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = raw.dtype.itemsize * 8, stored, stored - 1, signed
    ds.PixelData = raw.tobytes()
    ds.Rows, ds.Columns = raw.shape[-2:]
    if raw.ndim == 3:
        ds.NumberOfFrames = raw.shape[0]
    return _saved(ds)


@pytest.fixture(scope="module")
def ct(data_dir: Path) -> pydicom.Dataset:
    return pydicom.dcmread(data_dir / "ct-head-ge" / "05.dcm")


def test_native_values_are_pydicoms(ct: pydicom.Dataset) -> None:
    image = ct.pixel_array  # int16, 16 bits stored
    rng = np.random.default_rng(5)
    unsigned12 = np.clip(image.astype(np.int32) + 1500, 0, 4095).astype(np.uint16)
    overlay = unsigned12.copy()
    overlay[100:140, 100:300] |= 0x8000  # an embedded overlay bit above Bits Stored
    signed12 = np.clip(image, -2048, 2047).astype(np.int16)
    garbage = (signed12.view(np.uint16) & 0x0FFF) | (rng.integers(0, 16, image.shape, dtype=np.uint16) << 12)
    cases = {
        "int16, 16 stored": (ct, False),
        "uint16, 12 stored": (_with_pixels(ct, unsigned12, 12, 0), False),
        "uint16, 12 stored, bit 15 set": (_with_pixels(ct, overlay, 12, 0), True),
        "int16, 12 stored, other bits above": (_with_pixels(ct, garbage, 12, 1), False),
        "uint8, 8 stored": (_with_pixels(ct, (unsigned12 >> 4).astype(np.uint8), 8, 0), False),
        "implicit VR, 2 frames": (_with_pixels(ct, np.stack([unsigned12, unsigned12[::-1]]), 12, 0, ImplicitVRLittleEndian), False),
    }
    for name, (ds, hidden) in cases.items():
        layout = layout_of(ds)
        assert layout is not None, name
        values, found_hidden = native_frames(layout, ds.PixelData)
        expected = ds.pixel_array if int(ds.get("NumberOfFrames", 1) or 1) > 1 else ds.pixel_array[np.newaxis]
        assert values.dtype.kind == expected.dtype.kind and np.array_equal(values, expected), name
        assert found_hidden is hidden, name


def test_layouts_it_cannot_read_are_left_to_the_decoder(ct: pydicom.Dataset) -> None:
    native = layout_of(ct)
    assert native is not None
    big = dataclasses.replace(native, transfer_syntax=ExplicitVRBigEndian)
    assert native_frames(big, ct.PixelData) is None  # (retired; the decoder reads it)
    rle = copy.deepcopy(ct)
    rle.compress(RLELossless, ct.pixel_array)
    assert layout_of(_saved(rle)) is None
    colour = _with_pixels(ct, np.zeros((8, 8), np.uint8), 8, 0)
    colour.SamplesPerPixel, colour.PhotometricInterpretation = 3, "RGB"
    assert layout_of(colour) is None
    short = layout_of(ct)
    assert short is not None and native_frames(short, ct.PixelData[:-2]) is None


def test_native_screen_finds_what_the_decoded_screen_finds(data_dir: Path) -> None:
    cleaner = PixelCleaner(PixelSettings())
    seen = 0
    for case in bc.build(data_dir):
        ds = _saved(case.ds)
        layout = layout_of(ds)
        if layout is None:  # colour: decoded path only
            continue
        seen += 1
        values, _ = native_frames(layout, ds.PixelData)
        for frame, decoded, ink in zip(values, bc.stored_frames(ds), case.ink):
            regions = candidate_regions(frame)
            assert regions == candidate_regions(decoded), case.name
            covered = np.zeros(ink.shape, dtype=bool)
            for x0, y0, x1, y1 in regions:
                covered[y0:y1, x0:x1] = True
            assert covered[ink].all(), case.name  # every planted line
        assert cleaner.screen_native(layout, ds.PixelData) is None, case.name  # the full check runs
    assert seen >= 7
    quiet = [pydicom.dcmread(p) for p in sorted((data_dir / "ct-head-ge").glob("*.dcm"))[:5]]
    results = [cleaner.screen_native(layout_of(ds), ds.PixelData) for ds in quiet]
    assert all(r is not None and r.clean and not r.attest and not r.changed for r in results)
    # Word policies and configured device regions are never short-cut.
    assert PixelCleaner(PixelSettings(policy="redact-identifying")).screen_native(layout_of(quiet[0]), quiet[0].PixelData) is None
    boxed = PixelCleaner(PixelSettings(fixed_regions={"GE MEDICAL SYSTEMS": [[0, 0, 10, 10]]}))
    assert boxed.screen_native(layout_of(quiet[0]), quiet[0].PixelData) is None


def test_deidentifier_still_cleans_what_the_fast_path_cannot_vouch_for(data_dir: Path, tmp_path: Path) -> None:
    deid = Deidentifier(load_settings(overrides={"state_dir": str(tmp_path / "state")}, environ={}))
    # Planted text on a CT with a silent header: blanked (the screen fires, the detector runs).
    case = bc.ct_max_value_corner(data_dir)
    out = pydicom.dcmread(io.BytesIO(deid.deidentify_bytes(case.bytes())[0]))
    before = bc.stored_frames(pydicom.dcmread(io.BytesIO(case.bytes())))[0]
    assert (out.pixel_array[case.ink[0]] != before[case.ink[0]]).all()
    # Bits set above Bits Stored, no overlay attributes to say so: cleared on the way out.
    ct = pydicom.dcmread(data_dir / "ct-head-ge" / "05.dcm")
    unsigned12 = np.clip(ct.pixel_array.astype(np.int32) + 1500, 0, 4095).astype(np.uint16)
    unsigned12[100:140, 100:300] |= 0x8000
    ds = _with_pixels(ct, unsigned12, 12, 0)
    blob = io.BytesIO()
    ds.save_as(blob, enforce_file_format=True)
    out = pydicom.dcmread(io.BytesIO(deid.deidentify_bytes(blob.getvalue())[0]))
    assert int(np.frombuffer(out.PixelData, dtype="<u2").max()) < 4096


def test_text_free_slices_are_not_parsed_again(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deid = Deidentifier(load_settings(overrides={"state_dir": str(tmp_path / "state")}, environ={}))
    full = []
    real = type(deid.pixel_cleaner).__call__
    monkeypatch.setattr(type(deid.pixel_cleaner), "__call__", lambda self, ds, words, **kw: full.append(1) or real(self, ds, words, **kw))
    paths = sorted((data_dir / "ct-head-ge").glob("*.dcm"))[:10]
    for path in paths:
        data = path.read_bytes()
        out = pydicom.dcmread(io.BytesIO(deid.deidentify_bytes(data)[0]))
        assert out.PixelData == pydicom.dcmread(path).PixelData
        assert "113101" not in [item.CodeValue for item in out.get("DeidentificationMethodCodeSequence", [])]
    assert full == []  # the screen ran on the stored bytes only


def test_spikes_beside_a_noise_floor_are_compared_with_values_that_exist(data_dir: Path) -> None:
    from medsendx.pixels.screen import spike_values

    # A real MR slice whose values are a steep noise floor (0..16): its second value is
    # no pen, and the screen no longer fires on it (it did, sending it to the detector).
    mr = pydicom.dcmread(data_dir / "mr-brain-ge" / "00013.dcm").pixel_array
    assert 1 in spike_values(mr) and 1 not in spike_values(mr, edge_aware=True)
    assert candidate_regions(mr) == []
    # The extremes keep their empty neighbours: a small line at the minimum of a phantom
    # (where that value is common) is still found.
    phantom = pydicom.dcmread(data_dir / "ct-phantom-philips" / "10.dcm").pixel_array.copy()
    ink = bc.text_mask(phantom.shape, [((134, 137), "DOB 13.09.1958", "liberation-mono", 8)])
    phantom[ink] = phantom.min()
    covered = np.zeros(ink.shape, dtype=bool)
    for x0, y0, x1, y1 in candidate_regions(phantom):
        covered[y0:y1, x0:x1] = True
    assert covered[ink].all()


def test_each_frame_is_screened_once_on_the_way_through_the_deidentifier(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine screens the stored bytes and hands the boxes to the cleaner: no frame's
    values go through the screen twice (before, a firing frame did three times, plus once
    more in verification when nothing on it was blanked). Oracle: the values given to
    the real screen, counted by content; the planted ink is blanked and attested."""
    from medsendx.pixels import cleaner as cleaner_module, screen, textclean

    seen: Counter[bytes] = Counter()

    def counting(frame: np.ndarray) -> list:
        seen[hashlib.blake2b(np.ascontiguousarray(frame).tobytes(), digest_size=16).digest()] += 1
        return screen.candidate_regions(frame)

    monkeypatch.setattr(cleaner_module, "candidate_regions", counting)
    monkeypatch.setattr(textclean, "candidate_regions", counting)
    slices = [pydicom.dcmread(data_dir / "ct-head-ge" / name) for name in ("08.dcm", "14.dcm", "20.dcm")]
    frames = np.stack([s.pixel_array for s in slices]).copy()
    ink = bc.text_mask(frames.shape[1:], [((20, 460), bc.LINES[0], "dejavu", 14)])
    frames[1][ink] = frames[1].max()  # text on the middle frame only
    ds = slices[0]
    ds.NumberOfFrames = 3
    bc._store(ds, frames)
    bc._finish(ds, "silent")
    blob = io.BytesIO()
    ds.save_as(blob, enforce_file_format=True)
    deid = Deidentifier(load_settings(overrides={"state_dir": str(tmp_path / "state")}, environ={}))
    out = pydicom.dcmread(io.BytesIO(deid.deidentify_bytes(blob.getvalue())[0]))
    inputs = [hashlib.blake2b(f.tobytes(), digest_size=16).digest() for f in frames]
    assert all(seen[key] == 1 for key in inputs), [seen[key] for key in inputs]
    assert max(seen.values()) == 1  # (the redacted frame is screened once, in verification)
    after = out.pixel_array
    assert (after[1][ink] != frames[1][ink]).all() and np.array_equal(after[0], frames[0]) and np.array_equal(after[2], frames[2])
    assert "113101" in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
