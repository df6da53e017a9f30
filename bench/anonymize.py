"""Benchmark: de-identification throughput (files/s) against baselines measured in the same run.

The 28 real head-CT slices of ../shared/data/ct-head-ge are copied to >= 500 files (each
copy its own SOP Instance UID, so every output is a distinct file), then de-identified:

* plain file copy (shutil.copyfile, no flush): the floor any tool pays for reading and writing;
* the prototype's loop: pydicom dcmread, overwrite PatientName/PatientID, save_as (no flush);
* ours, engine only, in memory (no file I/O, no hashing, no audit);
* ours, the command's per-file path in this process, pinned to ONE core: what
  ``medsendx anonymize`` does for each file (read, input hash, quarantine checks,
  de-identification, atomic and durable write, audit line, outcome), without start-up;
* ours, the real command ``medsendx anonymize IN OUT`` in a subprocess pinned to ONE core
  (the same plus Python start-up and imports, about 1 s, and the progress bar);
* the same command with ``-j 2`` worker processes (not pinned).

For each: wall-clock files/s and CPU time per file (user + system, all threads and child
processes). On a shared machine the wall figures drop with the load; the CPU figures do
not, and ``1000 / CPU ms per file`` is what one core sustains when it is not shared. The
command rows also give the rate the command itself reports (from its first file to its
last, i.e. without the ~1 s Python start-up and imports).

Run: ``python bench/anonymize.py [--files 504]`` from the project root (or ``bench/run anonymize``).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import pydicom  # noqa: E402

from medsendx.commands.anonymize import _outcomes  # noqa: E402
from medsendx.config import load_settings  # noqa: E402
from medsendx.deid import Deidentifier  # noqa: E402
from medsendx.dicomio import project_data_dir  # noqa: E402

TARGET = 500  # files/s on one core (issue #2)


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


def _cpu() -> float:
    """CPU seconds (user + system) of this process and of its waited-for descendants."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Results:
    def __init__(self, count: int) -> None:
        self.count = count
        self.rates: dict[str, float] = {}
        self.cpu_ms: dict[str, float] = {}

    def timed(self, label: str, run: Callable[[], str | None]) -> None:
        started, cpu_started = time.perf_counter(), _cpu()
        note = run()
        elapsed, cpu = time.perf_counter() - started, _cpu() - cpu_started
        self.rates[label] = self.count / elapsed
        self.cpu_ms[label] = cpu / self.count * 1000
        print(
            f"  {label:<40} {self.count / elapsed:7.0f} files/s wall  {self.cpu_ms[label]:5.2f} ms CPU/file"
            f" (= {1000 / self.cpu_ms[label]:5.0f} files per CPU-s)  {elapsed:5.2f} s{note or ''}",
            flush=True,
        )


def run_command(args: list[str], env: dict[str, str], cpu: int | None) -> str:
    """Run ``medsendx anonymize`` (optionally pinned to one CPU); the rate it reports."""
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    done = subprocess.run(
        [sys.executable, "-m", "medsendx", "anonymize", *args],
        env=env, capture_output=True, text=True, preexec_fn=pin, check=False,
    )
    if done.returncode != 0:
        sys.exit(f"medsendx anonymize failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    reported = re.search(r"\((\d+) files/s\)", done.stdout)
    return f"  [command reports {reported.group(1)} files/s after start-up]" if reported else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=504, help="number of input files (default 504 = 18 x 28)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for the -j run (default 2)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    with tempfile.TemporaryDirectory(prefix="medsendx-bench-") as tmp:
        tmp_path = Path(tmp)
        inputs = make_inputs(tmp_path / "in", args.files)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
               "MEDSENDX_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "100"}
        settings = load_settings(overrides={"state_dir": str(tmp_path / "state")}, environ={})
        deid = Deidentifier(settings, pixel_cleaner=None)
        datas = [p.read_bytes() for p in inputs]
        count = len(inputs)
        cpus = sorted(os.sched_getaffinity(0))
        print(f"{count} files ({sum(map(len, datas)) / 1e6:.0f} MB) from ../shared/data/ct-head-ge, {len(cpus)} cores, "
              f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        results = Results(count)

        def out(name: str) -> Path:
            folder = tmp_path / name
            folder.mkdir()
            return folder

        copy_dir = out("copy")
        results.timed("plain file copy (shutil.copyfile)", lambda: [shutil.copyfile(p, copy_dir / p.name) for p in inputs] and None)

        proto_dir = out("prototype")

        def prototype() -> None:
            for p in inputs:
                ds = pydicom.dcmread(p)
                ds.PatientName = "ANONYMOUS"
                ds.PatientID = "00000"
                ds.save_as(proto_dir / p.name)

        results.timed("prototype loop (dcmread, 2 tags, save_as)", prototype)
        results.timed("ours, engine only (in memory)", lambda: [deid.deidentify_bytes(d) for d in datas] and None)
        path_dir = tmp_path / "path-1"
        path_label = "ours, command path in process, 1 core"

        def command_path() -> None:
            everywhere = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {cpus[-1]})  # this process and the writer's threads: one core
            try:
                statuses = [o.status for o in _outcomes(settings, inputs, path_dir, 1)]
            finally:
                os.sched_setaffinity(0, everywhere)
            assert statuses == ["ok"] * count

        results.timed(path_label, command_path)
        one_dir, many_dir = tmp_path / "cmd-1", tmp_path / "cmd-j"
        one = f"ours, medsendx anonymize, 1 core (cpu {cpus[-1]})"
        results.timed(one, lambda: run_command([str(tmp_path / "in"), str(one_dir)], env, cpus[-1]))
        many = f"ours, medsendx anonymize -j {args.workers}"
        results.timed(many, lambda: run_command(["-j", str(args.workers), str(tmp_path / "in"), str(many_dir)], env, None))
        for folder in (path_dir, one_dir, many_dir):
            assert len(list(folder.iterdir())) == count, "every input must give one output"

        copy, proto = results.rates["plain file copy (shutil.copyfile)"], results.rates["prototype loop (dcmread, 2 tags, save_as)"]
        print("\nratios, wall (higher is faster)")
        for label, rate in results.rates.items():
            if label.startswith("ours"):
                print(f"  {label:<40} {rate / proto:5.2f}x prototype   {rate / copy:5.2f}x plain copy")
        print(f"  -j {args.workers} over 1 core: {results.rates[many] / results.rates[one]:.2f}x wall")
        print(f"\ntarget >= {TARGET} files/s on one core, with durable writes (load now {os.getloadavg()[0]:.1f}):")
        verdicts = [
            (f"{path_label}, wall", results.rates[path_label]),
            (f"{path_label}, per CPU-second", 1000 / results.cpu_ms[path_label]),
            (f"{one}, wall incl. start-up", results.rates[one]),
            (f"{one}, per CPU-second incl. start-up", 1000 / results.cpu_ms[one]),
        ]
        for label, rate in verdicts:
            print(f"  {label:<62} {rate:6.0f} files/s  {'MET' if rate >= TARGET else 'NOT MET'}")
        print("  (per CPU-second = what one unshared core sustains; wall figures fall with the machine's load)")


if __name__ == "__main__":
    main()
