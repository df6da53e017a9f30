"""Benchmark: de-identification throughput (files/s) against baselines measured in the same run.

The 28 real head-CT slices of ../shared/data/ct-head-ge are copied to >= 500 files (each
copy its own SOP Instance UID, so every output is a distinct file), then de-identified:

* plain file copy (shutil.copyfile): the floor any tool pays for reading and writing;
* the prototype's loop: pydicom dcmread, overwrite PatientName/PatientID, save_as;
* ours, in memory (engine only, no file I/O);
* ours, one core, as ``medsendx anonymize`` runs (atomic outputs, one disk flush per batch);
* ours, one core, without the disk flush (comparison only: the baselines do not flush);
* ours, one core, one fsync per file (``deidentify_file``, as the gateway calls it);
* ours with worker processes over the folder (``medsendx anonymize -j N``).

Run: ``python bench/anonymize.py [--files 504] [--workers N]`` from the project root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import pydicom  # noqa: E402

from medsendx.commands.anonymize import _outcomes  # noqa: E402
from medsendx.config import load_settings  # noqa: E402
from medsendx.deid import Deidentifier  # noqa: E402
from medsendx.dicomio import project_data_dir  # noqa: E402


def make_inputs(folder: Path, count: int) -> list[Path]:
    sources = sorted((project_data_dir() / "ct-head-ge").glob("*.dcm"))
    if not sources:
        sys.exit("no input: ../shared/data/ct-head-ge not found (set MEDSENDX_DATA_DIR)")
    folder.mkdir(parents=True)
    files = []
    for i in range(count):
        ds = pydicom.dcmread(sources[i % len(sources)])
        copy = i // len(sources)
        if copy:
            ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[ds.SOPInstanceUID, str(copy)])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path)
        files.append(path)
    return files


def timed(label: str, run, count: int, results: dict[str, float]) -> None:
    """Wall-clock files/s, and files per CPU-second of this process (what one core does
    when it is not shared; meaningless for the worker run, whose work is in children)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    run()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    results[label] = count / elapsed
    cpu_rate = f"{count / cpu:8.0f} files/CPU-s" if "workers" not in label else " " * 20
    print(f"  {label:<44} {count / elapsed:8.0f} files/s  {cpu_rate}  ({elapsed:5.2f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=504, help="number of input files (default 504 = 18 x 28)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="worker processes for the folder run")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    with tempfile.TemporaryDirectory(prefix="medsendx-bench-") as tmp:
        tmp_path = Path(tmp)
        inputs = make_inputs(tmp_path / "in", args.files)
        settings = load_settings(overrides={"state_dir": str(tmp_path / "state")}, environ={})
        deid = Deidentifier(settings, pixel_cleaner=None)
        datas = [p.read_bytes() for p in inputs]
        count = len(inputs)
        print(f"{count} files ({sum(map(len, datas)) / 1e6:.0f} MB) from ../shared/data/ct-head-ge, {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f}")
        results: dict[str, float] = {}

        def out(name: str) -> Path:
            folder = tmp_path / name
            folder.mkdir()
            return folder

        copy_dir = out("copy")
        timed("plain file copy (shutil.copyfile)", lambda: [shutil.copyfile(p, copy_dir / p.name) for p in inputs], count, results)

        proto_dir = out("prototype")

        def prototype() -> None:
            for p in inputs:
                ds = pydicom.dcmread(p)
                ds.PatientName = "ANONYMOUS"
                ds.PatientID = "00000"
                ds.save_as(proto_dir / p.name)

        timed("prototype loop (dcmread, set 2 tags, save_as)", prototype, count, results)
        timed("ours, engine only (in memory)", lambda: [deid.deidentify_bytes(d) for d in datas], count, results)
        batch_dir = out("ours")
        timed("ours, 1 core (anonymize: batch flush)", lambda: list(deid.deidentify_files(inputs, batch_dir)), count, results)
        # The same, without waiting for the disk (the baselines above do not flush either):
        # shows how much of the wall time is the durability flush on this machine's disk.
        from medsendx.deid import engine

        flush, sync_dir = engine._flush_filesystem, engine.fsync_dir
        engine._flush_filesystem = engine.fsync_dir = lambda folder: None
        try:
            noflush_dir = out("ours-noflush")
            timed("ours, 1 core, no disk flush (comparison only)", lambda: list(deid.deidentify_files(inputs, noflush_dir)), count, results)
        finally:
            engine._flush_filesystem, engine.fsync_dir = flush, sync_dir
        single_dir = out("ours-fsync")
        timed("ours, 1 core, fsync per file", lambda: [deid.deidentify_file(p, single_dir) for p in inputs], count, results)
        workers_dir = out("ours-workers")
        timed(
            f"ours, {args.workers} workers (anonymize -j {args.workers})",
            lambda: list(_outcomes(settings, inputs, workers_dir, args.workers)),
            count,
            results,
        )
        for folder in (batch_dir, noflush_dir, single_dir, workers_dir):
            assert len(list(folder.iterdir())) == count, "every input must give one output"

        copy, proto = results["plain file copy (shutil.copyfile)"], results["prototype loop (dcmread, set 2 tags, save_as)"]
        print("\nratios (higher is faster)")
        for label, rate in results.items():
            if label.startswith("ours"):
                print(f"  {label:<44} {rate / proto:5.2f}x prototype   {rate / copy:5.2f}x plain copy")


if __name__ == "__main__":
    main()
