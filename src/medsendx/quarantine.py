"""Quarantine: where objects that must not leave go, with the reason why.

Files are stored under the SHA-256 of their content (never their original name, which may
be identifying) in a 0700 folder, each beside a ``.json`` with the reason. The reason text
is written by our own code and must never contain values read from the object.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from medsendx.fsutil import atomic_copy, atomic_write_bytes, private_dir, sha256_file


@dataclass(frozen=True)
class QuarantineEntry:
    path: Path
    reason: str
    sha256: str


def quarantine_file(quarantine_dir: Path, source: Path, reason: str, stage: str) -> QuarantineEntry:
    """Copy ``source`` into quarantine with ``reason``; the source is left where it is.

    A source that cannot be read (missing, a folder, no permission) is recorded by reason
    alone, under a hash of the reason and time, so that the failure is still on file.
    """
    qdir = private_dir(quarantine_dir)
    try:
        digest = sha256_file(source)
        stored = atomic_copy(source, qdir / f"{digest}.dcm", mode=0o600)
    except OSError as exc:
        import hashlib

        digest = hashlib.sha256(f"{reason}{time.time_ns()}".encode()).hexdigest()
        stored = qdir / f"{digest}.missing"
        reason = f"{reason} (input not copied: {exc.strerror or type(exc).__name__})"
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sha256": digest,
        "stage": stage,
        "reason": reason,
    }
    atomic_write_bytes(qdir / f"{digest}.json", json.dumps(record, indent=1).encode(), mode=0o600)
    return QuarantineEntry(path=stored, reason=reason, sha256=digest)


def list_quarantine(quarantine_dir: Path) -> list[dict]:
    """All quarantine records, oldest first."""
    if not quarantine_dir.is_dir():
        return []
    records = [json.loads(p.read_text()) for p in quarantine_dir.glob("*.json")]
    return sorted(records, key=lambda r: r["time"])
