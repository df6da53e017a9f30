"""Crash-safe file writes: temp file in the same folder, fsync, rename, fsync the folder.

A reader (or a process restarted after ``kill -9``) sees either the old file or the complete
new one, never a partial write. Temp files start with ``.tmp-`` so scanners of a folder can
skip them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

TEMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, writer: Callable[[BinaryIO], None], mode: int = 0o644) -> Path:
    """Write ``path`` atomically: ``writer`` fills an open temp file which then replaces it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> Path:
    return atomic_write(path, lambda fh: fh.write(data), mode)


def atomic_copy(src: Path, dst: Path, mode: int = 0o644) -> Path:
    with open(src, "rb") as fin:
        return atomic_write(dst, lambda fh: shutil.copyfileobj(fin, fh, 1024 * 1024), mode)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def private_dir(path: Path) -> Path:
    """Create (or tighten) a directory only the owner can enter: it may hold identities."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path
