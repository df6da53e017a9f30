"""Durable batch writes of ``medsendx anonymize``: an output appears under its final name
only after its bytes are on disk, a failed write leaves nothing behind, order is kept, and
a run killed at any moment leaves only complete outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest

from deid_helpers import planted_ct, settings_for, write
from medsendx.deid import Deidentifier
from medsendx.deid.audit import read_audit
from medsendx.fsutil import TEMP_PREFIX, DurableWriter, write_chunks
from medsendx.quarantine import list_quarantine

ROOT = Path(__file__).resolve().parent.parent

# sitecustomize for a child process: hold data sync number HOLD_AFTER_SYNCS + 1 (and all
# after it) for ever, once HOLD_AFTER_RENAMES outputs are renamed; create HOLD_MARKER then.
HOLD_HOOK = """
import os, threading
if os.environ.get("HOLD_MARKER"):
    _sync, _replace, _state = os.fdatasync, os.replace, threading.Condition()
    _counts = {"syncs": 0, "renames": 0}

    def _replaced(src, dst, *args, **kwargs):
        _replace(src, dst, *args, **kwargs)
        if str(dst).endswith(".dcm"):  # (outputs only)
            with _state:
                _counts["renames"] += 1
                _state.notify_all()

    def _held(fd):
        with _state:
            _counts["syncs"] += 1
            hold = _counts["syncs"] > int(os.environ["HOLD_AFTER_SYNCS"])
        if hold:
            with _state:
                _state.wait_for(lambda: _counts["renames"] >= int(os.environ["HOLD_AFTER_RENAMES"]))
            open(os.environ["HOLD_MARKER"], "w").close()
            threading.Event().wait()
        _sync(fd)

    os.fdatasync, os.replace = _held, _replaced
"""


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_an_output_is_renamed_into_place_only_after_its_data_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order of events decides, not a pause: every rename is logged, and it must come
    after the end of the (held) data sync of its file."""
    entered, release = threading.Event(), threading.Event()
    real_sync, real_replace = os.fdatasync, os.replace
    events: list[str] = []

    def held_sync(fd: int) -> None:
        events.append("sync started")
        entered.set()
        assert release.wait(30)
        real_sync(fd)
        events.append("sync done")

    def logged_replace(src, dst) -> None:
        events.append(f"rename to {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fdatasync", held_sync)
    monkeypatch.setattr(os, "replace", logged_replace)
    writer = DurableWriter(batch=1)
    final = tmp_path / "out.dcm"
    writer.write(final, [b"head", memoryview(b"--pixels--")[2:8], b"tail"], "token")
    assert entered.wait(30)
    assert list(writer.ready()) == []  # (the sync is still held: nothing can be committed)
    (temp,) = temps(tmp_path)
    assert temp.read_bytes() == b"headpixelstail"
    events.append("released")
    release.set()
    assert list(writer.close()) == [("token", None)]
    assert events == ["sync started", "released", "sync done", "rename to out.dcm"]
    assert final.read_bytes() == b"headpixelstail" and temps(tmp_path) == []
    assert oct(final.stat().st_mode & 0o777) == oct(0o644)


def test_a_failed_sync_leaves_no_output_and_reports_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_sync)
    writer = DurableWriter(batch=4)
    writer.write(tmp_path / "a.dcm", [b"x" * 10], "a")
    writer.passthrough("failed-before")
    (a, before) = list(writer.close())
    assert a[0] == "a" and isinstance(a[1], OSError) and before == ("failed-before", None)
    assert list(tmp_path.iterdir()) == []


