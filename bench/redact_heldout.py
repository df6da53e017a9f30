"""bench/redact_heldout: recall of the pixel cleaner on a corpus it was NOT tuned on (issue 12).

Run as ``python3 bench/redact_heldout.py`` (or ``bench/run redact_heldout``). The corpus is
tests/heldout_corpus.py: real pixels, other fonts, sizes, positions, pen values, textures and
another patient than the tuning corpus (tests/burned_corpus.py), plus objects without text.
Every object goes through the default pixel cleaner (``PixelCleaner(PixelSettings())``, as
bench/redact.py runs it) and, in the same run, through the tesseract path (policy
redact-identifying with ocr_every_object). Printed:

- identity lines whose every ink pixel was blanked / all lines (recall), a quarantined
  object counting as held back (bench/redact.py's rule) and, apart, in released objects only;
- the lines missed, and misses per category (font, size, pen, position, kind, header);
- objects attested (BurnedInAnnotation NO / 113101) while planted ink is still there (must be 0);
- objects quarantined; text-free objects falsely changed, quarantined or attested;
- an independent reader: tesseract on our own full-range rendering (and on a rendering of the
  planted pen values) of every released output finds no planted word; on the inputs it does.

Pinned to one CPU core (ONNX Runtime and tesseract one thread). Recall is the point; times are
printed for orientation only (the machine is shared: see the load average).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "bench")]

import pydicom  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import heldout_corpus as hc  # noqa: E402
from medsendx.config import PixelSettings  # noqa: E402
from medsendx.pixels import PixelCleaner  # noqa: E402
from redact import one_core_quiet, timed  # noqa: E402  (bench/redact.py: one-core set-up; median wall/CPU of a call)

console = Console(width=200)


def run_cleaner(data: bytes, settings: PixelSettings):
    ds = pydicom.dcmread(io.BytesIO(data))
    result = PixelCleaner(settings)(ds, set(hc.PATIENT.values()))
    return ds, result


def score(case: hc.Case, data: bytes, ds, result) -> dict:
    """Per line: fully blanked or not (and the blanked share of its ink); object-level facts."""
    quarantined = not result.clean
    changed = None if quarantined else hc.changed_mask(data, ds)
    after = None if quarantined else hc.stored_frames(ds)
    per_line = []
    for line in case.lines:
        full, share = (True, 1.0) if quarantined else hc.line_blanked(changed[line.frame], after[line.frame], line.mask)
        per_line.append((line, full, share))
    ink_left = not quarantined and any(not full for _, full, _ in per_line)
    markers_kept = None
    if case.markers and not quarantined:
        markers_kept = all(not changed[f, y0:y1, x0:x1].any() for f, (x0, y0, x1, y1) in case.markers)
    return {
        "quarantined": quarantined,
        "reason": getattr(result, "reason", ""),
        "attest": bool(getattr(result, "attest", False)) and not quarantined,
        "lines": per_line,
        "ink_left": ink_left,
        "changed_any": bool(changed.any()) if changed is not None else False,
        "markers_kept": markers_kept,
    }


def size_bucket(size: int) -> str:
    return "9-11 px" if size <= 11 else "12-15 px" if size <= 15 else "16-20 px" if size <= 20 else "21-28 px"


CATEGORIES = {
    "font": lambda c, ln: ln.font,
    "size": lambda c, ln: size_bucket(ln.size),
    "pen": lambda c, ln: ln.pen,
    "position": lambda c, ln: ln.position,
    "kind": lambda c, ln: c.kind,
    "header": lambda c, ln: c.header,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-reader", action="store_true", help="skip the tesseract reader check (faster)")
    parser.add_argument("--no-tesseract-path", action="store_true", help="skip the former tesseract path")
    args = parser.parse_args()
    data_dir = one_core_quiet()
    started = time.perf_counter()
    cases = hc.build(data_dir)
    paths = {"detector": PixelSettings()}
    if not args.no_tesseract_path:
        paths["tesseract"] = PixelSettings(policy="redact-identifying", ocr_every_object=True)
    PixelCleaner(paths["detector"])(pydicom.dcmread(io.BytesIO(cases[-1].bytes())), set())  # load models outside the timings

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = Table(title=f"held-out corpus (seed {hc.SEED}), one core, load average {load:.1f}; ms wall / CPU")
    table.add_column("object", justify="left", max_width=58)
    for name in paths:
        for col in ("ms", "lines blanked", "outcome"):
            table.add_column(f"{col} ({name})", justify="right")
    if not args.no_reader:
        table.add_column("reader: input / output (detector)", justify="left")
    scores: dict[str, list[tuple[hc.Case, dict]]] = {name: [] for name in paths}
    reader_rows = []
    for case in cases:
        data = case.bytes()
        row = [case.name]
        outputs = {}
        for name, settings in paths.items():
            wall, cpu, (ds, result) = timed(lambda: run_cleaner(data, settings), 1)
            s = score(case, data, ds, result)
            scores[name].append((case, s))
            outputs[name] = (ds, s)
            got = sum(full for _, full, _ in s["lines"])
            if s["quarantined"]:
                outcome = "quarantine"
            elif s["attest"]:
                outcome = "ATTESTED, INK LEFT" if s["ink_left"] else "attested"
            else:
                outcome = "released" + (", ink left" if s["ink_left"] else "")
            if case.text_free and not s["quarantined"] and s["changed_any"]:
                outcome += ", changed"
            if s["markers_kept"] is False:
                outcome += ", marker hit"
            row += [f"{wall * 1e3:.0f} / {cpu * 1e3:.0f}", f"{got}/{len(case.lines)}" if case.lines else "-", outcome]
        if not args.no_reader:
            pens = hc.pens_of(case)
            before = hc.reader_finds(case, pydicom.dcmread(io.BytesIO(data)), pens) if case.lines else {}
            ds, s = outputs["detector"]
            after = {} if s["quarantined"] else hc.reader_finds(case, ds, pens)
            reader_rows.append((case, before, after, s["quarantined"]))
            fmt = lambda found: ",".join(sorted(set().union(*found.values()))) if found else "-"  # noqa: E731
            row.append(f"{fmt(before)} / {'(quarantined)' if s['quarantined'] else fmt(after)}")
        table.add_row(*row)
    console.print(table)

    for name in paths:
        rows = scores[name]
        lines = [(c, ln, full, share, s) for c, s in rows for ln, full, share in s["lines"]]
        total = len(lines)
        blanked = sum(full for *_, full, _, _ in lines)
        released = [(c, ln, full, share) for c, ln, full, share, s in lines if not s["quarantined"]]
        rel_ok = sum(full for _, _, full, _ in released)
        text_rows = [(c, s) for c, s in rows if not c.text_free]
        free_rows = [(c, s) for c, s in rows if c.text_free]
        console.rule(f"{name} path ({'PixelSettings()' if name == 'detector' else 'redact-identifying, ocr_every_object'})")
        console.print(
            f"identity lines fully blanked or held back: {blanked}/{total} ({blanked / total:.1%}); "
            f"in released objects: {rel_ok}/{len(released)} fully blanked"
        )
        attested_ink = [c.name for c, s in text_rows if s["attest"] and s["ink_left"]]
        console.print(f"objects attested (BurnedInAnnotation NO / 113101) with planted ink left: {len(attested_ink)} (must be 0) {attested_ink or ''}")
        kept_no = [c.name for c, s in text_rows if s["ink_left"] and not s["attest"] and c.header == "NO"]
        console.print(
            f"released with planted ink left whose input header said NO (the de-identifier removes that unbacked NO; "
            f"see tests/test_pixels_heldout.py): {len(kept_no)} {kept_no or ''}"
        )
        console.print(
            f"objects with text: {len(text_rows)}; quarantined {sum(s['quarantined'] for _, s in text_rows)}, "
            f"attested clean {sum(s['attest'] and not s['ink_left'] for _, s in text_rows)}, "
            f"released with ink left {sum(s['ink_left'] for _, s in text_rows)}"
        )
        fc = [c.name for c, s in free_rows if not s["quarantined"] and s["changed_any"]]
        fq = [c.name for c, s in free_rows if s["quarantined"]]
        console.print(
            f"text-free objects: {len(free_rows)}; falsely changed {len(fc)} {fc or ''}; falsely quarantined {len(fq)} "
            f"{[(c.name, s['reason']) for c, s in free_rows if s['quarantined']] or ''}; "
            f"attested clean (rightly) {sum(s['attest'] for _, s in free_rows)}"
        )
        marked = [(c, s) for c, s in rows if c.markers and not s["quarantined"]]
        console.print(f"laterality markers kept bit-exact: {sum(bool(s['markers_kept']) for _, s in marked)}/{len(marked)} released objects with markers")
        missed = [(c, ln, share, s) for c, ln, full, share, s in lines if not full]
        if missed:
            t = Table(title=f"{name} path: lines not fully blanked ({len(missed)})")
            for col in ("object", "frame", "text", "font", "size", "pen", "position", "ink blanked"):
                t.add_column(col)
            for c, ln, share, s in missed:
                t.add_row(c.name, str(ln.frame), ln.text, ln.font, str(ln.size), ln.pen, ln.position, f"{share:.0%}")
            console.print(t)
            t = Table(title=f"{name} path: misses per category (missed / planted; only values with a miss)")
            t.add_column("category")
            t.add_column("value")
            t.add_column("missed / lines", justify="right")
            for cat, key in CATEGORIES.items():
                counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
                for c, ln, full, _, _ in lines:
                    counts[key(c, ln)][1] += 1
                    counts[key(c, ln)][0] += not full
                for value, (m, n) in sorted(counts.items()):
                    if m:
                        t.add_row(cat, value, f"{m}/{n}")
            console.print(t)

    if reader_rows:
        console.rule("independent reader (tesseract, full-range and pen renderings; our code, not the cleaner's)")
        read_in = sum(bool(b) for c, b, _, _ in reader_rows if c.lines)
        leaks = [(c.name, sorted(set().union(*a.values()))) for c, _, a, _ in reader_rows if a]
        console.print(f"inputs with text where the reader finds a planted word: {read_in}/{sum(bool(c.lines) for c, *_ in reader_rows)} (the reader can fail)")
        console.print(f"released detector-path outputs where it finds a planted word: {len(leaks)} (must be 0) {leaks or ''}")
    console.print(f"whole run {time.perf_counter() - started:.0f} s wall")


if __name__ == "__main__":
    main()
