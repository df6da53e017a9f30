"""bench/screen_recall: recall of the pixel screen on random lines burned into real slices (issue 12).

Run as ``python3 bench/screen_recall.py`` (or ``bench/run screen_recall``); ``--seed 7 --seed 11``
and ``--count`` choose the draws, ``--save-misses DIR`` writes a PNG of every miss.

Where the screen (``medsendx.pixels.screen.candidate_regions``) finds nothing on a CT/MR
slice, the object is released unattested: a screen miss lets a name leave. Each draw of a
seed plants ONE line on a copy of a real slice of ``../shared/data`` (ct-head-ge,
ct-phantom-philips, mr-brain-ge; with ``--pydicom-data`` also the CT/MR files pydicom-data
ships): random text (a name, an ID, a date, an accession number), a random DejaVu or
Liberation font of tests/burned_corpus.py and tests/heldout_corpus.py (drawn with their
``ink_of``: a burner's pen, no anti-aliasing), size 8-22 px, a random position where the whole
line fits, and a pen at the slice's maximum, its minimum, 255 or 4095 (clamped to what Bits
Stored and Pixel Representation can hold). A draw is redrawn (same seed stream) when under
half of its ink differs from the slice beneath it (a pen over its own value draws nothing:
such a line cannot be read, in any window) or when the text does not fit the slice.

Found (the criterion): the bounding box of the line's *visible* ink (ink pixels whose stored
value changed) lies entirely inside the union of the screen's boxes, so the detector, which
looks only there, gets the whole line. Also printed: "ink covered", every visible ink pixel
inside the boxes (weaker: the line's corners may fall outside). The oracle is the planted
mask (Pillow), independent of the screen.

In the same run, baselines (the screen's module constants and helpers patched in this
process only; screen.py is not changed): "one way only" (the second look at strokes running
both ways off: the screen before it), "per tile only" (the 2 x 2 tile window density off:
MIN_WINDOW_PIXELS out of reach) and "no weak pens" (spike_values without the 255/4095 weak
excess and the always-examined maximum). Recall is printed as a ratio to each. False fires:
the screen on every real CT/MR slice without planted text (each one would cost a detector
run). Pinned to one core; times are for orientation (see the load average printed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import burned_corpus as bc  # noqa: E402
import heldout_corpus as hc  # noqa: E402
from medsendx.pixels import screen  # noqa: E402
from redact import one_core_quiet  # noqa: E402  (bench/redact.py: one core, quiet, the data folder)

DEFAULT_SEEDS = (7, 11, 23)
SHARED = ("ct-head-ge", "ct-phantom-philips", "mr-brain-ge")
# pydicom-data's uncompressed CT/MR (multi-frame files give one slice per frame).
PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "693_UNCR.dcm", "MR2_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm",
                 "emri_small.dcm", "eCT_Supplemental.dcm")  # fmt: skip
FONTS = {**bc.FONTS, **hc.FONTS}  # every DejaVu/Liberation face the two corpora use (name -> file)
PENS = ("max", "min", "255", "4095")
SIZES = (8, 22)
Box = tuple[int, int, int, int]


@dataclass
class Slice:
    name: str  # folder/file[#frame]
    pixels: np.ndarray  # stored values, H x W
    low: int  # what Bits Stored / Pixel Representation can hold (and the array's type)
    high: int


@dataclass
class Draw:
    seed: int
    index: int
    slice: Slice
    kind: str  # name / id / date / acc (the text itself is only in the PNG)
    text: str
    font: str
    size: int
    xy: tuple[int, int]
    pen: str
    value: int
    ink: np.ndarray  # visible ink: pixels of the line whose stored value changed
    box: Box  # bounding box of the visible ink


def load_slices(data_dir: Path, with_pydicom: bool) -> list[Slice]:
    """Every greyscale CT/MR slice of the shared data (and pydicom-data's), in a fixed order."""
    paths: list[tuple[str, Path]] = [(f"{sub}/{p.name}", p) for sub in SHARED for p in sorted((data_dir / sub).glob("*.dcm"))]
    if with_pydicom:
        from pydicom.data import get_testdata_file

        paths += [(f"pydicom-data/{name}", Path(get_testdata_file(name))) for name in PYDICOM_FILES]
    out: list[Slice] = []
    for name, path in paths:
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds or int(ds.get("SamplesPerPixel", 1)) != 1:
            continue  # (the phantom series holds one object without pixels)
        low, high = hc._repr_range(ds)
        arr = np.asarray(ds.pixel_array)
        info = np.iinfo(arr.dtype)
        low, high = max(low, int(info.min)), min(high, int(info.max))
        frames = [arr] if arr.ndim == 2 else list(arr)
        for k, frame in enumerate(frames):
            label = name if len(frames) == 1 else f"{name}#{k}"
            out.append(Slice(label, np.ascontiguousarray(frame.astype(frame.dtype.newbyteorder("="))), low, high))
    return out


_LETTERS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))


