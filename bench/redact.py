"""bench/redact: OCR + redaction + verification per screen capture and per ultrasound frame.

Run as ``python bench/redact.py [--repeat N]``. Everything runs pinned to one CPU core
(tesseract inherits the affinity and runs one thread). Printed next to baselines measured
in the same run: reading the file and decoding its pixels, and one plain
``pytesseract.image_to_string`` call on the same image (what a user would otherwise write,
without boxes, redaction or verification). Also: the per-slice cost of the at-risk check
on ordinary CT/MR slices, and the number of OCR calls they cause (target: none).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import pydicom  # noqa: E402
import pytesseract  # noqa: E402
from PIL import Image  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import synthetic_screens as ss  # noqa: E402
from medsendx.config import PixelSettings  # noqa: E402
from medsendx.dicomio import display_image, project_data_dir, read_dataset, stored_pixels  # noqa: E402
from medsendx.pixels import PixelCleaner, ocr, pixel_risk  # noqa: E402

console = Console(width=150)


def _cpu() -> float:
    t = os.times()  # children: the tesseract processes we waited for
    return t.user + t.system + t.children_user + t.children_system


def timed(fn, repeat: int) -> tuple[float, float]:
    """Median (wall seconds, CPU seconds incl. child processes) of ``repeat`` runs of ``fn()``.
    CPU time (10 ms ticks) is the fairer figure on a busy machine: it does not count
    waiting for a core."""
    walls, cpus = [], []
    for _ in range(repeat):
        start, cpu = time.perf_counter(), _cpu()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def case(name: str, data: bytes, frames: int, identity: set[str], repeat: int):
    def read():
        ds = pydicom.dcmread(io.BytesIO(data))
        return stored_pixels(ds)

    def plain_tesseract():
        ds = pydicom.dcmread(io.BytesIO(data))
        for index in range(frames):
            pytesseract.image_to_string(Image.fromarray(display_image(ds, index)))

    calls = []

    def cleaner():
        ds = pydicom.dcmread(io.BytesIO(data))
        result = PixelCleaner(PixelSettings())(ds, identity)
        calls.append(result.ocr_calls)
        if not result.clean:
            raise SystemExit(f"{name}: not cleaned ({result.reason})")
        ds.save_as(io.BytesIO(), enforce_file_format=True)

    return (name, frames, timed(read, repeat), timed(plain_tesseract, repeat), timed(cleaner, repeat), calls[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median reported)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    warnings.simplefilter("ignore")
    identity = set(ss.IDENTITY.values())

    cases = [
        ("dose screen 650x740 RGB", ss.saved_bytes(ss.dose_report_screen().ds), 1, identity),
        ("ultrasound 480x640 grey, 4 frames", ss.saved_bytes(ss.ultrasound_cine(frames=4).ds), 4, identity),
        ("ultrasound 480x640 RGB JPEG, 2 frames", ss.saved_bytes(ss.ultrasound_cine(frames=2, colour=True, lossy=True).ds), 2, identity),
    ]
    from pydicom.data import get_testdata_file

    real = get_testdata_file("US1_UNCR.dcm")
    if real:
        ds = pydicom.dcmread(real)
        header = {str(ds.get(k, "")) for k in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")}
        cases.append(("real US1_UNCR 480x640 RGB (pydicom-data)", Path(real).read_bytes(), 1, header))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = Table(title=f"OCR + redaction + verification, one core, median of {args.repeat} "
                        f"(load average {load:.1f}); ms as wall / CPU")  # fmt: skip
    for col in ("object", "read+decode", "plain tesseract", "cleaner", "OCR calls",
                "cleaner per frame", "x plain tesseract (CPU)", "x read (wall)"):  # fmt: skip
        table.add_column(col, justify="right" if col != "object" else "left")
    for name, data, frames, ident in cases:
        name, frames, read, plain, clean, calls = case(name, data, frames, ident, args.repeat)
        table.add_row(
            name, _ms(read), _ms(plain), _ms(clean), str(calls), _ms((clean[0] / frames, clean[1] / frames)),
            f"{clean[1] / plain[1]:.2f}", f"{clean[0] / read[0]:.0f}",
        )  # fmt: skip
    console.print(table)

    # Ordinary CT/MR slices: the at-risk check only, and no OCR at all.
    data_dir = project_data_dir()
    if not data_dir.is_absolute():
        data_dir = (ROOT / data_dir).resolve()
    paths = sorted((data_dir / "ct-head-ge").glob("*.dcm")) + sorted((data_dir / "mr-brain-ge").glob("*.dcm"))
    datasets = [read_dataset(p) for p in paths]
    settings = PixelSettings()
    calls = []
    real_ocr = ocr.ocr_image
    ocr.ocr_image = lambda image, bands=None: calls.append(1) or real_ocr(image, bands)  # count, do not replace
    rounds = 200
    start = time.perf_counter()
    for _ in range(rounds):
        flagged = [pixel_risk(ds, settings) for ds in datasets]
    check_s = (time.perf_counter() - start) / (rounds * len(datasets))
    ocr.ocr_image = real_ocr
    read_s = timed(lambda: [read_dataset(p, stop_before_pixels=True) for p in paths], 3)[0] / len(paths)
    console.print(
        f"CT/MR slices ({len(paths)} real files): at-risk check {check_s * 1e6:.1f} us per slice "
        f"({check_s / read_s:.4f} x reading its header, {read_s * 1e6:.0f} us); "
        f"flagged {sum(bool(f) for f in flagged)}, OCR calls {len(calls)}"
    )


def _ms(pair: tuple[float, float]) -> str:
    return f"{pair[0] * 1e3:.0f} / {pair[1] * 1e3:.0f}"


if __name__ == "__main__":
    main()
