"""Loader for ``_ckmeans.c`` (the clustering's inner loops), compiled on first use
(``medsendx.native``).

numpy pays a fixed cost per call, and the divide-and-conquer DP makes O(log n) calls per
layer: about 2-3 ms per CT slice. The compiled code segments a 512 x 512 CT slice from its
stored pixels in well under a millisecond, in one call (``segment_frame_*``). Without a
compiler, or with ``MEDSENDX_TRIAGE_NATIVE=0``, ``load()`` returns None and cluster.py
uses its numpy code, which gives identical results.
"""

from __future__ import annotations

import ctypes
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np

from medsendx.native import enabled, load_compiled

SOURCE = Path(__file__).with_name("_ckmeans.c")
# stored pixel types segment_frame_* is compiled for: numpy dtype -> C suffix
FRAME_KINDS = {np.dtype(np.int16): "i16", np.dtype(np.uint16): "u16", np.dtype(np.uint8): "u8"}
FLAGS = ["-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math"]


@lru_cache(maxsize=1)
def load() -> ctypes.CDLL | None:
    """The compiled library, or None when it cannot be had (numpy is used instead)."""
    if not enabled("MEDSENDX_TRIAGE_NATIVE"):
        return None
    try:
        lib = load_compiled(SOURCE, FLAGS, ("-lm",))
    except (OSError, subprocess.SubprocessError):
        return None
    _declare(lib)
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    ptr = ctypes.c_void_p
    i64 = ctypes.c_int64
    lib.histogram_i32.argtypes = [ptr, i64, ctypes.c_int32, i64, ptr]
    lib.histogram_i32.restype = ctypes.c_int
    lib.assign_i32.argtypes = [ptr, i64, ptr, ctypes.c_int32, ptr]
    lib.assign_i32.restype = None
    lib.kmeans_dp.argtypes = [ptr, ptr, i64, i64, ptr, ptr]
    lib.kmeans_dp.restype = ctypes.c_int
    for kind in FRAME_KINDS.values():
        segment = getattr(lib, f"segment_frame_{kind}")
        segment.argtypes = [ptr, i64, i64, ptr, ptr, i64, i64, i64, i64, i64, ctypes.c_int32, ptr, ptr, ptr, i64, ptr, ptr]
        segment.restype = ctypes.c_int
