"""The compiled screen passes (pixels/_screen.c) against the numpy reference in screen.py.

Oracle: the numpy code (the screen as it was before the compiled passes existed), run in
the same test with ``MEDSENDX_SCREEN_NATIVE=0``. Both must give the same spike values and
the same regions on every real frame in ../shared/data, on the planted lines of the recall
test, and on random planes of odd sizes (partial tiles, every stored type the compiled
code takes) with planted strokes; and the per-spike tiles must agree value by value,
including a pen equal to the value that makes partial tiles whole."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

import burned_corpus as bc
from medsendx.pixels import _screen_native, screen
from test_pixels_screen_recall import LINES


@pytest.fixture(scope="module", autouse=True)
def compiled() -> None:
    if _screen_native.load() is None:
        pytest.fail("the compiled screen could not be built (a C compiler is installed by scripts/setup.sh)")


def _with(native: bool, work):
    previous = os.environ.get("MEDSENDX_SCREEN_NATIVE")
    os.environ["MEDSENDX_SCREEN_NATIVE"] = "1" if native else "0"
    _screen_native.load.cache_clear()
    try:
        return work()
    finally:
        if previous is None:
            del os.environ["MEDSENDX_SCREEN_NATIVE"]
        else:
            os.environ["MEDSENDX_SCREEN_NATIVE"] = previous
        _screen_native.load.cache_clear()


def _screen(plane: np.ndarray) -> tuple:
    spikes = screen.spike_values(plane, edge_aware=True, usual=screen.USUAL_PENS, top=True)
    prepared = screen._Plane(np.ascontiguousarray(plane))
    tiles = [prepared.thin_tiles(v).tolist() for v in spikes]
    return spikes, tiles, screen.candidate_regions(plane)


def _same(plane: np.ndarray) -> None:
    compiled, reference = _with(True, lambda: _screen(plane)), _with(False, lambda: _screen(plane))
    assert compiled == reference


def _frames(data_dir: Path) -> list[np.ndarray]:
    frames = []
    for path in sorted(data_dir.rglob("*.dcm")):
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except Exception:  # noqa: BLE001 (files without decodable pixels are not screened)
            continue
        if pixels.dtype.kind not in "iu":
            continue
        colour = int(ds.get("SamplesPerPixel", 1)) > 1
        frame = pixels if pixels.ndim == 2 or (pixels.ndim == 3 and colour) else pixels[0]
        planes = [frame] if frame.ndim == 2 else [frame[..., c] for c in range(frame.shape[2])]
        frames.extend(planes)
    return frames


def test_compiled_screen_equals_numpy_on_every_real_frame(data_dir: Path) -> None:
    frames = _frames(data_dir)
    assert len(frames) > 50
    assert {f.dtype for f in frames} >= {np.dtype(np.int16), np.dtype(np.uint16)}
    for frame in frames:
        _same(frame)


@pytest.mark.parametrize("line", LINES[::3], ids=[f"{s}-{size}px-{pen}" for s, *_, size, pen in LINES[::3]])
def test_compiled_screen_equals_numpy_on_planted_lines(data_dir: Path, line) -> None:
    name, x, y, text, font, size, pen = line
    stored = pydicom.dcmread(data_dir / name).pixel_array
    value = {"max": int(stored.max()), "min": int(stored.min())}.get(pen, pen)
    planted = stored.copy()
    planted[bc.text_mask(stored.shape, [((x, y), text, font, size)])] = value
    assert _with(True, lambda: screen.candidate_regions(planted))  # (a line: the comparison has tiles to compare)
    _same(planted)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_compiled_screen_equals_numpy_on_random_planes(dtype) -> None:
    rng = np.random.default_rng(12)
    info = np.iinfo(dtype)
    for shape in [(37, 45), (100, 333), (257, 190), (64, 64)]:
        low = max(int(info.min), -400)
        plane = rng.integers(low, min(int(info.max), low + 300), size=shape, endpoint=True).astype(dtype)
        pen = int(plane.max()) if rng.random() < 0.5 else int(info.max)
        ink = bc.text_mask(shape, [((3, 5), "DOE 12", "dejavu", 14), ((shape[1] // 3, shape[0] - 20), "ID 99", "liberation", 11)])
        plane[ink] = pen
        _same(plane)
        _same(np.ascontiguousarray(plane[:, ::-1]))  # text at the partial tiles' edge


def test_a_pen_equal_to_the_partial_tiles_filler_counts_them_as_numpy_does() -> None:
    """A uint8 plane using 0..254: the pixels that make its tiles whole hold 255, so the
    tiles of a 255 pen (one textclean asks for after redaction) count them."""
    rng = np.random.default_rng(3)
    plane = rng.integers(0, 254, size=(70, 90), endpoint=True).astype(np.uint8)
    plane[0, 0], plane[1, 1] = 0, 254
    for native in (True, False):
        prepared = _with(native, lambda: screen._Plane(plane))
        assert prepared.filler == 255
    assert _with(True, lambda: screen._Plane(plane).thin_tiles(255).tolist()) == _with(
        False, lambda: screen._Plane(plane).thin_tiles(255).tolist()
    )
    counts = _screen_native.tile_counts(plane, 255, 255, 3, 3)
    assert counts is not None and counts[2, 2] == 32 * 32 - (70 - 64) * (90 - 64)  # the filler counted


def test_compiled_stroke_counts_equal_numpy_each_way(data_dir: Path) -> None:
    """The three counts of the stroke pass (either way at the threshold; across, and along,
    at the fainter contrast the both-ways rule uses) on every tile of the planted lines'
    slices, not only where thin_tiles looks."""
    compared = 0
    for name, x, y, text, font, size, pen in LINES:
        stored = pydicom.dcmread(data_dir / name).pixel_array
        value = {"max": int(stored.max()), "min": int(stored.min())}.get(pen, pen)
        planted = np.ascontiguousarray(stored.copy())
        planted[bc.text_mask(stored.shape, [((x, y), text, font, size)])] = value
        prepared = screen._Plane(planted)
        every = np.ones((prepared.th, prepared.tw), dtype=bool)
        threshold, faint = prepared.threshold, max(2, int(screen.FAINT_NOISE * prepared.noise))
        compiled = _screen_native.strokes(planted, value, threshold, faint, prepared.filler, every, 1)
        reference = prepared._strokes(prepared.plane == value, value, threshold, faint, every, 1)
        assert compiled is not None
        assert [c.tolist() for c in compiled] == [r.tolist() for r in reference], name
        across, along = reference[1], reference[2]
        compared += int(across.sum() > 0 and along.sum() > 0 and not np.array_equal(across, along))
    assert compared == len(LINES)  # (every line gave strokes both ways, counted apart)
