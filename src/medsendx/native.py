"""Compile-on-first-use C helpers, loaded with ctypes (triage's clustering, deid's parser).

A C file is compiled once with the system C compiler into a per-user cache
(``$MEDSENDX_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/medsendx`` or ``~/.cache/medsendx``),
named by the hash of its source and flags, and loaded with ctypes. Loading a library runs
its code in this process, so the cache folder is created 0700 and a library is loaded only
when it and its folder belong to this user and nobody else may write them (anything else
is compiled afresh into a private folder, or the pure-Python version is used). Each caller keeps a
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
import stat
import subprocess
import tempfile
from pathlib import Path


def enabled(variable: str) -> bool:
    """False when ``$variable`` (``MEDSENDX_DEID_NATIVE``, ``MEDSENDX_TRIAGE_NATIVE``) says
    off (0, false, no, off); the settings loader checks the same words."""
    return os.environ.get(variable, "1").strip().lower() not in ("0", "false", "no", "off")


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
    folder = _private_cache(cache_dir())
    target = folder / f"{source.stem.lstrip('_')}-{tag}.so"
    if not _trusted(target):
        _compile(source, target, flags, libraries)
        if not _trusted(target):
            raise OSError("compiled helper is not private to this user")
    return ctypes.CDLL(str(target))


def _private_cache(folder: Path) -> Path:
    """The cache folder, created 0700; refused (OSError) when another user owns it or
    others may write into it (they could plant a library we would load)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise OSError("native-code cache folder is not private to this user")
    if info.st_mode & 0o077:
        os.chmod(folder, 0o700)  # ours, group/world-readable: tighten it
    return folder


def _trusted(path: Path) -> bool:
    """A regular file owned by this user that no one else may write."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


def _compile(source: Path, target: Path, flags: list[str], libraries: tuple[str, ...]) -> None:
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler")
    # compile next to the target and rename: concurrent first uses never load half a file
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *flags, "-o", tmp, str(source), *libraries], check=True, capture_output=True, timeout=120)
        os.chmod(tmp, 0o700)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