def random_text(rng: np.random.Generator) -> tuple[str, str]:
    """(kind, text) of a line a device burns in: synthetic, no real person's."""
    kind = str(rng.choice(["name", "id", "date", "acc"]))

    def word(lo: int, hi: int) -> str:
        return "".join(rng.choice(_LETTERS, int(rng.integers(lo, hi + 1))))

    digits = lambda n: "".join(str(d) for d in rng.integers(0, 10, n))  # noqa: E731
    if kind == "name":
        surname, given = word(3, 11), word(3, 9)
        style = int(rng.integers(3))
        text = [f"{surname}^{given}", f"{surname} {given}", f"{surname.title()}, {given.title()}"][style]
    elif kind == "id":
        text = str(rng.choice(["ID ", "MRN ", "PID: ", ""])) + digits(int(rng.integers(6, 11)))
    elif kind == "date":
        y, m, d = int(rng.integers(1925, 2025)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
        form = int(rng.integers(3))
        text = str(rng.choice(["DOB ", "", "Born "])) + [f"{d:02d}.{m:02d}.{y}", f"{y}-{m:02d}-{d:02d}", f"{m:02d}/{d:02d}/{y}"][form]
    else:
        text = str(rng.choice(["ACC ", "Acc# ", ""])) + word(1, 2) + digits(int(rng.integers(6, 10)))
    return kind, text


def pen_value(pen: str, s: Slice) -> int:
    value = {"max": int(s.pixels.max()), "min": int(s.pixels.min()), "255": 255, "4095": 4095}[pen]
    return min(max(value, s.low), s.high)


def draws(seed: int, count: int, slices: list[Slice]) -> Iterator[Draw]:
    """``count`` planted lines, the same ones for the same seed, slices and fonts."""
    rng = np.random.default_rng(seed)
    fonts = sorted(FONTS)
    index = 0
    while index < count:
        s = slices[int(rng.integers(len(slices)))]
        kind, text = random_text(rng)
        font, size, pen = str(rng.choice(fonts)), int(rng.integers(SIZES[0], SIZES[1] + 1)), str(rng.choice(PENS))
        left, top, right, bottom = hc._font(FONTS[font], size).getbbox(text)
        h, w = s.pixels.shape
        if right - left >= w - 2 or bottom - top >= h - 2:
            continue  # does not fit this slice: draw again
        xy = (int(rng.integers(-left, w - right)), int(rng.integers(-top, h - bottom)))
        ink = hc.ink_of(s.pixels.shape, xy, text, FONTS[font], size)
        value = pen_value(pen, s)
        visible = ink & (s.pixels != value)
        if not ink.any() or visible.sum() * 2 < ink.sum():
            continue  # mostly invisible (a pen over its own value): nobody can read it either
        rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
        box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
        yield Draw(seed, index, s, kind, text, font, size, xy, pen, value, visible, box)
        index += 1


def planted(d: Draw) -> np.ndarray:
    out = d.slice.pixels.copy()
    out[d.ink] = d.value
    return out


def covered_mask(shape: tuple[int, int], boxes: list[Box]) -> np.ndarray:
    covered = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        covered[y0:y1, x0:x1] = True
    return covered


def contrast(d: Draw) -> float:
    """How far the pen lies from what its visible ink covers (median, in stored values)."""
    return float(np.median(np.abs(d.slice.pixels[d.ink].astype(np.int64) - d.value)))


def judge(d: Draw, boxes: list[Box]) -> tuple[bool, bool]:
    """(found: the visible ink's bounding box inside the boxes' union, every visible ink pixel inside)."""
    covered = covered_mask(d.slice.pixels.shape, boxes)
    x0, y0, x1, y1 = d.box
    return bool(covered[y0:y1, x0:x1].all()), bool(covered[d.ink].all())


# --- the screen and its baselines (patched in this process only) ------------------------------


@contextlib.contextmanager
def patched(name: str, value: object) -> Iterator[None]:
    """``screen.<name>`` set to ``value`` while the block runs (the screen reads its
    constants and helpers at each call)."""
    saved = getattr(screen, name)
    setattr(screen, name, value)
    try:
        yield
    finally:
        setattr(screen, name, saved)


def _spike_values_without_weak_pens(plane: np.ndarray, edge_aware: bool = False, usual: tuple = (), top: bool = False
) -> list[int]:
    return _spike_values(plane, edge_aware=edge_aware)


_spike_values = screen.spike_values
VARIANTS: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "screen": contextlib.nullcontext,
    # the second look (strokes running both ways) off: the screen before it
    "one way only": lambda: patched("BOTH_EACH_PIXELS", 1 << 40),
    # the 2 x 2 window density off
    "per tile only": lambda: patched("MIN_WINDOW_PIXELS", 1 << 40),
    # spike_values without the weak excess for 255/4095 and the always-examined maximum
    "no weak pens": lambda: patched("spike_values", _spike_values_without_weak_pens),
}


