"""Durable staging of raw received objects: the only place on the truck with identities.

A received object is written to a temp file, fsynced, renamed and the folder fsynced
before the scanner is told success; from that moment a power cut cannot lose it. The
staging folder doubles as the journal: whatever is in it has not been committed to the
outbox yet, so a restart (even after ``kill -9``) simply processes every staged file again.
Processing is idempotent (de-identified UIDs are deterministic and the outbox refuses a
SOP Instance UID it already has), so a file processed twice is still delivered once.

File names are our own (receive time + a random suffix), never values from the object.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path
from typing import BinaryIO, Callable

from medsendx.fsutil import TEMP_PREFIX, atomic_write, private_dir

STAGED_SUFFIX = ".dcm"


class Staging:
    """A 0700 folder of raw objects waiting for de-identification."""

    def __init__(self, root: Path) -> None:
        self.root = private_dir(Path(root))
        # Temp files of a process that was killed mid-write are incomplete by definition:
        # the scanner was never told success for them, so it still has (and re-sends) them.
        for leftover in self.root.glob(TEMP_PREFIX + "*"):
            leftover.unlink(missing_ok=True)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def new_name(self) -> Path:
        # time first so that a directory listing sorted by name is arrival order
        return self.root / f"{time.time_ns():020d}-{secrets.token_hex(4)}{STAGED_SUFFIX}"

    def stage(self, writer: Callable[[BinaryIO], None]) -> Path:
        """Write an object durably (0600) and return its staged path."""
        return atomic_write(self.new_name(), writer, mode=0o600)

    def stage_bytes(self, data: bytes) -> Path:
        return self.stage(lambda fh: fh.write(data))

    def pending(self) -> list[Path]:
        """Staged objects not yet committed, oldest first."""
        return sorted(p for p in self.root.glob("*" + STAGED_SUFFIX) if not p.name.startswith(TEMP_PREFIX))

    def remove(self, path: Path) -> None:
        """Delete a staged object once its de-identified copy is committed (or quarantined).

        Not fsynced: if a power cut undoes the unlink, the object is processed again at the
        next start and the outbox recognises it (same de-identified UID): no duplicate.
        """
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
