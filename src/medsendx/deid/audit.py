"""The de-identification audit log: one JSON line per object processed.

Each line says when, which input (by SHA-256 of its bytes, never its name), what came out
(the new SOP Instance UID), under which profile and options, and how many attributes each
action touched. It holds no value read from the object. Lines are appended with a single
``write`` on an ``O_APPEND`` descriptor, so parallel workers do not interleave. Appends
are not flushed one by one: :func:`sync_audit` makes every line appended so far durable
(``medsendx anonymize`` calls it once, before it reports its result).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from medsendx.fsutil import fsync_dir


def append_audit(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` (plus the time) as one JSON line to the audit log at ``path``."""
    append_audit_lines(path, [record])


def append_audit_lines(path: Path, records: list[dict[str, Any]]) -> None:
    """Append several records (each plus the time) in one ``write``."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data = "".join(json.dumps({"time": now, **record}, separators=(",", ":")) + "\n" for record in records).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def sync_audit(path: Path) -> None:
    """Make every line appended to the audit log at ``path`` so far durable (one fsync of
    the file, whoever wrote the lines, and of its folder, in case the file is new). Raises
    OSError; a log that does not exist has nothing to sync."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(Path(path).parent)


def read_audit(path: Path) -> list[dict[str, Any]]:
    """All audit records, in the order written."""
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