def size_bucket(size: int) -> str:
    return "8 px" if size == 8 else "9-11 px" if size <= 11 else "12-15 px" if size <= 15 else "16-22 px"


BUCKETS: dict[str, Callable[[Draw], str]] = {
    "pen": lambda d: d.pen,
    "size": lambda d: size_bucket(d.size),
    "font": lambda d: d.font,
    "source": lambda d: d.slice.name.split("/")[0],
    "text": lambda d: d.kind,
}


def save_miss(directory: Path, d: Draw, boxes: list[Box]) -> Path:
    """A PNG of a miss: the planted slice at full range (left) and the pen's pixels (right);
    red: the visible ink's bounding box, green: the screen's boxes."""
    frame = planted(d).astype(np.float64)
    lo, hi = float(frame.min()), float(frame.max())
    full = ((frame - lo) * (255.0 / max(hi - lo, 1.0))).astype(np.uint8)
    pen = np.where(frame == d.value, 255, 0).astype(np.uint8)
    h, w = full.shape
    image = Image.new("RGB", (2 * w + 4, h), (40, 40, 40))
    for k, part in enumerate((full, pen)):
        image.paste(Image.fromarray(part).convert("RGB"), (k * (w + 4), 0))
    draw = ImageDraw.Draw(image)
    for k in (0, 1):
        ox = k * (w + 4)
        for x0, y0, x1, y1 in boxes:
            draw.rectangle((ox + x0, y0, ox + x1 - 1, y1 - 1), outline=(0, 220, 0))
        x0, y0, x1, y1 = d.box
        draw.rectangle((ox + x0 - 1, y0 - 1, ox + x1, y1), outline=(255, 0, 0))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"seed{d.seed}-{d.index:04d}.png"
    image.save(path)
    return path


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} (1 / 5 min)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, action="append", help=f"draw seed (repeatable; default {DEFAULT_SEEDS})")
    parser.add_argument("--count", type=int, default=300, help="lines per seed (default 300)")
    parser.add_argument("--pydicom-data", action="store_true", help="draw on pydicom-data's CT/MR slices too")
    parser.add_argument("--save-misses", type=Path, metavar="DIR", help="write a PNG of every miss of the screen here")
    parser.add_argument("--no-baselines", action="store_true", help="the screen only")
    args = parser.parse_args()
    seeds = tuple(args.seed or DEFAULT_SEEDS)
    data_dir = one_core_quiet()
    started = time.perf_counter()
    slices = load_slices(data_dir, args.pydicom_data)
    variants = {"screen": VARIANTS["screen"]} if args.no_baselines else VARIANTS
    print(f"{len(slices)} real slices; seeds {', '.join(map(str, seeds))}, {args.count} lines each; {load()}")

    results: dict[str, list[tuple[Draw, bool, bool]]] = {name: [] for name in variants}
    seconds: dict[str, float] = defaultdict(float)
    misses: list[tuple[Draw, list[Box]]] = []
    for seed in seeds:
        for d in draws(seed, args.count, slices):
            image = planted(d)
            for name, variant in variants.items():
                with variant():
                    t0 = time.perf_counter()
                    boxes = screen.candidate_regions(image)
                    seconds[name] += time.perf_counter() - t0
                found, ink = judge(d, boxes)
                results[name].append((d, found, ink))
                if name == "screen" and not found:
                    misses.append((d, boxes))

    print(f"\nrecall (found = the visible ink's bounding box inside the screen's boxes); {load()}")
    header = f"{'seed':>6} " + " ".join(f"{name:>22}" for name in variants)
    print(header)
    for seed in (*seeds, None):
        row = [f"{'all' if seed is None else seed:>6}"]
        base = None
        for name in variants:
            rows = [r for r in results[name] if seed is None or r[0].seed == seed]
            got = sum(found for _, found, _ in rows)
            ratio = "" if name == "screen" or not got else f" x{base / got:.3f}"
            base = got if name == "screen" else base
            row.append(f"{f'{got}/{len(rows)} {got / len(rows):.1%}{ratio}':>22}")
        print(" ".join(row))
    for name in variants:
        rows = results[name]
        print(f"  {name}: every visible ink pixel covered {sum(i for *_, i in rows)}/{len(rows)}; "
              f"screen time {seconds[name] / len(rows) * 1e3:.2f} ms a planted slice")  # fmt: skip
    print("  (x: the screen's recall over the baseline's, same draws)")

    print("\nrecall per bucket (found / lines)")
    print(f"{'bucket':>8} {'value':>26} " + " ".join(f"{name:>16}" for name in variants))
    for bucket, key in BUCKETS.items():
        values = sorted({key(d) for d, _, _ in results["screen"]})
        for value in values:
            cells = []
            for name in variants:
                rows = [found for d, found, _ in results[name] if key(d) == value]
                cells.append(f"{f'{sum(rows)}/{len(rows)}':>16}")
            print(f"{bucket:>8} {value:>26} " + " ".join(cells))

    print(f"\nfalse fires: the screen on every real CT/MR slice without planted text; {load()}")
    every = load_slices(data_dir, True)
    for name, variant in variants.items():
        with variant():
            fired = [s for s in every if screen.candidate_regions(s.pixels)]
        shared = sum(not s.name.startswith("pydicom-data/") for s in fired)
        n_shared = sum(not s.name.startswith("pydicom-data/") for s in every)
        print(f"  {name}: {len(fired)}/{len(every)} slices fired ({shared}/{n_shared} of ../shared/data, "
              f"{len(fired) - shared}/{len(every) - n_shared} of pydicom-data) {[s.name for s in fired] or ''}")  # fmt: skip

    print(f"\nmisses of the screen ({len(misses)}): seed, draw, slice, text kind/length, font, size, pen (value), "
          f"line's visible ink box x0,y0,x1,y1, ink pixels, contrast (median |pen - value beneath| over the "
          f"visible ink, stored values), screen boxes")  # fmt: skip
    for d, boxes in misses:
        print(f"  {d.seed} {d.index:4d} {d.slice.name} {d.kind}/{len(d.text)} {d.font} {d.size}px {d.pen} ({d.value}) "
              f"{d.box} {int(d.ink.sum())} {contrast(d):.0f} {boxes or 'none'}")  # fmt: skip
        if args.save_misses:
            save_miss(args.save_misses, d, boxes)
    if args.save_misses and misses:
        print(f"PNG renderings written for {len(misses)} misses (red: the line, green: the screen's boxes)")
    print(f"\nwhole run {time.perf_counter() - started:.0f} s wall; {load()}")


if __name__ == "__main__":
    main()
