"""The durable outbox: states, order, backoff, restart after a killed process."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from delivery_samples import enqueue_all, real_samples, synthetic_samples
from medsendx.outbox import Outbox, backoff_delay

DEST = "file:///nowhere"


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "state" / "outbox.sqlite3")


def test_enqueue_takes_the_file_over_and_refuses_duplicates(outbox: Outbox, tmp_path: Path, ct_head) -> None:
    sample = real_samples(ct_head[:1], tmp_path / "in")[0]
    original = sample.path.read_bytes()
    assert outbox.enqueue(sample.path, sop_instance_uid=sample.sop_instance_uid,
                          study_instance_uid=sample.study_instance_uid, destination=DEST)
    assert not sample.path.exists(), "the outbox moves the file into its spool"
    (item,) = outbox.items()
    assert item.path.parent == outbox.spool_dir
    assert item.path.read_bytes() == original
    assert item.size == len(original)
    assert item.state == "queued" and item.attempts == 0
    assert sample.sop_instance_uid in item.path.name  # the name comes from the new UID only

    again = real_samples(ct_head[:1], tmp_path / "again")[0]
    again.path.write_bytes(original + b"\0\0")  # same UID, other bytes: not ours to delete
    assert not outbox.enqueue(again.path, sop_instance_uid=again.sop_instance_uid,
                              study_instance_uid=again.study_instance_uid, destination=DEST)
    assert again.path.exists(), "a refused duplicate with other content is left to the caller"
    same = real_samples(ct_head[:1], tmp_path / "same")[0]
    assert not outbox.enqueue(same.path, sop_instance_uid=same.sop_instance_uid,
                              study_instance_uid=same.study_instance_uid, destination=DEST)
    assert not same.path.exists(), "an identical duplicate (a kill before the unlink) is cleaned up"
    # The same object for a second destination is a second row with its own file.
    assert outbox.enqueue(again.path, sop_instance_uid=again.sop_instance_uid,
                          study_instance_uid=again.study_instance_uid, destination="file:///elsewhere")
    assert outbox.counts() == {"queued": 2, "sending": 0, "sent": 0, "failed": 0}


def test_state_machine_and_file_removed_only_after_sent(outbox: Outbox, tmp_path: Path, ct_head) -> None:
    enqueue_all(outbox, real_samples(ct_head[:3], tmp_path / "in"), DEST)
    claimed = outbox.claim(limit=10)
    assert [i.state for i in claimed] == ["sending"] * 3
    assert all(i.attempts == 0 for i in claimed)  # claimed, not yet tried
    assert outbox.counts()["sending"] == 3
    ok, refused, flaky = claimed

    outbox.mark_sent(ok.id, wire_bytes=100)
    assert outbox.get(ok.id).state == "sent"
    assert not ok.path.exists()

    outbox.mark_failed(refused.id, "peer refused the object (STOW-RS failure reason 0xC000)")
    row = outbox.get(refused.id)
    assert row.state == "failed" and "0xC000" in row.last_error
    assert refused.path.exists(), "a failed row keeps its file for 'queue retry'"

    outbox.mark_retry(flaky.id, "connection failed", delay=60)
    row = outbox.get(flaky.id)
    assert row.state == "queued" and row.transient_faults == 1
    assert row.next_attempt_at > time.time() + 50
    assert outbox.claim(limit=10) == [], "nothing is due: one in backoff, one failed, one sent"

    assert outbox.retry(failed=True, waiting=True) == 2
    assert {i.id for i in outbox.claim(limit=10)} == {refused.id, flaky.id}
    assert outbox.stats()["raw_bytes"] == ok.size


def test_order_is_priority_then_age(outbox: Outbox, tmp_path: Path, ct_head) -> None:
    samples = real_samples(ct_head[:5], tmp_path / "in")
    priorities = [None, 10, None, 90, 10]
    for sample, priority in zip(samples, priorities):
        enqueue_all(outbox, [sample], DEST, priority)
    order = [i.sop_instance_uid for i in outbox.claim(limit=10)]
    expected = [samples[3], samples[1], samples[4], samples[0], samples[2]]
    assert order == [s.sop_instance_uid for s in expected]


def test_backoff_is_full_jitter_capped_and_never_gives_up() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(attempt, 1.0, 300.0, rng) for attempt in range(1, 200)]
    assert all(0.0 <= d <= 300.0 for d in delays)
    assert max(delays[:3]) <= 4.0  # attempts 1-3: at most 1, 2, 4 seconds
    late = delays[20:]
    assert max(late) > 200 and min(late) < 100  # spread over the whole capped window
    # Large attempt numbers (a truck offline all day) still produce a delay.
    assert 0.0 <= backoff_delay(10_000, 1.0, 300.0, rng) <= 300.0


def test_each_state_change_is_committed_in_wal_mode(outbox: Outbox, tmp_path: Path, ct_head) -> None:
    enqueue_all(outbox, real_samples(ct_head[:1], tmp_path / "in"), DEST)
    (item,) = outbox.claim()
    # A separate connection (another process would see the same) sees the committed state.
    conn = sqlite3.connect(outbox.db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT state FROM outbox WHERE id = ?", (item.id,)).fetchone()[0] == "sending"
    conn.close()


CLAIM_AND_DIE = textwrap.dedent(
    """
    import os, sys
    from medsendx.outbox import Outbox
    box = Outbox(sys.argv[1])
    print(len(box.claim(limit=int(sys.argv[2]))), flush=True)
    os._exit(0)  # like SIGKILL: no cleanup, rows stay in 'sending'
    """
)


def test_rows_of_a_dead_process_are_claimed_again(outbox: Outbox, tmp_path: Path) -> None:
    enqueue_all(outbox, synthetic_samples(_first_ct(), tmp_path / "in", 5), DEST)
    result = subprocess.run([sys.executable, "-c", CLAIM_AND_DIE, str(outbox.db_path), "3"],
                            capture_output=True, text=True, env=_env(), check=True)
    assert result.stdout.strip() == "3"
    assert outbox.counts()["sending"] == 3
    again = outbox.claim(limit=10)
    assert len(again) == 5, "the dead owner's rows are due again at once, nothing is lost"
    assert sorted(i.attempts for i in again) == [0] * 5  # a claim lost to a kill is no attempt


def test_rows_of_a_live_process_are_not_stolen(outbox: Outbox, tmp_path: Path) -> None:
    enqueue_all(outbox, synthetic_samples(_first_ct(), tmp_path / "in", 2), DEST)
    other = Outbox(outbox.db_path)
    other._owner = outbox._owner.rsplit(":", 1)[0] + ":1"  # a claimer that is alive (pid 1)
    assert len(other.claim(limit=1)) == 1
    assert len(outbox.claim(limit=10)) == 1


def test_purge_removes_history_and_files(outbox: Outbox, tmp_path: Path, ct_head) -> None:
    enqueue_all(outbox, real_samples(ct_head[:2], tmp_path / "in"), DEST)
    first, second = outbox.claim(limit=2)
    outbox.mark_sent(first.id)
    outbox.mark_failed(second.id, "peer refused the object")
    assert outbox.purge() == 1
    assert outbox.counts() == {"queued": 0, "sending": 0, "sent": 0, "failed": 1}
    assert outbox.purge(states=("failed",)) == 1
    assert not second.path.exists()
    assert list(outbox.spool_dir.iterdir()) == []
    with pytest.raises(ValueError):
        outbox.purge(states=("sending",))


def _first_ct() -> Path:
    from medsendx.sampledata import ct_head_files

    return ct_head_files()[0]


def _env() -> dict[str, str]:
    from conftest import cli_env

    return cli_env()


def test_opening_an_outbox_never_removes_a_write_in_progress(outbox: Outbox) -> None:
    """Every metrics scrape opens an Outbox; a de-identified file being written into the
    spool at that moment (an fsutil temp named with its live writer's pid) must survive,
    else the object is lost to quarantine. Temps of dead writers, and ancient foreign
    temps, are removed."""
    import os

    from medsendx.fsutil import atomic_write

    in_progress = []

    def writer(fh) -> None:
        fh.write(b"half a de-identified object")
        in_progress.extend(outbox.spool_dir.glob(".tmp-*"))
        Outbox(outbox.db_path)  # what a /metrics request does meanwhile

    written = atomic_write(outbox.spool_dir / "2.25.1.dcm", writer)
    assert in_progress and written.read_bytes() == b"half a de-identified object"

    dead = outbox.spool_dir / ".tmp-999999999-2.25.2.abc.dcm"  # no such pid
    ancient = outbox.spool_dir / ".tmp-k3j4h5g6"
    recent = outbox.spool_dir / ".tmp-a1b2c3d4"
    for path in (dead, ancient, recent):
        path.write_bytes(b"x")
    old = time.time() - 2 * 3600
    os.utime(ancient, (old, old))
    Outbox(outbox.db_path)
    assert not dead.exists() and not ancient.exists()
    assert recent.exists()


def test_a_write_killed_mid_way_leaves_a_temp_the_next_outbox_removes(outbox: Outbox) -> None:
    """A de-identifier killed inside ``atomic_write`` leaves its half-written temp in the
    spool; it is named with the dead writer's pid, so the next Outbox removes it at once."""
    child = textwrap.dedent(
        """
        import os, sys
        from pathlib import Path
        from medsendx.fsutil import atomic_write
        def die_mid_write(fh):
            fh.write(b"half an object")
            fh.flush()
            os._exit(9)  # as a kill -9 would
        atomic_write(Path(sys.argv[1]) / "2.25.3.dcm", die_mid_write)
        """
    )
    done = subprocess.run([sys.executable, "-c", child, str(outbox.spool_dir)], env=_env(), capture_output=True)
    assert done.returncode == 9
    (left,) = outbox.spool_dir.glob(".tmp-*")
    assert left.read_bytes() == b"half an object"
    Outbox(outbox.db_path)
    assert list(outbox.spool_dir.iterdir()) == []


def test_a_file_left_by_a_kill_after_the_sent_commit_is_removed_on_restart(
    outbox: Outbox, tmp_path: Path, ct_head
) -> None:
    """SIGKILL between the 'sent' commit and the unlink leaves the spooled file behind; the
    next deliverer removes it, and never a file no row names yet (de-identifier output)."""
    from medsendx.config import load_settings
    from medsendx.delivery import Deliverer

    enqueue_all(outbox, real_samples(ct_head[:2], tmp_path / "in"), DEST)
    sent, pending = outbox.claim(limit=10)
    leftover = sent.path.read_bytes()
    outbox.mark_sent(sent.id)
    sent.path.write_bytes(leftover)  # as if the process died before its unlink
    not_yet_enqueued = outbox.spool_dir / "2.25.99.dcm"
    not_yet_enqueued.write_bytes(b"on its way to enqueue")

    Deliverer(outbox, load_settings(overrides={"state_dir": str(tmp_path / "state")}, environ={}))
    assert not sent.path.exists()
    assert pending.path.exists(), "a row still sending keeps its file"
    assert not_yet_enqueued.exists()