def test_an_unexpected_error_while_committing_leaves_no_temp_file_or_open_fd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a disk error (here MemoryError in the second file's sync, in its thread): it reaches the caller,
    and the written files of the batch that will not be committed are deleted."""
    real = os.fdatasync

    def second_sync_fails(fd: int) -> None:
        if os.fstat(fd).st_size == 20:  # b.dcm's temp (the sync threads run in any order)
            raise MemoryError
        real(fd)

    open_fds = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "fdatasync", second_sync_fails)
    writer = DurableWriter(batch=4)
    for size, name in enumerate("abcd", start=1):
        writer.write(tmp_path / f"{name}.dcm", [name.encode() * 10 * size], name)
    with pytest.raises(MemoryError):
        list(writer.close())
    assert temps(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["a.dcm"]
    assert len(os.listdir("/proc/self/fd")) == open_fds


def test_bytes_waiting_to_be_written_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes run in background threads; a caller handing over objects faster than the disk
    takes them waits once ``max_queued_bytes`` are queued (huge objects cannot pile up in
    memory), and one object larger than the bound alone still goes through."""
    import medsendx.fsutil as fsutil

    release, blocked, returned, progress = (threading.Event() for _ in range(4))
    real = fsutil.write_chunks

    def slow_disk(fd: int, chunks) -> None:
        assert release.wait(30)
        real(fd, chunks)

    class ObservedCondition(threading.Condition):
        """The writer's queue bound: says when a caller has to wait (no timing involved)."""

        def wait_for(self, predicate, timeout=None):
            if not predicate():
                blocked.set()
                progress.set()
            return super().wait_for(predicate, timeout)

    def second_write() -> None:
        writer.write(tmp_path / "next.dcm", [b"n" * 10], "next")
        returned.set()
        progress.set()

    monkeypatch.setattr(fsutil, "write_chunks", slow_disk)
    writer = DurableWriter(batch=8, max_queued_bytes=100)
    writer._queue_room = ObservedCondition()
    writer.write(tmp_path / "big.dcm", [b"b" * 150], "big")  # alone and over the bound: accepted
    second = threading.Thread(target=second_write)
    second.start()
    assert progress.wait(30)  # the second write either returned or had to wait
    assert blocked.is_set() and not returned.is_set(), "the second object must wait until the first is written"
    release.set()
    second.join(30)
    assert returned.is_set()
    assert list(writer.close()) == [("big", None), ("next", None)]
    assert (tmp_path / "big.dcm").read_bytes() == b"b" * 150 and (tmp_path / "next.dcm").read_bytes() == b"n" * 10


def test_results_come_back_in_submission_order_across_batches(tmp_path: Path) -> None:
    writer = DurableWriter(batch=3, batches_in_flight=1)
    got = []
    for i in range(20):
        if i % 4 == 1:
            writer.passthrough(i)
        else:
            writer.write(tmp_path / f"{i}.dcm", [str(i).encode()], i)
        got.extend(token for token, error in writer.ready() if error is None)
    got.extend(token for token, error in writer.close() if error is None)
    assert got == list(range(20))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{i}.dcm" for i in range(20) if i % 4 != 1)


def test_write_chunks_writes_more_buffers_than_one_system_call_takes(tmp_path: Path) -> None:
    chunks = [bytes([i % 251]) * (i % 7 + 1) for i in range(3000)]
    fd = os.open(tmp_path / "many", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        write_chunks(fd, chunks)
    finally:
        os.close(fd)
    assert (tmp_path / "many").read_bytes() == b"".join(chunks)


def test_an_unwritable_output_fails_each_file_and_the_run_goes_on(tmp_path: Path) -> None:
    """OUTPUT is an existing file: every object gets our one-line reason, a quarantine
    entry and an audit line; none is half written (works as root too)."""
    deid = Deidentifier(settings_for(tmp_path / "state"), pixel_cleaner=None)
    sources = [write(planted_ct(), tmp_path / "in" / f"{i}.dcm") for i in range(3)]
    blocker = tmp_path / "out"
    blocker.write_bytes(b"a file, not a folder")
    outcomes = list(deid.deidentify_files(sources, blocker, batch=2))
    assert [o.status for o in outcomes] == ["error"] * 3
    assert all(o.reason.startswith("cannot write the output") for o in outcomes)
    assert [r["status"] for r in read_audit(deid.settings.audit_log)] == ["error"] * 3
    assert len(list_quarantine(deid.settings.quarantine_dir)) == 3
    assert blocker.read_bytes() == b"a file, not a folder"


def test_the_audit_log_has_one_line_per_object_in_input_order(tmp_path: Path) -> None:
    deid = Deidentifier(settings_for(tmp_path / "state"), pixel_cleaner=None)
    sources = [write(planted_ct(), tmp_path / "in" / f"{i}.dcm") for i in range(7)]
    outcomes = list(deid.deidentify_files(sources, tmp_path / "out", batch=3))
    audit = read_audit(deid.settings.audit_log)
    assert [r["output_sop_instance_uid"] for r in audit] == [o.sop_instance_uid for o in outcomes]
    assert all(r["status"] == "ok" and len(r["input_sha256"]) == 64 for r in audit)


def test_a_caller_that_stops_early_still_gets_every_written_output_audited(tmp_path: Path) -> None:
    """The command interrupted (Ctrl-C) while outputs are in flight: what was written is
    committed and has its audit line; no temp file is left."""
    deid = Deidentifier(settings_for(tmp_path / "state"), pixel_cleaner=None)
    sources = [write(planted_ct(), tmp_path / "in" / f"{i}.dcm") for i in range(10)]
    outcomes = deid.deidentify_files(sources, tmp_path / "out", batch=3)
    first = [next(outcomes) for _ in range(3)]
    outcomes.close()
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert temps(tmp_path / "out") == [] and len(written) >= len(first)
    audited = read_audit(deid.settings.audit_log)
    assert sorted(f"{r['output_sop_instance_uid']}.dcm" for r in audited) == written


@pytest.mark.slow
def test_a_run_killed_mid_way_leaves_only_complete_outputs(ct_head: list[Path], tmp_path: Path) -> None:
    """kill -9 while ``medsendx anonymize`` writes: every file under its final name is
    the complete output (identical to an uninterrupted run's); a re-run completes it."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for copy in range(8):  # 224 distinct objects
        for i, path in enumerate(ct_head):
            ds = pydicom.dcmread(path)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[ds.SOPInstanceUID, str(copy)])
            ds.save_as(inputs / f"{copy:02d}-{i:02d}.dcm")
    env = {**os.environ, "MEDSENDX_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "medsendx", "anonymize", str(inputs)]
    killed = tmp_path / "killed"
    # The kill lands at a chosen point, not after a pause: a sitecustomize in the child
    # holds the 101st data sync for ever once the first batch (32 files) is renamed into
    # place, and says so by creating a marker; then the parent kills it. At that moment
    # 32..96 outputs are final, others are half-written temps, most are not begun.
    hook = tmp_path / "hook"
    hook.mkdir()
    marker = tmp_path / "held"
    (hook / "sitecustomize.py").write_text(HOLD_HOOK)
    held_env = {**env, "PYTHONPATH": f"{hook}{os.pathsep}{env['PYTHONPATH']}", "HOLD_MARKER": str(marker), "HOLD_AFTER_SYNCS": "100", "HOLD_AFTER_RENAMES": "32"}
    proc = subprocess.Popen([*command, str(killed)], env=held_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300  # (only a bound on waiting for the event)
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marker.exists(), "the child never reached the held sync"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finals = [p for p in killed.iterdir() if not p.name.startswith(TEMP_PREFIX)]
    assert 32 <= len(finals) <= 96, len(finals)

    complete = tmp_path / "complete"
    assert subprocess.run([*command, str(complete)], env=env, capture_output=True).returncode == 0
    for path in finals:
        assert path.read_bytes() == (complete / path.name).read_bytes(), path.name
    assert subprocess.run([*command, str(killed)], env=env, capture_output=True).returncode == 0
    # ... and the re-run removed the killed run's half-written temps: the folders are equal.
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in complete.iterdir())


def test_a_rerun_removes_temps_of_dead_writers_only(ct_head: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = out / f"{TEMP_PREFIX}999999999-w7"  # pid-named, no such process
    foreign = out / f"{TEMP_PREFIX}k3j4h5g6"  # an mkstemp name: may be someone's write in progress
    for path in (dead, foreign):
        path.write_bytes(b"half")
    outcomes = list(Deidentifier(settings_for(tmp_path / "state")).deidentify_files(ct_head[:2], out))
    assert [o.status for o in outcomes] == ["ok", "ok"]
    assert not dead.exists() and foreign.exists()


def test_worker_processes_give_the_same_outputs_and_order_as_one_process(tmp_path: Path) -> None:
    """``anonymize -j 2`` on a folder large enough to be split between processes."""
    from medsendx.commands.anonymize import _outcomes

    settings = settings_for(tmp_path / "state")
    sources = [write(planted_ct(), tmp_path / "in" / f"{i:03d}.dcm") for i in range(300)]
    (tmp_path / "in" / "junk.dcm").write_bytes(b"not dicom")
    sources.insert(150, tmp_path / "in" / "junk.dcm")
    many = list(_outcomes(settings, sources, tmp_path / "many", 2))
    one = list(_outcomes(settings, sources, tmp_path / "one", 1))
    assert [o.source for o in many] == sources
    assert [o.status for o in many] == [o.status for o in one] and many[150].status == "error"
    assert [o.sop_instance_uid for o in many] == [o.sop_instance_uid for o in one]
    for outcome in one:
        if outcome.output is not None:
            assert outcome.output.read_bytes() == (tmp_path / "many" / outcome.output.name).read_bytes()
    assert temps(tmp_path / "many") == [] and len(list((tmp_path / "many").iterdir())) == 300


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 17, 1 << 20, (16 << 20) + 5])
def test_every_size_is_written_exactly(tmp_path: Path, size: int) -> None:
    """Direct I/O writes whole 4 KiB blocks from an aligned buffer and then cuts the file back;
    buffered writes (empty or larger than 16 MB) do neither: either way the file is the bytes."""
    payload = os.urandom(size)
    chunks = [payload[: size // 3], memoryview(payload)[size // 3 : size // 2], payload[size // 2 :]]
    writer = DurableWriter(batch=2)
    writer.write(tmp_path / "a.dcm", chunks, "a")
    writer.write(tmp_path / "b.dcm", [b"\xff" * 5], "b")  # (a short object after a long one, same thread buffer)
    assert list(writer.close()) == [("a", None), ("b", None)]
    assert (tmp_path / "a.dcm").read_bytes() == payload and (tmp_path / "b.dcm").read_bytes() == b"\xff" * 5
    assert temps(tmp_path) == []


def test_a_refused_direct_write_is_written_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that opens O_DIRECT files but refuses the write (EINVAL): the object is
    written buffered from the start, and so is every later one in that folder."""
    import errno

    import medsendx.fsutil as fsutil

    calls = []

    def refused(fd: int, chunks, size: int) -> None:
        calls.append(size)
        os.write(fd, b"partial")  # (something already written must not stay)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(fsutil, "_write_direct", refused)
    monkeypatch.setattr(fsutil, "_no_direct", set())
    writer = DurableWriter(batch=1, sync_threads=1)
    writer.write(tmp_path / "a.dcm", [b"abc" * 5000], "a")
    writer.write(tmp_path / "b.dcm", [b"xyz" * 5000], "b")
    assert list(writer.close()) == [("a", None), ("b", None)]
    assert (tmp_path / "a.dcm").read_bytes() == b"abc" * 5000 and (tmp_path / "b.dcm").read_bytes() == b"xyz" * 5000
    assert calls == [15000] and fsutil._no_direct == {str(tmp_path)}


def test_the_audit_log_is_synced_before_the_last_outcome_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's outcomes: once the generator is exhausted (the command then prints its
    result) the audit log has been fsynced after its last line was appended."""
    from medsendx.commands.anonymize import _outcomes

    settings = settings_for(tmp_path / "state")
    sources = [write(planted_ct(), tmp_path / "in" / f"{i}.dcm") for i in range(5)]
    real_fsync, real_write = os.fsync, os.write
    events: list[str] = []
    audit_log = settings.audit_log

    def is_audit(fd: int) -> bool:
        return audit_log.exists() and os.fstat(fd).st_ino == audit_log.stat().st_ino

    def logged_fsync(fd: int) -> None:
        real_fsync(fd)
        if is_audit(fd):
            events.append("audit synced")

    def logged_write(fd: int, data) -> int:
        written = real_write(fd, data)
        if is_audit(fd):
            events.append("audit appended")
        return written

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "write", logged_write)
    outcomes = _outcomes(settings, sources, tmp_path / "out", 1)
    statuses = []
    for outcome in outcomes:
        statuses.append(outcome.status)
    assert statuses == ["ok"] * 5
    assert events and events[-1] == "audit synced" and "audit appended" in events
    assert len(read_audit(audit_log)) == 5
