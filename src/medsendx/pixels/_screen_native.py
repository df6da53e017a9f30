"""Loader for ``_screen.c`` (the pixel screen's per-pixel passes), compiled on first use
(``medsendx.native``).

screen.py's numpy passes cost about 2 ms on a text-free 512 x 512 CT slice, most of it in
array passes that allocate (a mask per spike value, gathers of every candidate pixel's
neighbours); the compiled passes read the stored values once each and allocate nothing
of the frame's size. Without a compiler, with ``MEDSENDX_SCREEN_NATIVE=0``, or for a pixel
type other than int16 / uint16 / uint8, the functions here return None and screen.py uses
its numpy code, which gives identical results (tests/test_pixels_screen_native.py).
"""

from __future__ import annotations

import ctypes
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np

from medsendx.native import enabled, load_compiled

SOURCE = Path(__file__).with_name("_screen.c")
FLAGS = ["-O3", "-fPIC", "-shared"]
KINDS = {np.dtype(np.int16): "i16", np.dtype(np.uint16): "u16", np.dtype(np.uint8): "u8"}
_INT32 = np.iinfo(np.int32)


@lru_cache(maxsize=1)
def load() -> ctypes.CDLL | None:
    """The compiled library, or None when it cannot be had (numpy is used instead)."""
    if not enabled("MEDSENDX_SCREEN_NATIVE"):
        return None
    try:
        lib = load_compiled(SOURCE, FLAGS)
    except (OSError, subprocess.SubprocessError):
        return None
    ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    for kind in KINDS.values():
        span = getattr(lib, f"screen_range_{kind}")
        span.argtypes = [ptr, i64, i64, i64, i64, ptr, ptr]
        span.restype = None
        histogram = getattr(lib, f"screen_histogram_{kind}")
        histogram.argtypes = [ptr, i64, i64, i64, i64, i32, i64, ptr]
        histogram.restype = ctypes.c_int
        counts = getattr(lib, f"screen_tile_counts_{kind}")
        counts.argtypes = [ptr, i64, i64, i32, i32, i64, i64, ptr]
        counts.restype = None
        strokes = getattr(lib, f"screen_strokes_{kind}")
        strokes.argtypes = [ptr, i64, i64, i32, i32, i32, i32, i32, i32, ptr, i64, i64, i64, ptr, ptr, ptr]
        strokes.restype = None
    return lib


def _kind(plane: np.ndarray) -> str | None:
    """The C suffix for ``plane``'s type, when the library is there and takes it."""
    kind = KINDS.get(plane.dtype)
    return kind if kind is not None and load() is not None else None


def _in_int32(*values: int) -> bool:
    return all(_INT32.min < v < _INT32.max for v in values)


def histogram(plane: np.ndarray, rowstep: int) -> tuple[np.ndarray, int] | None:
    """(counts per stored value from the lowest, the lowest) of every ``rowstep``-th row of
    the 2-D ``plane`` (whose columns are contiguous), or None (use numpy)."""
    kind = _kind(plane)
    if kind is None or plane.ndim != 2 or plane.size == 0 or plane.strides[1] != plane.itemsize:
        return None
    if plane.strides[0] % plane.itemsize or plane.strides[0] <= 0:
        return None
    lib = load()
    rows, cols, stride = *plane.shape, plane.strides[0] // plane.itemsize
    low, high = ctypes.c_int32(), ctypes.c_int32()
    getattr(lib, f"screen_range_{kind}")(plane.ctypes.data, rows, cols, stride, rowstep, ctypes.byref(low), ctypes.byref(high))
    counts = np.empty(high.value - low.value + 1, dtype=np.int64)
    if getattr(lib, f"screen_histogram_{kind}")(plane.ctypes.data, rows, cols, stride, rowstep, low.value, counts.size, counts.ctypes.data):
        return None
    return counts, low.value


def tile_counts(plane: np.ndarray, value: int, filler: int, th: int, tw: int) -> np.ndarray | None:
    """Per tile: pixels of the C-contiguous ``plane`` holding ``value`` (pixels of a partial
    tile beyond the plane hold ``filler``), th x tw int32, or None (use numpy)."""
    kind = _kind(plane)
    if kind is None or not plane.flags.c_contiguous or not _in_int32(value, filler):
        return None
    out = np.empty((th, tw), dtype=np.int32)
    getattr(load(), f"screen_tile_counts_{kind}")(plane.ctypes.data, *plane.shape, value, filler, th, tw, out.ctypes.data)
    return out


def strokes(
    plane: np.ndarray, value: int, threshold: int, faint: int, filler: int, candidates: np.ndarray, step: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per candidate tile: the sampled stroke pixels of ``value`` with contrast ``threshold``
    either way, and with contrast ``faint`` across and along (see ``_screen.c``), or None."""
    kind = _kind(plane)
    limits = (value + threshold, value - threshold, value + faint, value - faint)
    if kind is None or not plane.flags.c_contiguous or not _in_int32(value, filler, *limits):
        return None
    th, tw = candidates.shape
    wanted = np.ascontiguousarray(candidates, dtype=np.uint8)
    either, across, along = (np.empty((th, tw), dtype=np.int32) for _ in range(3))
    getattr(load(), f"screen_strokes_{kind}")(
        plane.ctypes.data, *plane.shape, value, *limits, filler, wanted.ctypes.data, th, tw, step,
        either.ctypes.data, across.ctypes.data, along.ctypes.data,
    )  # fmt: skip
    return either, across, along
