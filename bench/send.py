"""Delivery throughput and bytes on the wire, against baselines measured in the same run.

    python bench/send.py            (about 1-2 minutes; starts its own Orthanc and moto_server)

1. Loopback throughput to Orthanc: dcmtk ``storescu`` (the baseline a PACS admin would use)
   and MedSendX over DIMSE and DICOMweb, compressed (default) and not; to moto S3: boto3
   ``put_object`` per file (baseline) and MedSendX. Same files, same Orthanc, same run.
2. A 4G-like link: the fault proxy with a bandwidth cap and a reset every ~2 MB. Goodput
   (raw scan bytes delivered per second) against the cap and against storescu on the same
   capped link; wire bytes per delivered byte against the compressed size.
3. Bytes on the wire for ../shared/data/ct-head-ge against its raw size.

Timed spans include enqueueing (hash + link into the outbox spool) and delivery, i.e. what
``medsendx send`` does after de-identification.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import pydicom  # noqa: E402

from faultproxy import FaultProxy  # noqa: E402
from medsendx.config import load_settings  # noqa: E402
from medsendx.delivery import Deliverer  # noqa: E402
from medsendx.dicomio import project_data_dir  # noqa: E402
from medsendx.outbox import Outbox  # noqa: E402
from medsendx.transcode import prepare_for_wire  # noqa: E402
from servers import Orthanc, S3Server, dcmtk  # noqa: E402

CAP = 512 * 1024  # bytes/second on the simulated uplink
RESET_EVERY = 2 * 1024 * 1024  # a reset somewhere in every ~2 MB crossing the link
ROUNDS = 2  # best of N for the loopback runs


def data_files() -> list[Path]:
    root = Path(os.environ.get("MEDSENDX_DATA_DIR", ROOT / ".." / "shared" / "data"))
    if not (root / "ct-head-ge").is_dir():
        root = ROOT / project_data_dir()
    return sorted((root / "ct-head-ge").glob("*.dcm"))


def mb(n: float) -> str:
    return f"{n / 1e6:7.2f} MB"


def rate(n: float, seconds: float) -> str:
    return f"{n / seconds / 1e6:7.2f} MB/s"


class Runner:
    def __init__(self, files: list[Path], work: Path) -> None:
        self.files = files
        self.work = work
        self.raw = sum(p.stat().st_size for p in files)
        self.headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]

    def medsendx(self, destination: str, *, compress: bool = True, s3: dict | None = None, **outbox) -> tuple[float, Outbox]:
        """Enqueue copies of the files and deliver them all; returns (seconds, outbox)."""
        run = self.work / uuid.uuid4().hex[:8]
        inbox = run / "in"
        inbox.mkdir(parents=True)
        copies = [Path(shutil.copy(p, inbox / p.name)) for p in self.files]
        settings = load_settings(overrides={"state_dir": str(run / "state"), "outbox": {
            "compress": compress, "backoff_base_seconds": 0.05, "backoff_cap_seconds": 1.0, **outbox},
            "s3": s3 or {}}, environ={})
        box = Outbox(settings.outbox_db)
        start = time.perf_counter()
        for path, ds in zip(copies, self.headers):
            box.enqueue(path, sop_instance_uid=ds.SOPInstanceUID, study_instance_uid=ds.StudyInstanceUID,
                        destination=destination)
        deliverer = Deliverer(box, settings)
        while True:
            deliverer.run_once()
            counts = box.counts()
            if counts["queued"] == 0 and counts["sending"] == 0:
                break
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        deliverer.close()
        if counts["sent"] != len(self.files):
            raise SystemExit(f"delivery incomplete: {counts}")
        return elapsed, box

    def best(self, fn, reset) -> float:
        times = []
        for _ in range(ROUNDS):
            reset()
            times.append(fn())
        return min(times)


def main() -> None:
    files = data_files()
    work = Path(tempfile.mkdtemp(prefix="medsendx-bench-send-"))
    orthanc = Orthanc(work / "orthanc").start()
    s3 = S3Server().start()
    try:
        run(files, work, orthanc, s3)
    finally:
        orthanc.stop()
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(files: list[Path], work: Path, orthanc: Orthanc, s3: S3Server) -> None:
    r = Runner(files, work)
    compressed = sum(len(prepare_for_wire(p).data) for p in files)
    print(f"data: ../shared/data/ct-head-ge, {len(files)} files, {mb(r.raw)} raw, "
          f"{mb(compressed)} JPEG-LS lossless ({compressed / r.raw:.1%})\n")

    storescu = dcmtk("storescu")

    def run_storescu(port: int, subset: list[Path] | None = None) -> float:
        start = time.perf_counter()
        subprocess.run([storescu, "-aec", orthanc.aet, "127.0.0.1", str(port), *map(str, subset or files)],
                       check=True, capture_output=True)
        return time.perf_counter() - start

    def check_orthanc(expected: int) -> None:
        count = len(orthanc.instance_ids())
        if count != expected:
            raise SystemExit(f"Orthanc holds {count} instances, expected {expected}")

    # --- 1. loopback throughput ------------------------------------------------------------
    print("1. loopback throughput (raw scan bytes delivered per second, best of "
          f"{ROUNDS}; ratio = baseline time / MedSendX time, >= 1 means at least as fast)")
    base = r.best(lambda: run_storescu(orthanc.dicom_port), orthanc.reset)
    check_orthanc(len(files))
    print(f"   {'dcmtk storescu -> Orthanc (baseline)':46s} {base:6.2f} s {rate(r.raw, base)}")
    dimse = f"dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    web = "dicomweb+" + orthanc.dicomweb_url
    for label, url, compress in (
        ("MedSendX DIMSE, JPEG-LS on the wire", dimse, True),
        ("MedSendX DIMSE, uncompressed", dimse, False),
        ("MedSendX DICOMweb, JPEG-LS on the wire", web, True),
        ("MedSendX DICOMweb, uncompressed", web, False),
    ):
        t = r.best(lambda: r.medsendx(url, compress=compress)[0], orthanc.reset)
        check_orthanc(len(files))
        print(f"   {label:46s} {t:6.2f} s {rate(r.raw, t)}   x{base / t:5.2f} vs storescu")

    client = s3.client()

    def fresh_bucket() -> str:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        client.create_bucket(Bucket=name)
        return name

    def boto3_baseline() -> float:
        bucket = fresh_bucket()
        start = time.perf_counter()
        for path in files:
            client.put_object(Bucket=bucket, Key=path.name, Body=path.read_bytes())
        return time.perf_counter() - start

    s3_base = r.best(boto3_baseline, lambda: None)
    print(f"   {'boto3 put_object -> moto S3 (baseline)':46s} {s3_base:6.2f} s {rate(r.raw, s3_base)}")
    s3_settings = {"endpoint_url": s3.endpoint_url, "access_key_id": s3.access_key,
                   "secret_access_key": s3.secret_key, "region": s3.region}
    for label, compress in (("MedSendX S3 (SSE, SHA-256), JPEG-LS", True), ("MedSendX S3 (SSE, SHA-256), uncompressed", False)):
        t = r.best(lambda: r.medsendx(f"s3://{fresh_bucket()}/hq", compress=compress, s3=s3_settings)[0], lambda: None)
        print(f"   {label:46s} {t:6.2f} s {rate(r.raw, t)}   x{s3_base / t:5.2f} vs boto3")

    # --- 2. a capped, resetting link ----------------------------------------------------------
    print(f"\n2. through the fault proxy: cap {CAP / 1024:.0f} KB/s uplink, a reset every ~{RESET_EVERY / 1e6:.1f} MB")
    subset = files[:6]
    subset_raw = sum(p.stat().st_size for p in subset)
    orthanc.reset()
    proxy = FaultProxy(("127.0.0.1", orthanc.dicom_port), bandwidth=CAP).start()
    try:
        t_base = run_storescu(proxy.port, subset)
    finally:
        proxy.stop()
    base_goodput = subset_raw / t_base
    print(f"   {'storescu, same cap, no resets (baseline)':46s} goodput {rate(subset_raw, t_base)} "
          f"= x{base_goodput / CAP:4.2f} the cap  ({len(subset)} files)")

    orthanc.reset()
    proxy = FaultProxy(("127.0.0.1", orthanc.http_port), bandwidth=CAP, reset_every=RESET_EVERY, seed=7).start()
    try:
        t, box = r.medsendx(f"dicomweb+http://127.0.0.1:{proxy.port}/dicom-web",
                            batch_max_bytes=256 * 1024, read_timeout_seconds=30.0)
    finally:
        proxy.stop()
    check_orthanc(len(files))
    goodput = r.raw / t
    print(f"   {'MedSendX DICOMweb, JPEG-LS, with resets':46s} goodput {rate(r.raw, t)} = x{goodput / CAP:4.2f} the cap "
          f"(target >= 2), x{goodput / base_goodput:4.2f} storescu's")
    print(f"   resets: {proxy.resets}; uplink bytes {mb(proxy.bytes_up)} for {mb(compressed)} compressed "
          f"= {proxy.bytes_up / compressed:.3f} wire bytes per compressed byte delivered (target <= 1.15)")
    stats = box.stats()
    print(f"   retried attempts: {stats['retries']}")

    # --- 3. bytes on the wire for ct-head-ge --------------------------------------------------
    orthanc.reset()
    proxy = FaultProxy(("127.0.0.1", orthanc.http_port)).start()  # a clean link: counts bytes only
    try:
        r.medsendx(f"dicomweb+http://127.0.0.1:{proxy.port}/dicom-web")
    finally:
        proxy.stop()
    check_orthanc(len(files))
    print(f"\n3. bytes on the wire for ct-head-ge (DICOMweb, HTTP and multipart included): {mb(proxy.bytes_up)} "
          f"of {mb(r.raw)} raw = {proxy.bytes_up / r.raw:.1%} (target <= 25%)")


if __name__ == "__main__":
    main()
