"""Benchmark: scanner -> gateway -> Orthanc, next to scanner -> Orthanc directly, same run.

The head CT series of ../shared/data/ct-head-ge is copied with new UIDs (and a synthetic
identity planted) until there are a few hundred objects. dcmtk ``storescu`` pushes them:

* direct:  storescu -> Orthanc (C-STORE);
* gateway: storescu -> ``medsendx gateway`` (subprocess) -> Orthanc over DICOMweb (the
  gateway de-identifies, triages, extracts QC features and compresses losslessly on the way).

"Time" is the same for both paths: from the moment storescu is started (it sends its first
byte within milliseconds) until Orthanc's own statistics count every object of the run as
stored. Next to wall time, the CPU seconds each program used in that window are printed
(storescu, the gateway with its worker processes, Orthanc), with the load average: on a
machine busy with other work, wall time says more about the neighbours than about us.

Then the latency from receipt to delivery for one slice on an idle link, from the gateway's
own log timestamps ("object staged" -> "object delivered"), over several single pushes.

Targets (issue 6): gateway path within 1.5x of the direct path; receipt -> delivery < 1 s.
Issue 12: with the pixel check on (the default: every slice screened for burned-in text,
printed at the start), the gateway still processes CT faster than a 20 Mbit/s link
carries it (what the gateway sends, compressed; printed after the table).

Usage: python bench/gateway.py [--copies N] [--latency-samples N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from medsendx.dicomio import project_data_dir  # noqa: E402
from medsendx.gateway.metrics import parse_prometheus_text  # noqa: E402
from medsendx.gateway.scanday import PATIENTS, plant_identity  # noqa: E402
from servers import Orthanc, dcmtk, free_port  # noqa: E402

console = Console(highlight=False, width=120)


def make_copies(sources: list[Path], folder: Path, copies: int, tag: str) -> list[Path]:
    files = []
    for c in range(copies):
        patient = PATIENTS[c % len(PATIENTS)]
        for i, src in enumerate(sources):
            files.append(plant_identity(src, folder / f"{tag}{c:03d}-{i:03d}.dcm", patient, new_uids_seed=f"{tag}-{c}"))
    return files


def storescu(port: int, files: list[Path], aec: str) -> subprocess.Popen:
    return subprocess.Popen([dcmtk("storescu"), "-aec", aec, "127.0.0.1", str(port), *map(str, files)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_storescu(proc: subprocess.Popen) -> None:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"storescu failed: {err[-500:]}")


def push(port: int, files: list[Path], aec: str) -> None:
    check_storescu(storescu(port, files, aec))


def tree_cpu(pid: int, descendants: bool = True) -> float:
    """CPU seconds (user + system) used so far by a process and all its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            if not descendants:
                break
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (storescu runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Run:
    wall: float  # storescu started -> Orthanc counts every object
    receipt: float  # storescu started -> storescu returned
    cpu: dict[str, float]  # CPU seconds per program over the run


def timed_push(port: int, files: list[Path], aec: str, orthanc: Orthanc, expected: int,
               others: dict[str, int]) -> Run:
    """Push ``files`` with storescu and wait until Orthanc has stored ``expected`` objects."""
    def sample() -> dict[str, float]:
        cpu = {}
        for name, pid in others.items():
            cpu[name] = tree_cpu(pid, descendants=False)
            cpu[f"{name} workers"] = tree_cpu(pid) - cpu[name]
        return cpu

    before = sample()
    scu_before = children_cpu()
    start = time.perf_counter()
    proc = storescu(port, files, aec)
    receipt = None
    while True:
        if receipt is None and proc.poll() is not None:
            receipt = time.perf_counter() - start
            check_storescu(proc)
        if instance_count(orthanc) >= expected:
            break
        time.sleep(0.02)
    wall = time.perf_counter() - start
    if receipt is None:
        check_storescu(proc)
        receipt = time.perf_counter() - start
    cpu = {"storescu": children_cpu() - scu_before}
    cpu.update({name: sec - before[name] for name, sec in sample().items() if sec - before[name] > 0.05})
    return Run(wall, receipt, cpu)


def instance_count(orthanc: Orthanc) -> int:
    return int(orthanc.statistics()["CountInstances"])


def start_gateway(state: Path, orthanc: Orthanc, log: Path) -> tuple[subprocess.Popen, int, int]:
    dicom_port, http_port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), MEDSENDX_STATE_DIR=str(state),
               MEDSENDX_GATEWAY__BIND_ADDRESS="127.0.0.1", MEDSENDX_GATEWAY__MIN_FREE_BYTES="0",
               MEDSENDX_GATEWAY__ALLOWED_CALLING_AETS="STORESCU",  # storescu's default calling AE title
               # the image path only: a study's results (timed by bench/segment.py
               # --results-only) would be built mid-run and counted as delivered objects
               MEDSENDX_GATEWAY__RESULTS_QUIET_SECONDS="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "medsendx", "gateway", "--dicom-port", str(dicom_port), "--http-port", str(http_port),
         "--to", f"dicomweb+{orthanc.dicomweb_url}"],
        env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).status_code == 200:
                return proc, dicom_port, http_port
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("gateway did not start: " + log.read_text()[-1000:])


