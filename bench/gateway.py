"""Benchmark: scanner -> gateway -> Orthanc, next to scanner -> Orthanc directly, same run.

The head CT series of ../shared/data/ct-head-ge is copied with new UIDs (and a synthetic
identity planted) until there are a few hundred objects. dcmtk ``storescu`` pushes them:

* direct:  storescu -> Orthanc (C-STORE), timed until storescu returns (Orthanc has stored all);
* gateway: storescu -> ``medsendx gateway`` (subprocess) -> Orthanc over DICOMweb, timed
  until Orthanc holds every object (the gateway de-identifies, triages, extracts QC
  features and compresses losslessly on the way).

Then the latency from receipt to delivery for one slice on an idle link, from the gateway's
own log timestamps ("object staged" -> "object delivered"), over several single pushes.

Targets (issue 6): gateway path within 1.5x of the direct path; receipt -> delivery < 1 s.

Usage: python bench/gateway.py [--copies N] [--latency-samples N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
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


def storescu(port: int, files: list[Path], aec: str) -> float:
    start = time.perf_counter()
    done = subprocess.run([dcmtk("storescu"), "-aec", aec, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"storescu failed: {done.stderr[-500:]}")
    return time.perf_counter() - start


def instance_count(orthanc: Orthanc) -> int:
    return int(orthanc.statistics()["CountInstances"])


def start_gateway(state: Path, orthanc: Orthanc, log: Path) -> tuple[subprocess.Popen, int, int]:
    dicom_port, http_port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), MEDSENDX_STATE_DIR=str(state),
               MEDSENDX_GATEWAY__BIND_ADDRESS="127.0.0.1", MEDSENDX_GATEWAY__MIN_FREE_BYTES="0")
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


def prepare_cpu_per_object(files: list[Path], work_root: Path) -> float:
    """Process CPU seconds per object for Pipeline.prepare, measured in this process."""
    from medsendx.config import Settings
    from medsendx.pipeline import Pipeline, _prefer_fast_jpegls_decoder

    _prefer_fast_jpegls_decoder()
    try:
        pipeline = Pipeline(Settings(state_dir=work_root / "state"))
        pipeline.prepare(files[0])  # warm-up: imports, codec set-up
        start = time.process_time()
        for f in files:
            pipeline.prepare(f)
        return (time.process_time() - start) / len(files)
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
        console.print(f"{n} objects per path ({raw / 1e6:.1f} MB), Orthanc on loopback, {os.cpu_count()} cores, "
                      f"load average {os.getloadavg()[0]:.1f} at start (other work on the machine slows both paths)")

        direct = storescu(orthanc.dicom_port, direct_files, orthanc.aet)
        assert instance_count(orthanc) == n, "Orthanc did not store every object"
        orthanc.reset()

        log = work / "gateway.log"
        proc, dicom_port, http_port = start_gateway(work / "state", orthanc, log)
        try:
            start = time.perf_counter()
            received = storescu(dicom_port, gateway_files, "MEDSENDX")
            while sent(http_port) < n:
                time.sleep(0.05)
            through = time.perf_counter() - start
            assert instance_count(orthanc) == n, "Orthanc did not store every object"
            wire = parse_prometheus_text(httpx.get(f"http://127.0.0.1:{http_port}/metrics").text)["medsendx_wire_bytes_total"]

            # latency on an idle link: one slice at a time, receipt -> delivery from the log
            latencies = []
            singles = make_copies(sources[:1], work / "single", args.latency_samples, "s")
            for i, single in enumerate(singles):
                before = sent(http_port)
                storescu(dicom_port, [single], "MEDSENDX")
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

    table = Table(title="scanner -> PACS, same objects, same Orthanc, same run")
    for col in ("path", "objects", "seconds", "objects/s", "MB/s (raw)", "ratio vs direct"):
        table.add_column(col, justify="right" if col != "path" else "left")
    table.add_row("storescu -> Orthanc (direct)", str(n), f"{direct:.2f}", f"{n / direct:.0f}", f"{raw / direct / 1e6:.1f}", "1.00x")
    table.add_row("storescu -> gateway -> Orthanc", str(n), f"{through:.2f}", f"{n / through:.0f}", f"{raw / through / 1e6:.1f}",
                  f"{through / direct:.2f}x")
    console.print(table)
    console.print(f"  of which storescu -> gateway (receipt, staged + fsync): {received:.2f} s")
    console.print(f"  bytes on the wire: {wire / 1e6:.1f} MB for {raw / 1e6:.1f} MB raw ({wire / raw:.2f} of raw)")
    console.print(f"  target: gateway path within 1.5x of direct -> {'MET' if through / direct <= 1.5 else 'NOT met'}")
    cpu = prepare_cpu_per_object(sources[:8], work_root=Path(tempfile.mkdtemp(prefix="medsendx-bench-cpu-")))
    console.print(f"  CPU per object in the pipeline's prepare step (de-identify, triage, QC features, JPEG-LS + "
                  f"verification), one process: {cpu * 1000:.0f} ms -> at most {os.cpu_count() / cpu:.0f} objects/s "
                  f"on {os.cpu_count()} cores")
    med = statistics.median(latencies)
    console.print(f"receipt -> delivery, one slice on an idle link: median {med * 1000:.0f} ms, "
                  f"max {max(latencies) * 1000:.0f} ms over {len(latencies)} pushes "
                  f"(target < 1 s -> {'MET' if max(latencies) < 1 else 'NOT met'})")


if __name__ == "__main__":
    main()
