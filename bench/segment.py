"""Benchmark: exact 1-D k-means triage against scikit-learn KMeans, on every slice of
../shared/data/ct-head-ge (512 x 512 head CT), in the same run.

What is timed: every slice is read and its pixel data decoded once, untimed. OURS is timed
from that decoded stored-pixel array plus the dataset's attributes to the label image:
reading the attributes (rescale, padding, reconstruction circle), excluding padding and
out-of-circle pixels, the histogram, the exact DP and a label for every pixel.
SCIKIT-LEARN is timed for ``KMeans(3).fit`` alone, on a float64 column of the same valid
pixels in HU, prepared for it untimed (so its conversion to HU and its masking are free:
the comparison favours scikit-learn). Both SSEs are computed by one float64 formula on the
same valid pixels. Printed: per-slice wall time and SSE for ours, sklearn n_init=1 and
n_init=10, the speed ratios and the SSE ratios (ours / sklearn; <= 1.0 means never worse),
CPU times next to wall times (sklearn may use several threads), and the load average. Then the
in-process cost of triage + overlay PNG per slice (what the gateway pays) and the whole
``medsendx segment`` command on one slice in a fresh interpreter (what a person waits).

Then the DICOM results (issue 14) of the same series next to its triage: keeping each
slice's header, record and label map (what ``prepare`` adds per object), building and
encoding (to bytes) the study's SEG (Deflated Explicit VR Little Endian, lossless, as the
outbox queues it when compression is on; and uncompressed), TID 1500 SR and KOS, per study
and per slice, and their ratio to the triage of the same slices.

Targets (issue 4): >= 100x faster than sklearn n_init=1; SSE ratio <= 1.0 on every slice;
triage + overlay < 100 ms per slice in-process; the command < 1 s. Issue 14: building and
encoding the results costs less than the triage of the same slices.

Usage: python bench/segment.py [--repeat N] [--data DIR] [--results-only]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import track  # noqa: E402
from rich.table import Table  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402

from medsendx.dicomio import read_dataset, stored_pixels  # noqa: E402
from medsendx.triage import DEFAULT_SEGMENTER, render_overlay, triage_dataset  # noqa: E402
from medsendx.triage.segmenter import frame_input, segment_stored_histogram  # noqa: E402

console = Console(highlight=False, width=150)


def sse(values: np.ndarray, labels: np.ndarray) -> float:
    values = values.astype(np.float64)
    return float(sum(((values[labels == c] - values[labels == c].mean()) ** 2).sum() for c in np.unique(labels)))


CPU_TIMES: dict[str, list[float]] = {"ours": [], "sk1": []}


def best_time(fn, repeat: int, cpu_key: str | None = None) -> tuple[float, object]:
    """Best wall time of ``repeat`` calls; the best CPU time (all threads of this process)
    is kept under ``cpu_key``: on a busy machine it is the fairer figure."""
    best, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    if cpu_key:
        CPU_TIMES[cpu_key].append(best_cpu)
    return best, result


def ours(ds, stored: np.ndarray) -> np.ndarray:
    """Our segmentation of a decoded slice: attributes, exclusion masks, histogram, exact
    DP, a label per pixel (-1 where excluded) -- what the gateway runs per slice."""
    return DEFAULT_SEGMENTER.segment(frame_input(ds, stored=stored)).labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timing repeats per slice (best is kept)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MEDSENDX_DATA_DIR", ROOT / ".." / "shared" / "data")))
    parser.add_argument("--results-only", action="store_true", help="only the DICOM results part (issue 14)")
    args = parser.parse_args()
    files = sorted((args.data / "ct-head-ge").glob("*.dcm"))
    if not files:
        console.print(f"no slices found under {args.data / 'ct-head-ge'}")
        return 1
    if args.results_only:
        warnings.filterwarnings("ignore")
        return dicom_results_bench(files, args.repeat)
    warnings.filterwarnings("ignore")  # sklearn's threadpool notices are not results
    load = os.getloadavg()[0]
    console.print(
        f"machine: {os.cpu_count()} CPUs, load average {load:.1f}"
        + (" (busy: wall times are inflated; CPU times are printed too)" if load > 1.5 else "")
    )
    probe = frame_input(read_dataset(files[0]))
    fast = segment_stored_histogram(probe, 3, "probe") is not None
    console.print(
        "ours timed from decoded stored pixels + attributes to the label image; sklearn timed for fit() "
        "alone on the prepared HU column of the same valid pixels. "
        + ("Path: compiled stored-value histogram (_ckmeans.c)." if fast else "Path: per-pixel numpy (no C compiler, or MEDSENDX_TRIAGE_NATIVE=0).")
    )

    table = Table(title=f"clustering k=3, {len(files)} slices of ct-head-ge (best of {args.repeat})")
    for col in ("slice", "pixels", "ours ms", "sk1 ms", "sk10 ms", "speed vs sk1", "speed vs sk10", "SSE ours/sk1", "SSE ours/sk10"):
        table.add_column(col, justify="right")
    speed1, speed10, ratio1, ratio10, our_times = [], [], [], [], []
    for path in track(files, description="clustering", console=console, transient=True):
        ds = read_dataset(path)
        stored = stored_pixels(ds)  # decoded once, untimed, for both methods
        pixels = frame_input(ds, stored=stored)
        values = pixels.values[pixels.valid]
        column = values.reshape(-1, 1).astype(np.float64)
        t_ours, label_image = best_time(lambda: ours(ds, stored), args.repeat, "ours")
        labels = label_image[pixels.valid]
        assert (label_image[~pixels.valid] == -1).all()
        t_sk1, km1 = best_time(lambda: KMeans(3, n_init=1, random_state=0).fit(column), max(1, args.repeat // 2), "sk1")
        t_sk10, km10 = best_time(lambda: KMeans(3, n_init=10, random_state=0).fit(column), 1)
        s_ours, s1, s10 = sse(values, labels), sse(values, km1.labels_), sse(values, km10.labels_)
        speed1.append(t_sk1 / t_ours)
        speed10.append(t_sk10 / t_ours)
        ratio1.append(s_ours / s1)
        ratio10.append(s_ours / s10)
        our_times.append(t_ours)
        table.add_row(
            path.name, f"{values.size:,}", f"{1000 * t_ours:.2f}", f"{1000 * t_sk1:.1f}", f"{1000 * t_sk10:.1f}",
            f"{speed1[-1]:.0f}x", f"{speed10[-1]:.0f}x", f"{ratio1[-1]:.6f}", f"{ratio10[-1]:.6f}",
        )
    console.print(table)
    console.print(
        f"ours: median {1000 * statistics.median(our_times):.2f} ms per 512x512 slice; "
        f"speed vs sklearn n_init=1: median {statistics.median(speed1):.0f}x (min {min(speed1):.0f}x), "
        f"vs n_init=10: median {statistics.median(speed10):.0f}x"
    )
    cpu_ours, cpu_sk1 = statistics.median(CPU_TIMES["ours"]), statistics.median(CPU_TIMES["sk1"])
    console.print(
        f"CPU time (all threads): ours median {1000 * cpu_ours:.2f} ms, sklearn n_init=1 median "
        f"{1000 * cpu_sk1:.1f} ms: {cpu_sk1 / cpu_ours:.0f}x"
    )
    verdict = "MET" if statistics.median(speed1) >= 100 else "NOT MET"
    console.print(
        f"target >= 100x faster (wall) than sklearn n_init=1, median over {len(files)} slices: "
        f"{statistics.median(speed1):.0f}x -> {verdict} (load average now {os.getloadavg()[0]:.1f})"
    )
    console.print(
        f"SSE ratio ours/sklearn: max {max(ratio1):.9f} (n_init=1), {max(ratio10):.9f} (n_init=10), "
        f"min {min(ratio1 + ratio10):.6f}; "
        f"never larger on any slice: {all(r <= 1 + 1e-12 for r in ratio1 + ratio10)}"
    )

    # in-process: what the gateway pays per slice (read excluded, PNG written)
    with tempfile.TemporaryDirectory() as tmp:
        datasets = [read_dataset(p) for p in files]
        triage_dataset(datasets[0])
        render_overlay(datasets[0], triage_dataset(datasets[0]), Path(tmp) / "warm.png")
        t_triage, t_total, cpu_total = [], [], []
        for i, ds in enumerate(datasets):
            start, cpu_start = time.perf_counter(), time.process_time()
            record = triage_dataset(ds)
            mid = time.perf_counter()
            render_overlay(ds, record, Path(tmp) / f"{i}.png")
            t_triage.append(mid - start)
            t_total.append(time.perf_counter() - start)
            cpu_total.append(time.process_time() - cpu_start)
        console.print(
            f"in-process per slice: triage (segmentation + quality + priority) median "
            f"{1000 * statistics.median(t_triage):.1f} ms; triage + overlay PNG median "
            f"{1000 * statistics.median(t_total):.1f} ms wall ({1000 * statistics.median(cpu_total):.1f} ms CPU), "
            f"max {1000 * max(t_total):.1f} ms (target < 100 ms)"
        )

        # the whole command, fresh interpreter each time, against `python -c pass` as baseline
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        cmd = [sys.executable, "-m", "medsendx", "segment", str(files[len(files) // 2]), "--out", str(Path(tmp) / "cmd.png")]
        runs, bare, cpu = [], [], []
        for _ in range(5):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            runs.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            bare.append(time.perf_counter() - start)
        console.print(
            f"`medsendx segment` one slice incl. interpreter start and PNG: median {statistics.median(runs):.3f} s, "
            f"best {min(runs):.3f} s, CPU {statistics.median(cpu):.3f} s (target < 1 s); "
            f"bare interpreter start {statistics.median(bare):.3f} s"
        )
    return dicom_results_bench(files, args.repeat)


def dicom_results_bench(files: list[Path], repeat: int) -> int:
    """SEG / SR / KOS of the series against its triage, in the same run (best of ``repeat``)."""
    import io

    import pydicom

    from medsendx.triage import dicom_results as R

    raw = [p.read_bytes() for p in files]
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in raw]
    for ds in datasets:
        ds.pixel_array  # decoded once, untimed: the pipeline shares one decode too
    n = len(datasets)
    kept: list = []

    def triage_all() -> None:
        kept.clear()
        for ds in datasets:
            maps: list = []
            record = triage_dataset(ds, label_maps=maps)
            kept.append((ds, record.to_dict(), np.stack(maps).astype(np.int8)))

    def keep_all() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for i, (ds, record, labels) in enumerate(kept):  # as the pipeline does (study_results.keep)
                R.save_triaged(Path(tmp) / f"{i}.npz", R.TriagedObject(R.header_of(ds), record, labels),
                               R.head_bytes(ds, raw[i]))

    def encoded(ds) -> int:
        return len(R.encode(ds))  # what the outbox writes (study_results.queue_study)

    sizes: dict[str, int] = {}

    def build(kind: str):
        objects = [R.TriagedObject(R.header_of(ds), record, labels) for ds, record, labels in kept]

        def run() -> None:
            if kind == "seg deflated":
                out = R.build_segmentations(objects, compress=True)
            elif kind == "seg raw":
                out = R.build_segmentations(objects, compress=False)
            elif kind == "sr":
                out = [R.build_report(objects)]
            else:
                out = [R.build_key_objects(objects)]
            sizes[kind] = sum(encoded(d) for d in out)
        return run

    triage_all()
    for kind in ("seg deflated", "seg raw", "sr", "kos"):  # warm: imports, codec start-up
        build(kind)()
    # interleaved rounds (each step once per round, best kept): the other engineers' load
    # drifts within minutes, and the ratios compare steps measured side by side
    steps = {"triage": triage_all, "keep": keep_all, **{k: build(k) for k in ("seg deflated", "seg raw", "sr", "kos")}}
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(repeat):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    t_triage, t_keep = best.pop("triage"), best.pop("keep")
    times = best
    table = Table(title=f"DICOM results of {n} slices of ct-head-ge (best of {repeat}; one study, one series)")
    for col in ("step", "per study ms", "per slice ms", "vs triage", "bytes"):
        table.add_column(col, justify="right")
    rows = [("triage (baseline)", t_triage, ""), ("keep header+record+labels", t_keep, "")]
    rows += [(f"build+encode {k}", t, f"{sizes[k]:,}") for k, t in times.items()]
    for name, t, size in rows:
        table.add_row(name, f"{1000 * t:.1f}", f"{1000 * t / n:.2f}", f"{t / t_triage:.2f}", size)
    console.print(table)
    results = times["seg deflated"] + times["sr"] + times["kos"]
    verdict = "MET" if results < t_triage else "NOT MET"
    console.print(
        f"results (SEG deflated + SR + KOS) {1000 * results:.0f} ms = {results / t_triage:.2f}x the triage "
        f"({1000 * t_triage:.0f} ms); with an uncompressed SEG "
        f"{(times['seg raw'] + times['sr'] + times['kos']) / t_triage:.2f}x; target < 1x -> {verdict}; "
        f"keeping per slice adds {t_keep / t_triage:.2f}x. Load average now {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
