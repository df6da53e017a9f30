"""Compile-on-first-use C helpers, loaded with ctypes (triage's clustering, deid's parser).

A C file is compiled once with the system C compiler into a per-user cache
(``$MEDSENDX_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/medsendx`` or ``~/.cache/medsendx``),
named by the hash of its source and flags, and loaded with ctypes. Each caller keeps a
pure-Python (or numpy) version that gives identical results and is used when there is no
compiler; tests compare the two.

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
from pathlib import Path


def cache_dir() -> Path:
    explicit = os.environ.get("MEDSENDX_NATIVE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medsendx"


def load_compiled(source: Path, flags: list[str], libraries: tuple[str, ...] = ()) -> ctypes.CDLL:
    """``source`` compiled with ``flags`` (from the cache when it is there) and loaded.
    Raises OSError or subprocess.SubprocessError when it cannot be had."""
    text = source.read_bytes()
    tag = hashlib.sha256(text + " ".join(flags + [platform.machine()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"{source.stem.lstrip('_')}-{tag}.so"
    if not target.is_file():
        _compile(source, target, flags, libraries)
    return ctypes.CDLL(str(target))


def _compile(source: Path, target: Path, flags: list[str], libraries: tuple[str, ...]) -> None:
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler")
    target.parent.mkdir(parents=True, exist_ok=True)
    # compile next to the target and rename: concurrent first uses never load half a file
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *flags, "-o", tmp, str(source), *libraries], check=True, capture_output=True, timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
