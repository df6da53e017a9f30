"""Compile-on-first-use loader for ``_ckmeans.c`` (the clustering's inner loops).

numpy pays a fixed cost per call, and the divide-and-conquer DP makes O(log n) calls per
layer: about 2-3 ms per CT slice. The compiled code segments a 512 x 512 CT slice from its
stored pixels in well under a millisecond, in one call (``segment_frame_*``). The C
file is compiled once with the system C compiler into a per-user cache
(``$MEDSENDX_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/medsendx`` or ``~/.cache/medsendx``),
named by the hash of its source, and loaded with ctypes. Without a compiler, or with
``MEDSENDX_TRIAGE_NATIVE=0``, ``load()`` returns None and cluster.py uses its numpy code,
which gives identical results.

Why at first use and not at install time: the tests and the CLI run from the source tree
(``PYTHONPATH=src``, several worktrees side by side) where no build step runs; a per-user
cache keyed by the source hash serves every checkout and never loads a stale library.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("_ckmeans.c")
# stored pixel types segment_frame_* is compiled for: numpy dtype -> C suffix
FRAME_KINDS = {np.dtype(np.int16): "i16", np.dtype(np.uint16): "u16", np.dtype(np.uint8): "u8"}
FLAGS = ["-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math"]


def cache_dir() -> Path:
    explicit = os.environ.get("MEDSENDX_NATIVE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medsendx"


@lru_cache(maxsize=1)
def load() -> ctypes.CDLL | None:
    """The compiled library, or None when it cannot be had (numpy is used instead)."""
    if os.environ.get("MEDSENDX_TRIAGE_NATIVE", "1") == "0":
        return None
    try:
        source = SOURCE.read_bytes()
        tag = hashlib.sha256(source + " ".join(FLAGS + [platform.machine()]).encode()).hexdigest()[:16]
        target = cache_dir() / f"ckmeans-{tag}.so"
        if not target.is_file():
            _compile(target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError):
        return None
    _declare(lib)
    return lib


def _compile(target: Path) -> None:
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler")
    target.parent.mkdir(parents=True, exist_ok=True)
    # compile next to the target and rename: concurrent first uses never load half a file
    fd, tmp = tempfile.mkstemp(prefix=".ckmeans-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], check=True, capture_output=True, timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
