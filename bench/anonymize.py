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
  (the same plus Python start-up and imports, 0.5-0.9 s here, and the progress bar), on the
  whole folder and on one series of 28 files: the difference between the two gives the
  command's rate per file after start-up, measured from outside the command;
* the same command with ``-j 2`` worker processes (not pinned).

Every row runs ``--repeat`` times (default 3), the rows taking turns, and the figures are
medians, with the range of the runs' wall rates. For each: wall-clock files/s and CPU time
per file (user + system, all threads and child processes). On a shared machine the wall
figures drop with the load; the CPU figures less so, and ``1000 / CPU ms per file`` is
what one core sustains when it is not shared. The command rows also give the rate the
command itself reports (from its first file to its last).

Run: ``python bench/anonymize.py [--files 504] [--repeat 3]`` from the project root (or ``bench/run anonymize``).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
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
SERIES = 28  # slices in ../shared/data/ct-head-ge


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
    """Every row is run ``repeat`` times, the rows taking turns (so a burst of load on the
    shared machine hits them alike); a row's figures are the medians of its runs."""

    def __init__(self, repeat: int) -> None:
        self.repeat = repeat
        self.rows: list[tuple[str, int, Callable[[int], str | None]]] = []
        self.runs: dict[str, list[tuple[float, float, str]]] = {}  # label -> (wall s, CPU s, note)

    def add(self, label: str, count: int, run: Callable[[int], str | None]) -> None:
        """``run(repetition)`` processes ``count`` files; what it returns is printed after the figures."""
        self.rows.append((label, count, run))
        self.runs[label] = []

    def measure(self, between_rounds: Callable[[int], None]) -> None:
        """Run every row ``repeat`` times; ``between_rounds(repetition)`` runs before each
        round, untimed (it deletes the previous round's outputs)."""
        for repetition in range(self.repeat):
            between_rounds(repetition)
            for label, _, run in self.rows:
                started, cpu_started = time.perf_counter(), _cpu()
                note = run(repetition)
                self.runs[label].append((time.perf_counter() - started, _cpu() - cpu_started, note or ""))
            print(f"  (round {repetition + 1} of {self.repeat} done)", file=sys.stderr, flush=True)

    def seconds(self, label: str) -> float:
        return statistics.median(wall for wall, _, _ in self.runs[label])

    def rate(self, label: str) -> float:
        return self._count(label) / self.seconds(label)

    def cpu_ms(self, label: str) -> float:
        return statistics.median(cpu for _, cpu, _ in self.runs[label]) / self._count(label) * 1000

    def spread(self, label: str) -> str:
        rates = sorted(self._count(label) / wall for wall, _, _ in self.runs[label])
        return f"{rates[0]:.0f}-{rates[-1]:.0f}"

    def print_rows(self) -> None:
        for label, count, _ in self.rows:
            notes = [note for _, _, note in self.runs[label] if note]
            print(
                f"  {label:<44} {self.rate(label):6.0f} files/s wall ({self.spread(label):>9})  "
                f"{self.cpu_ms(label):5.2f} ms CPU/file (= {1000 / self.cpu_ms(label):5.0f} per CPU-s)  "
                f"{self.seconds(label):5.2f} s{'  ' + notes[len(notes) // 2] if notes else ''}"
            )

    def _count(self, label: str) -> int:
        return next(count for row, count, _ in self.rows if row == label)


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
    parser.add_argument("--repeat", type=int, default=3, help="runs of every row; figures are medians (default 3)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    with tempfile.TemporaryDirectory(prefix="medsendx-bench-") as tmp:
        tmp_path = Path(tmp)
        inputs = make_inputs(tmp_path / "in", args.files)
        # One series (the first 28 files) for the start-up probe: the command's fixed cost.
        probe = tmp_path / "in-probe"
        probe.mkdir()
        for path in inputs[:SERIES]:
            os.link(path, probe / path.name)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
               "MEDSENDX_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "100"}
        settings = load_settings(overrides={"state_dir": str(tmp_path / "state")}, environ={})
        deid = Deidentifier(settings, pixel_cleaner=None)
        datas = [p.read_bytes() for p in inputs]
        count = len(inputs)
        cpus = sorted(os.sched_getaffinity(0))
        print(f"{count} files ({sum(map(len, datas)) / 1e6:.0f} MB) from ../shared/data/ct-head-ge, {len(cpus)} cores, "
              f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}; every row run {args.repeat} times, "
              "medians (range of the runs' wall rates in brackets)")
        results = Results(args.repeat)

        def fresh(name: str, repetition: int) -> Path:
            """This run's output folder (not there yet)."""
            return tmp_path / f"{name}-{repetition}"

        def delete_previous_round(repetition: int) -> None:
            """Outputs of the round before (disk space); the last round's are checked below."""
            for folder in tmp_path.glob(f"*-{repetition - 1}"):
                shutil.rmtree(folder)

        def copy(repetition: int) -> None:
            folder = fresh("copy", repetition)
            folder.mkdir()
            for path in inputs:
                shutil.copyfile(path, folder / path.name)

        def prototype(repetition: int) -> None:
            folder = fresh("prototype", repetition)
            folder.mkdir()
            for path in inputs:
                ds = pydicom.dcmread(path)
                ds.PatientName = "ANONYMOUS"
                ds.PatientID = "00000"
                ds.save_as(folder / path.name)

        def command_path(repetition: int) -> None:
            folder = fresh("path", repetition)
            everywhere = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {cpus[-1]})  # this process and the writer's threads: one core
            try:
                statuses = [o.status for o in _outcomes(settings, inputs, folder, 1)]
            finally:
                os.sched_setaffinity(0, everywhere)
            assert statuses == ["ok"] * count

        def command(name: str, source: Path, options: list[str], cpu: int | None) -> Callable[[int], str]:
            return lambda repetition: run_command([*options, str(source), str(fresh(name, repetition))], env, cpu)

        copy_label, proto_label = "plain file copy (shutil.copyfile)", "prototype loop (dcmread, 2 tags, save_as)"
        path_label = "ours, command path in process, 1 core"
        probe_label = f"ours, medsendx anonymize, 1 core, {SERIES} files"
        one = f"ours, medsendx anonymize, 1 core (cpu {cpus[-1]})"
        many = f"ours, medsendx anonymize -j {args.workers}"
        results.add(copy_label, count, copy)
        results.add(proto_label, count, prototype)
        results.add("ours, engine only (in memory)", count, lambda _: [deid.deidentify_bytes(d) for d in datas] and None)
        results.add(path_label, count, command_path)
        results.add(probe_label, SERIES, command("probe", probe, [], cpus[-1]))
        results.add(one, count, command("cmd-1", tmp_path / "in", [], cpus[-1]))
        results.add(many, count, command("cmd-j", tmp_path / "in", ["-j", str(args.workers)], None))
        results.measure(delete_previous_round)
        results.print_rows()
        last = args.repeat - 1
        for name in ("path", "cmd-1", "cmd-j"):
            assert len(list((tmp_path / f"{name}-{last}").iterdir())) == count, "every input must give one output"

        # The real command's rate per file after its start-up, measured from outside: the
        # extra time that count - SERIES more files take, on the same core.
        marginal = (count - SERIES) / max(results.seconds(one) - results.seconds(probe_label), 1e-9)
        startup = results.seconds(probe_label) - SERIES / marginal
        copy_rate, proto = results.rate(copy_label), results.rate(proto_label)
        print("\nratios, wall (higher is faster)")
        for label, _, _ in results.rows:
            if label.startswith("ours") and label != probe_label:
                rate = results.rate(label)
                print(f"  {label:<44} {rate / proto:5.2f}x prototype   {rate / copy_rate:5.2f}x plain copy")
        print(f"  -j {args.workers} over 1 core: {results.rate(many) / results.rate(one):.2f}x wall, start-up included")
        print(f"\nmedsendx anonymize on one core: {marginal:.0f} files/s after a start-up of {startup:.2f} s "
              f"(Python, pydicom and numpy imports; paid once per run)")
        print(f"\ntarget >= {TARGET} files/s on one core, with durable writes (load now {os.getloadavg()[0]:.1f}):")
        verdicts = [
            (f"{path_label}, wall", results.rate(path_label)),
            (f"{path_label}, per CPU-second", 1000 / results.cpu_ms(path_label)),
            ("ours, medsendx anonymize, 1 core, per file after start-up", marginal),
        ]
        for label, rate in verdicts:
            print(f"  {label:<62} {rate:6.0f} files/s  {'MET' if rate >= TARGET else 'NOT MET'}")
        print(f"  (not a per-file rate: {count} files with the start-up included run at {results.rate(one):.0f} files/s)")
        print("  (per CPU-second = what one unshared core sustains; wall figures fall with the machine's load)")


if __name__ == "__main__":
    main()