def sent(http_port: int) -> int:
    page = httpx.get(f"http://127.0.0.1:{http_port}/metrics", timeout=5).text
    return int(parse_prometheus_text(page)["medsendx_sent_total"])


def log_times(log: Path, event: str) -> list[float]:
    """Timestamps (seconds) of one event in the gateway's JSON-line log."""
    times = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and f'"event": "{event}"' in line:
            entry = json.loads(line)
            stamp = time.strptime(entry["time"][:19], "%Y-%m-%dT%H:%M:%S")
            times.append(time.mktime(stamp) + int(entry["time"][20:23]) / 1000)
    return times


LINK_MBIT = 20  # the uplink the gateway must outpace with checking on (issue 12)

STAGES = ("stage raw + fsync", "de-identify", "parse", "triage", "QC features", "JPEG-LS + verify",
          "write + fsync + audit", "feature journal", "outbox enqueue")


def stage_profile(files: list[Path], work_root: Path) -> dict[str, tuple[float, float]]:
    """Per object, (wall ms, CPU ms) of each step the gateway takes, one at a time in this process."""
    import io

    import pydicom
    from pydicom.uid import JPEGLSLossless

    from medsendx.config import Settings
    from medsendx.dicomio import skip_value_validation
    from medsendx.fleet import extract_features
    from medsendx.gateway.staging import Staging
    from medsendx.pipeline import FeatureJournal, Pipeline, _prefer_fast_jpegls_decoder
    from medsendx.transcode import compress_lossless
    from medsendx.triage import triage_dataset

    _prefer_fast_jpegls_decoder()
    skip_value_validation()  # as the gateway's processes do
    totals = {name: [0.0, 0.0] for name in STAGES}
    try:
        settings = Settings(state_dir=work_root / "state")
        pipeline = Pipeline(settings)
        staging = Staging(work_root / "staging")
        journal = FeatureJournal(work_root / "journal.sqlite3")
        clock = [time.perf_counter(), time.process_time()]

        def lap(name: str) -> None:
            now = [time.perf_counter(), time.process_time()]
            totals[name][0] += now[0] - clock[0]
            totals[name][1] += now[1] - clock[1]
            clock[:] = now

        def finish(data: bytes) -> bytes:
            lap("de-identify")
            ds = pydicom.dcmread(io.BytesIO(data))
            lap("parse")
            record = triage_dataset(ds).to_dict()
            lap("triage")
            features = extract_features(ds, record)
            lap("QC features")
            out = compress_lossless(data, JPEGLSLossless, ds) or data
            lap("JPEG-LS + verify")
            finished.append(features)
            return out

        for _ in range(2):  # the first round warms imports and codecs up; the second is measured
            totals = {name: [0.0, 0.0] for name in STAGES}
            for f in files:
                finished: list = []
                clock[:] = [time.perf_counter(), time.process_time()]
                staged = staging.stage_bytes(f.read_bytes())
                lap("stage raw + fsync")
                outcome = pipeline.deidentifier.deidentify_file(staged, pipeline.out_dir, finish=finish)
                lap("write + fsync + audit")
                journal.add(outcome.sop_instance_uid, finished[0])
                lap("feature journal")
                pipeline.outbox.enqueue(outcome.output, sop_instance_uid=outcome.sop_instance_uid,
                                        study_instance_uid=outcome.study_instance_uid, destination="folder:/nowhere")
                lap("outbox enqueue")
                staging.remove(staged)
            journal.clear()
        return {name: (w / len(files) * 1000, c / len(files) * 1000) for name, (w, c) in totals.items()}
    finally:
        shutil.rmtree(work_root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=8, help="copies of the 28-slice series (default 8 = 224 objects)")
    parser.add_argument("--latency-samples", type=int, default=5)
    args = parser.parse_args()

    sources = sorted((project_data_dir() / "ct-head-ge").glob("*.dcm"))
    if not sources:
        sources = sorted((ROOT.parent / "shared" / "data" / "ct-head-ge").glob("*.dcm"))
    work = Path(tempfile.mkdtemp(prefix="medsendx-bench-gateway-"))
    orthanc = Orthanc(work / "orthanc").start()
    try:
        direct_files = make_copies(sources, work / "direct", args.copies, "d")
        gateway_files = make_copies(sources, work / "gateway", args.copies, "g")
        n = len(direct_files)
        raw = sum(p.stat().st_size for p in gateway_files)
        load_before = os.getloadavg()[0]
        console.print(f"{n} objects per path ({raw / 1e6:.1f} MB), Orthanc on loopback, {os.cpu_count()} cores, "
                      f"load average {load_before:.1f} at start (other work on the machine slows both paths)")
        from medsendx.config import load_settings

        pixels = load_settings(environ=dict(os.environ, MEDSENDX_STATE_DIR=str(work / "state"))).pixels
        console.print(f"pixel check in the gateway: policy {pixels.policy}, "
                      f"{'every object with pixels screened' if pixels.checks_every_object() else 'only objects the header puts at risk'}")

        direct = timed_push(orthanc.dicom_port, direct_files, orthanc.aet, orthanc, n, {"Orthanc": orthanc.proc.pid})
        orthanc.reset()

        log = work / "gateway.log"
        proc, dicom_port, http_port = start_gateway(work / "state", orthanc, log)
        try:
            time.sleep(1.0)  # let the worker processes finish starting (they are warmed at start)
            through = timed_push(dicom_port, gateway_files, "MEDSENDX", orthanc, n,
                                 {"gateway": proc.pid, "Orthanc": orthanc.proc.pid})
            assert instance_count(orthanc) == n, "Orthanc did not store every object"
            wire = parse_prometheus_text(httpx.get(f"http://127.0.0.1:{http_port}/metrics").text)["medsendx_wire_bytes_total"]

            # latency on an idle link: one slice at a time, receipt -> delivery from the log
            latencies = []
            singles = make_copies(sources[:1], work / "single", args.latency_samples, "s")
            for single in singles:
                before = sent(http_port)
                push(dicom_port, [single], "MEDSENDX")
                while sent(http_port) <= before:
                    time.sleep(0.01)
                time.sleep(0.05)
                staged = log_times(log, "object staged")[-1]
                delivered = log_times(log, "object delivered")[-1]
                latencies.append(delivered - staged)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    finally:
        orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()[0]

    ratio = through.wall / direct.wall
    table = Table(title="scanner -> PACS, same objects, same Orthanc, same run "
                        "(time = storescu started -> Orthanc has stored every object)")
    for col in ("path", "objects", "wall s", "objects/s", "MB/s (raw)", "ratio vs direct", "CPU s (per program)"):
        table.add_column(col, justify="right" if col != "path" else "left")
    for label, run, r in (("storescu -> Orthanc (direct)", direct, "1.00x"),
                          ("storescu -> gateway -> Orthanc", through, f"{ratio:.2f}x")):
        cpu = ", ".join(f"{name} {sec:.1f}" for name, sec in run.cpu.items())
        table.add_row(label, str(n), f"{run.wall:.2f}", f"{n / run.wall:.0f}", f"{raw / run.wall / 1e6:.1f}", r,
                      f"{sum(run.cpu.values()):.1f} ({cpu})")
    console.print(table)
    console.print(f"  storescu -> gateway alone (receipt: staged + fsync, scanner released): {through.receipt:.2f} s")
    console.print(f"  bytes on the wire: {wire / 1e6:.1f} MB for {raw / 1e6:.1f} MB raw ({wire / raw:.2f} of raw)")
    console.print(f"  CPU seconds, all programs: gateway path {sum(through.cpu.values()):.1f} vs direct "
                  f"{sum(direct.cpu.values()):.1f} ({sum(through.cpu.values()) / sum(direct.cpu.values()):.2f}x) on "
                  f"{os.cpu_count()} cores; load average {load_before:.1f} before, {load_after:.1f} after")
    cores = os.cpu_count() or 1
    floor = sum(through.cpu.values()) / cores
    console.print(f"  CPU floor of the gateway path on {cores} idle cores: {floor:.1f} s = {floor / direct.wall:.2f}x "
                  f"of the direct wall time (the direct path waits on Orthanc's disk, not on CPU)")
    console.print(f"  target: gateway path within 1.5x of direct (wall) -> {ratio:.2f}x "
                  f"{'MET' if ratio <= 1.5 else 'NOT met'}")
    # Issue 12: with the pixel check on, the gateway must still outpace a 20 Mbit/s uplink.
    link = LINK_MBIT * 1e6 / 8  # bytes/s
    link_rate = link / (wire / n)  # objects/s the link carries, at the bytes we actually send
    gateway_cpu = sum(sec for name, sec in through.cpu.items() if name.startswith("gateway"))
    capacity = cores * n / gateway_cpu  # objects/s the gateway's own CPU work allows on this machine's cores
    console.print(f"  vs a {LINK_MBIT} Mbit/s link: it carries {link_rate:.0f} CT objects/s as the gateway sends them "
                  f"({wire / raw:.2f} of raw), {link / (raw / n):.1f} objects/s uncompressed")
    console.print(f"    end to end the gateway path ran {n / through.wall:.0f} objects/s ({n / direct.wall:.0f} direct: Orthanc on "
                  f"the same cores bounds both) -> {n / through.wall / link_rate:.2f}x the link "
                  f"{'MET' if n / through.wall > link_rate else 'NOT met'}")
    console.print(f"    the gateway's own CPU: {gateway_cpu / n * 1000:.0f} ms per object -> {capacity:.0f} objects/s on {cores} "
                  f"cores = {capacity / link_rate:.2f}x the link {'MET' if capacity > link_rate else 'NOT met'} "
                  f"(CPU time rises with the machine's load; load average {load_after:.1f})")
    med = statistics.median(latencies)
    console.print(f"receipt -> delivery, one slice on an idle link: median {med * 1000:.0f} ms, "
                  f"max {max(latencies) * 1000:.0f} ms over {len(latencies)} pushes "
                  f"(target < 1 s -> {'MET' if max(latencies) < 1 else 'NOT met'})")

    stages = stage_profile(sources[:8], work_root=Path(tempfile.mkdtemp(prefix="medsendx-bench-stages-")))
    table = Table(title="per object, each step alone in one process (8 slices)")
    for col in ("step", "wall ms", "CPU ms"):
        table.add_column(col, justify="right" if col != "step" else "left")
    for name, (wall_ms, cpu_ms) in stages.items():
        table.add_row(name, f"{wall_ms:.1f}", f"{cpu_ms:.1f}")
    total_cpu = sum(c for _, c in stages.values())
    table.add_row("total", f"{sum(w for w, _ in stages.values()):.1f}", f"{total_cpu:.1f}")  # (de-identify: with the pixel check)
    console.print(table)
    console.print(f"  -> at most {os.cpu_count() * 1000 / total_cpu:.0f} objects/s of pipeline work on "
                  f"{os.cpu_count()} cores (receiving and delivering come on top); on one core {1000 / total_cpu:.0f} "
                  f"objects/s = {1000 / total_cpu / link_rate:.1f}x what a {LINK_MBIT} Mbit/s link carries")


if __name__ == "__main__":
    main()
