"""Drop folders: files a technician copies in (from a USB stick, a CD, a share) are picked up.

A file is taken only once it is completely written: its size and modification time have
not changed for ``settle_seconds`` and it can be opened for reading. watchdog events wake
the scanner at once; a periodic rescan catches anything an event missed (network shares,
events lost while the service was down). DICOMDIR media layouts work: every file below
the drop folder is considered, and the DICOMDIR index itself (it lists patient names) is
never sent, only tidied away with the originals.

A file is never processed twice: it is known by the SHA-256 of its content once handled
(``GatewayState.seen``), and originals are moved to ``<drop folder>/done/`` or deleted
after their de-identified copy is committed (``gateway.originals``).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from medsendx.fsutil import TEMP_PREFIX, fsync_dir, sha256_file
from medsendx.gateway.logs import get_logger, log_event

DONE_DIR = "done"
DICOMDIR_NAME = "DICOMDIR"
RESCAN_SECONDS = 1.0

log = get_logger("medsendx.gateway.watcher")


@dataclass(frozen=True)
class DroppedFile:
    path: Path
    root: Path  # the drop folder it was found in
    sha256: str
    size: int


def is_dicomdir(path: Path) -> bool:
    return path.name.upper() == DICOMDIR_NAME


def _ignored(path: Path, root: Path) -> bool:
    rel = path.relative_to(root).parts
    return (
        not rel
        or rel[0] == DONE_DIR
        or any(part.startswith(".") for part in rel)  # hidden and temp files (.tmp-*, .DS_Store)
        or path.name.startswith(TEMP_PREFIX)
    )


def finish_original(item: DroppedFile, policy: str) -> None:
    """Apply the originals policy to a handled file: move it under done/ or delete it."""
    try:
        if policy == "delete":
            item.path.unlink()
            fsync_dir(item.path.parent)
            return
        target = item.root / DONE_DIR / item.path.relative_to(item.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # the same name dropped twice: keep both, ours is content-named
            target = target.with_name(f"{target.name}.{item.sha256[:12]}")
        os.replace(item.path, target) if _same_fs(item.path, target.parent) else shutil.move(item.path, target)
        fsync_dir(target.parent)
        fsync_dir(item.path.parent)
    except FileNotFoundError:
        pass  # already tidied (a restart after the move)


def _same_fs(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


class _Wake(FileSystemEventHandler):
    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake

    def on_any_event(self, event) -> None:  # noqa: ANN001 (watchdog's event types)
        self.wake.set()


class DropFolderWatcher:
    """Watches folders; ``submit(DroppedFile)`` is called once per completely written file.

    ``submit`` may block (bounded pipeline queue). ``already_seen(sha256)`` returns the
    outcome of an earlier run for identical content, in which case the original is only
    tidied away by ``policy``.
    """

    def __init__(
        self,
        folders: list[Path],
        submit: Callable[[DroppedFile], None],
        already_seen: Callable[[str], str | None],
        policy: str = "move",
        settle_seconds: float = 2.0,
    ) -> None:
        self.folders = [Path(f).resolve() for f in folders]
        self.submit = submit
        self.already_seen = already_seen
        self.policy = policy
        self.settle_seconds = settle_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._observer = Observer()
        # path -> (size, mtime_ns, time first seen with that size and mtime)
        self._candidates: dict[Path, tuple[int, int, float]] = {}
        self._in_flight: set[Path] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="drop-folder-watcher", daemon=True)

    def start(self) -> "DropFolderWatcher":
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
            self._observer.schedule(_Wake(self._wake), str(folder), recursive=True)
        self._observer.start()
        self._thread.start()
        log_event(log, "watching drop folders", folders=len(self.folders), policy=self.policy)
        return self

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._observer.stop()
        self._observer.join(timeout=5)
        self._thread.join(timeout=30)

    def done(self, item: DroppedFile) -> None:
        """The pipeline finished with ``item``: tidy the original away."""
        finish_original(item, self.policy)
        with self._lock:
            self._in_flight.discard(item.path)
        self._tidy_dicomdirs(item.root)

    def forget(self, item: DroppedFile) -> None:
        """Processing failed on our side: offer the file again on a later scan."""
        with self._lock:
            self._in_flight.discard(item.path)

    # --- the scanning loop ------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=RESCAN_SECONDS)
            self._wake.clear()
            try:
                self.scan_once()
            except Exception as exc:  # a vanished folder must not stop the watcher
                log_event(log, "drop folder scan failed", level=40, error=type(exc).__name__)

    def scan_once(self, now: float | None = None) -> int:
        """Submit every file that has settled; returns how many were submitted."""
        submitted = 0
        now = time.monotonic() if now is None else now
        present: set[Path] = set()
        for root in self.folders:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".") and not (Path(dirpath) == root and d == DONE_DIR)]
                for name in filenames:
                    path = Path(dirpath) / name
                    if _ignored(path, root) or is_dicomdir(path):
                        continue
                    present.add(path)
                    if self._stop.is_set():
                        return submitted
                    if self._settled(path, now):
                        submitted += self._take(path, root)
        with self._lock:
            for gone in set(self._candidates) - present:
                del self._candidates[gone]
        return submitted

    def _settled(self, path: Path, now: float) -> bool:
        with self._lock:
            if path in self._in_flight:
                return False
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        key = (st.st_size, st.st_mtime_ns)
        with self._lock:
            previous = self._candidates.get(path)
            if previous is None or previous[:2] != key:
                self._candidates[path] = (*key, now)
                return self.settle_seconds <= 0
            return now - previous[2] >= self.settle_seconds

    def _take(self, path: Path, root: Path) -> int:
        try:
            with open(path, "rb"):  # still locked or vanished: try again on the next scan
                pass
            digest = sha256_file(path)
            size = path.stat().st_size
        except OSError:
            return 0
        item = DroppedFile(path=path, root=root, sha256=digest, size=size)
        with self._lock:
            self._candidates.pop(path, None)
            self._in_flight.add(path)
        if self.already_seen(digest) is not None:
            log_event(log, "dropped file already handled", sha256=digest[:16])
            self.done(item)
            return 0
        self.submit(item)
        return 1

    def _tidy_dicomdirs(self, root: Path) -> None:
        """A DICOMDIR whose folder holds no more files to process goes the way of originals."""
        for dicomdir in list(root.rglob(DICOMDIR_NAME)) + list(root.rglob(DICOMDIR_NAME.lower())):
            if _ignored(dicomdir, root):
                continue
            folder = dicomdir.parent
            remaining = [p for p in folder.rglob("*") if p.is_file() and p != dicomdir and not _ignored(p, root)]
            if not remaining:
                finish_original(DroppedFile(dicomdir, root, "dicomdir", 0), self.policy)
