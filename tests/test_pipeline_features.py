"""QC feature rows are crash-safe: journaled with their object, moved to Parquet in batches,
recovered after a SIGKILL at the worst instant, never lost and never written twice."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq

from conftest import cli_env
from medsendx.config import Settings
from medsendx.pipeline import Pipeline, features_root


def stored_uids(state: Path) -> list[str]:
    """Every SOP Instance UID in the feature store's Parquet files (one entry per row)."""
    uids: list[str] = []
    for path in sorted(features_root(Settings(state_dir=state)).rglob("*.parquet")):
        uids += pq.read_table(path, columns=["sop_instance_uid"]).column("sop_instance_uid").to_pylist()
    return uids


# A run of the pipeline that SIGKILLs itself right after the second Parquet file is written
# and before the journal records it: the one instant where a row could be written twice.
KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from medsendx.config import Settings
    from medsendx.fleet import store
    from medsendx.pipeline import Pipeline

    original = store.FeatureStore.append
    calls = []
    def append_then_die(self, rows):
        written = original(self, rows)
        calls.append(written)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return written
    store.FeatureStore.append = append_then_die

    state, dest, *files = sys.argv[1:]
    pipeline = Pipeline(Settings(state_dir=Path(state)), destination="folder:" + dest, feature_batch=3)
    for f in files:
        pipeline.process(Path(f))
    print("not killed")
""")


def test_sigkill_while_flushing_loses_and_duplicates_no_row(ct_head, tmp_path):
    state, dest = tmp_path / "state", tmp_path / "hq"
    files = [str(p) for p in ct_head[:8]]
    run = subprocess.run([sys.executable, "-c", KILLED_RUN, str(state), str(dest), *files],
                         env=cli_env({}), capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stdout + run.stderr
    # killed after two batches of 3 were written, the second one not yet marked done
    assert len(stored_uids(state)) == 6

    # the restart (as the gateway does on start) processes the staged objects again and
    # recovers the journal: all 8 objects once, the interrupted batch not repeated
    pipeline = Pipeline(Settings(state_dir=state), destination=f"folder:{dest}", feature_batch=3)
    pipeline.flush()
    results = [pipeline.process(Path(f)) for f in files]
    pipeline.close()
    assert [r.status for r in results] == ["duplicate"] * 6 + ["queued"] * 2
    uids = stored_uids(state)
    assert sorted(uids) == sorted(r.sop_instance_uid for r in results)
    assert len(set(uids)) == len(uids) == 8


def test_rows_are_durable_before_the_batch_is_full(ct_head, tmp_path):
    """A row is on disk (journal) as soon as its object is queued, not when 64 have gathered."""
    state, dest = tmp_path / "state", tmp_path / "hq"
    script = textwrap.dedent("""
        import os, signal, sys
        from pathlib import Path
        from medsendx.config import Settings
        from medsendx.pipeline import Pipeline
        state, dest, *files = sys.argv[1:]
        pipeline = Pipeline(Settings(state_dir=Path(state)), destination="folder:" + dest)
        for f in files:
            assert pipeline.process(Path(f)).status == "queued"
        os.kill(os.getpid(), signal.SIGKILL)  # no close(), no flush
    """)
    run = subprocess.run([sys.executable, "-c", script, str(state), str(dest), *map(str, ct_head[:3])],
                         env=cli_env({}), capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert stored_uids(state) == []  # nothing reached Parquet before the kill...
    pipeline = Pipeline(Settings(state_dir=state), destination=f"folder:{dest}")
    pipeline.close()  # ...and the next run stores all three
    assert len(stored_uids(state)) == 3
    assert len(set(stored_uids(state))) == 3
