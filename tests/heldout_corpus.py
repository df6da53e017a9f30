"""A HELD-OUT burned-in corpus (issue 12): recall measured on data the cleaner was not tuned on.

The detector path's thresholds were tuned on tests/burned_corpus.py. This corpus is built the
same way (real pixels from ``../shared/data`` and pydicom-data, identity lines drawn with a
burner's pen that has no anti-aliasing) but everything a tuner could have fitted differs:

- other source images (other CT/MR slices and files, another CR, another ultrasound, a
  colour multi-frame ultrasound, secondary captures made from real slices);
- other fonts (DejaVu Serif, Sans Condensed/Bold, oblique/italic; Liberation Serif, Sans
  Narrow, Mono Bold) and sizes 9..28 px;
- other positions (top centre, left and right edge, bottom centre, mid-image over anatomy);
- other pen values: the largest *representable* stored value, a value just below the
  image's maximum, the representable minimum on MONOCHROME1 and just above the image's
  minimum, values above and below the display window but at neither extreme, 8-bit values
  (128, 200, 255) in 12/14/16-bit data, black (0) on bright texture, several colours on RGB;
- multi-frame objects with text on only some frames, mammography-like noise at other
  scales (fine grain, large blobs, 12 and 14 bit);
- another patient, in scanner formats ("DOE^JANE", "ID 12345678", "DOB 1961-02-03",
  "ACC A99887766"); headers silent, "NO" and "YES";
- and objects WITHOUT identity text (real slices, noise textures, a marker-only view) to
  count false blanking and false quarantine.

Every planted :class:`Line` keeps its own ink mask, so scoring is "every ink pixel of the
line blanked", as bench/redact.py scores the tuning corpus. Nothing here reads the cleaner.
The generator is deterministic (its own seed, 20260612, not the tuning corpus's).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from burned_corpus import _finish as _finish_header, _store, mammo_header, stored_frames  # the same header, write-back and frame access as the tuning corpus

SEED = 20260612
_DV = "/usr/share/fonts/truetype/dejavu/"
_LB = "/usr/share/fonts/truetype/liberation/"
# None of these is used by the tuning corpus (DejaVu Sans/Sans Mono, Liberation Sans/Mono Regular).
FONTS = {
    "dejavu-serif": _DV + "DejaVuSerif.ttf",
    "dejavu-serif-bold": _DV + "DejaVuSerif-Bold.ttf",
    "dejavu-serif-italic": _DV + "DejaVuSerif-Italic.ttf",
    "dejavu-serif-condensed": _DV + "DejaVuSerifCondensed.ttf",
    "dejavu-condensed": _DV + "DejaVuSansCondensed.ttf",
    "dejavu-condensed-bold": _DV + "DejaVuSansCondensed-Bold.ttf",
    "dejavu-condensed-oblique": _DV + "DejaVuSansCondensed-Oblique.ttf",
    "dejavu-bold": _DV + "DejaVuSans-Bold.ttf",
    "dejavu-oblique": _DV + "DejaVuSans-Oblique.ttf",
    "liberation-serif": _LB + "LiberationSerif-Regular.ttf",
    "liberation-serif-bold": _LB + "LiberationSerif-Bold.ttf",
    "liberation-serif-italic": _LB + "LiberationSerif-Italic.ttf",
    "liberation-narrow": _LB + "LiberationSansNarrow-Regular.ttf",
    "liberation-narrow-bold": _LB + "LiberationSansNarrow-Bold.ttf",
    "liberation-narrow-italic": _LB + "LiberationSansNarrow-Italic.ttf",
    "liberation-mono-bold": _LB + "LiberationMono-Bold.ttf",
}
MARKER_FONT = _DV + "DejaVuSans-Bold.ttf"

# The held-out patient (header and pixels); not the tuning corpus's.
PATIENT = {"PatientName": "DOE^JANE", "PatientID": "12345678", "PatientBirthDate": "19610203",
           "AccessionNumber": "A99887766", "InstitutionName": "ST BRIGID HOSPITAL"}  # fmt: skip
LINES = {
    "name": "DOE^JANE",
    "id": "ID 12345678",
    "dob": "DOB 1961-02-03",
    "acc": "ACC A99887766",
    "inst": "ST BRIGID HOSPITAL",
}
# Words an independent reader must not find in any output (substring match on its words).
PLANTED_WORDS = ["DOE", "JANE", "12345678", "1961", "99887766", "BRIGID"]

Box = tuple[int, int, int, int]


@dataclass
class Line:
    """One planted identity line: where its ink is, and what it is made of (for per-category misses)."""

    frame: int
    mask: np.ndarray  # H x W, True where this line's pen touched
    text: str
    font: str
    size: int
    pen: str  # pen category, e.g. "repr-max", "8-bit 200 in 14-bit", "colour green"
    position: str  # "top centre", "left edge", "over anatomy", ...


@dataclass
class Case:
    name: str
    ds: Dataset
    lines: list[Line]
    header: str = "silent"  # BurnedInAnnotation as planted: silent / NO / YES
    kind: str = ""  # CT, MR, CR, MG-like, US, SC, ...
    markers: list[tuple[int, Box]] = field(default_factory=list)  # (frame, box) laterality/view labels

    @property
    def text_free(self) -> bool:
        return not self.lines

    @property
    def ink(self) -> np.ndarray:
        """frames x H x W, True where any identity line was drawn (the tuning corpus's field)."""
        frames = int(self.ds.get("NumberOfFrames", 1) or 1)
        ink = np.zeros((frames, int(self.ds.Rows), int(self.ds.Columns)), dtype=bool)
        for line in self.lines:
            ink[line.frame] |= line.mask
        return ink

    def bytes(self) -> bytes:
        buf = io.BytesIO()
        self.ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()


def _font(font: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(FONTS.get(font, font), size)


def ink_of(shape: tuple[int, int], xy: tuple[int, int], text: str, font: str, size: int) -> np.ndarray:
    """Where the strokes of one line fall (same rule as burned_corpus.text_mask: no
    anti-aliasing, a pixel is ink or not)."""
    image = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(image).text(xy, text, font=_font(font, size), fill=255)
    return np.asarray(image) > 127


def _place(shape: tuple[int, int], text: str, font: str, size: int, position: str, row: int) -> tuple[int, int]:
    """Top-left corner of line number ``row`` of a block at ``position``."""
    h, w = shape
    left, top, right, bottom = _font(font, size).getbbox(text)
    tw, step = right - left, int(size * 1.35)
    if position == "top centre":
        return (w - tw) // 2, 3 + row * step
    if position == "left edge":
        return 1 - left, h // 3 + row * step
    if position == "right edge":
        return w - tw - 2 - left, 6 + row * step
    if position == "bottom centre":
        return (w - tw) // 2, h - 6 - (3 - row) * step
    if position == "bottom left":
        return 4, h - 6 - (3 - row) * step
    if position == "over anatomy":
        return (w - tw) // 2, h // 2 - step + row * step
    raise ValueError(position)


def _plant(pixels: np.ndarray, frame: int, keys: list[str], font: str, size: int, position: str,
           pen, pen_name: str, lines: list[Line]) -> None:  # fmt: skip
    """Burn the lines ``keys`` into ``pixels`` (H x W or H x W x 3) with ``pen``; record each line."""
    shape = pixels.shape[:2]
    for row, key in enumerate(keys):
        text = LINES[key]
        mask = ink_of(shape, _place(shape, text, font, size, position, row), text, font, size)
        assert mask.any(), (text, position)
        pixels[mask] = pen
        lines.append(Line(frame, mask, text, font, size, pen_name, position))


def _finish(ds: Dataset, header: str) -> None:
    _finish_header(ds, header, PATIENT)
    for keyword in ("WindowCenterWidthExplanation",):
        if keyword in ds:
            delattr(ds, keyword)


def _repr_range(ds: Dataset) -> tuple[int, int]:
    bits = int(ds.BitsStored)
    if int(ds.PixelRepresentation):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _case(ds: Dataset, pixels: np.ndarray, name: str, kind: str, header: str, lines: list[Line], markers=None) -> Case:
    _store(ds, pixels)
    _finish(ds, header)
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(SEED), name])  # the same corpus on every build
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return Case(name, ds, lines, header, kind, markers or [])


def _shared(data_dir: Path, folder: str, name: str) -> Dataset:
    return pydicom.dcmread(data_dir / folder / name)


# --- objects with planted identity lines ------------------------------------------------------


def ct_repr_max_top_centre(data_dir: Path) -> Case:
    """GE head CT (signed 16 bit, HU): the largest representable value, serif, top centre."""
    ds = _shared(data_dir, "ct-head-ge", "03.dcm")
    px, lines = ds.pixel_array.copy(), []
    pen = _repr_range(ds)[1]
    _plant(px, 0, ["name", "id"], "dejavu-serif", 16, "top centre", pen, "repr-max", lines)
    return _case(ds, px, "CT, top centre, DejaVu Serif 16, representable max", "CT", "silent", lines)


def ct_below_window_left_edge(data_dir: Path) -> Case:
    """GE head CT: pen -600 HU, below the 35/100 window (black in it), not an extreme stored
    value; left edge, condensed bold, small. Header NO."""
    ds = _shared(data_dir, "ct-head-ge", "24.dcm")
    px, lines = ds.pixel_array.copy(), []
    _plant(px, 0, ["name", "dob", "acc"], "dejavu-condensed-bold", 11, "left edge", -600, "below window (-600 HU)", lines)
    return _case(ds, px, "CT, left edge, DejaVu Sans Condensed Bold 11, below window", "CT", "NO", lines)


def ct_above_window_over_brain(data_dir: Path) -> Case:
    """GE head CT: pen 900 HU (white in the window, yet below the skull's values), over the
    brain, Liberation Serif 20. Header NO."""
    ds = _shared(data_dir, "ct-head-ge", "14.dcm")
    px, lines = ds.pixel_array.copy(), []
    _plant(px, 0, ["name", "id"], "liberation-serif", 20, "over anatomy", 900, "above window, mid-range (900 HU)", lines)
    return _case(ds, px, "CT, over brain, Liberation Serif 20, above window mid-range", "CT", "NO", lines)


def ct_byte128_narrow_italic(data_dir: Path) -> Case:
    """GE head CT: an 8-bit mid value (128) in 16-bit data, large Liberation Sans Narrow Italic,
    bottom centre."""
    ds = _shared(data_dir, "ct-head-ge", "19.dcm")
    px, lines = ds.pixel_array.copy(), []
    _plant(px, 0, ["name", "id", "dob"], "liberation-narrow-italic", 26, "bottom centre", 128, "8-bit 128 in 16-bit", lines)
    return _case(ds, px, "CT, bottom centre, Liberation Sans Narrow Italic 26, 8-bit 128", "CT", "silent", lines)


def ct_phantom_tiny(data_dir: Path) -> Case:
    """Philips phantom CT (12 bit): 9 px Liberation Sans Narrow at 4095, bottom left. Header YES."""
    ds = _shared(data_dir, "ct-phantom-philips", "12.dcm")
    px, lines = ds.pixel_array.copy(), []
    pen = _repr_range(ds)[1]
    _plant(px, 0, ["name", "id", "acc"], "liberation-narrow", 9, "bottom left", pen, "repr-max", lines)
    return _case(ds, px, "CT phantom, bottom left, Liberation Sans Narrow 9, 4095", "CT", "YES", lines)


def ct_signed14_byte200() -> Case:
    """pydicom CT 693 (signed, 14 bit stored): 8-bit 200 in 14-bit data, Liberation Mono Bold,
    right edge (top)."""
    ds = pydicom.dcmread(get_testdata_file("693_UNCR.dcm"))
    px, lines = ds.pixel_array.copy(), []
    _plant(px, 0, ["name", "id", "dob"], "liberation-mono-bold", 14, "right edge", 200, "8-bit 200 in 14-bit", lines)
    return _case(ds, px, "CT signed 14-bit, right edge, Liberation Mono Bold 14, 8-bit 200", "CT", "silent", lines)


def mr_low_range_below_max(data_dir: Path) -> Case:
    """GE MR edge slice (values 0..121): pen one below the image's max, DejaVu Sans Oblique 10,
    top centre. Header NO."""
    ds = _shared(data_dir, "mr-brain-ge", "00024.dcm")
    px, lines = ds.pixel_array.copy(), []
    pen = int(px.max()) - 1
    _plant(px, 0, ["name", "id"], "dejavu-oblique", 10, "top centre", pen, "just below image max", lines)
    return _case(ds, px, "MR low-range slice, top centre, DejaVu Sans Oblique 10, max-1", "MR", "NO", lines)


def mr_siemens_byte255_over_anatomy() -> Case:
    """Siemens abdominal MR (12 bit, values up to ~1100): 8-bit 255, tissue-like in this data,
    over the abdomen, Liberation Serif Italic 18."""
    ds = pydicom.dcmread(get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    px, lines = ds.pixel_array.copy(), []
    _plant(px, 0, ["name", "id"], "liberation-serif-italic", 18, "over anatomy", 255, "8-bit 255 in 12-bit", lines)
    return _case(ds, px, "MR abdomen, over anatomy, Liberation Serif Italic 18, 8-bit 255", "MR", "silent", lines)


def mr_siemens_probe_same_font_max_pen() -> Case:
    """Probe for the case above: same image, font, size and position, pen at 4095 instead of
    255 (isolates the pen value)."""
    ds = pydicom.dcmread(get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    px, lines = ds.pixel_array.copy(), []
    _plant(px, 0, ["name", "id"], "liberation-serif-italic", 18, "over anatomy", 4095, "repr-max", lines)
    return _case(ds, px, "probe: MR abdomen, over anatomy, Liberation Serif Italic 18, 4095", "MR", "silent", lines)


def mr_siemens_probe_byte255_over_air() -> Case:
    """Probe: the same 8-bit 255 pen, font and size, top centre over air (values near 0)
    instead of over the abdomen (isolates the background)."""
    ds = pydicom.dcmread(get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    px, lines = ds.pixel_array.copy(), []
    _plant(px, 0, ["name", "id"], "liberation-serif-italic", 18, "top centre", 255, "8-bit 255 in 12-bit", lines)
    return _case(ds, px, "probe: MR abdomen, top centre over air, Liberation Serif Italic 18, 8-bit 255", "MR", "silent", lines)


def mr_siemens_big_bold(data_dir: Path | None = None) -> Case:
    """Siemens MR: DejaVu Serif Bold 28 at 4095 (representable max), bottom centre. Header YES."""
    ds = pydicom.dcmread(get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    px, lines = ds.pixel_array.copy(), []
    pen = _repr_range(ds)[1]
    _plant(px, 0, ["name", "dob"], "dejavu-serif-bold", 28, "bottom centre", pen, "repr-max", lines)
    return _case(ds, px, "MR abdomen, bottom centre, DejaVu Serif Bold 28, 4095", "MR", "YES", lines)


def _cr(top: int, left: int, size: int = 760) -> tuple[Dataset, np.ndarray]:
    """The pydicom chest CR (1955x1841), cropped: the corpus must stay fast."""
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    return ds, ds.pixel_array[top : top + size, left : left + size].copy()


def cr_repr_min_top_centre() -> Case:
    """Chest CR (MONOCHROME1, 15 bit): pen 0, the representable minimum (white), DejaVu Sans
    Condensed 24, top centre over the lung apex."""
    (ds, px), lines = _cr(60, 200), []
    _plant(px, 0, ["name", "id", "dob"], "dejavu-condensed", 24, "top centre", 0, "repr-min (MONOCHROME1)", lines)
    return _case(ds, px, "CR MONOCHROME1, top centre, DejaVu Sans Condensed 24, 0", "CR", "silent", lines)


def cr_just_above_min_right_edge() -> Case:
    """Chest CR (MONOCHROME1): pen one above the image's minimum, Liberation Sans Narrow Bold
    13, right edge. Header NO."""
    (ds, px), lines = _cr(900, 1000), []
    pen = int(px.min()) + 1
    _plant(px, 0, ["name", "id", "acc", "dob"], "liberation-narrow-bold", 13, "right edge", pen, "just above image min (MONOCHROME1)", lines)
    return _case(ds, px, "CR MONOCHROME1, right edge, Liberation Sans Narrow Bold 13, min+1", "CR", "NO", lines)


def cr_bright_pen_over_lung() -> Case:
    """Chest CR (MONOCHROME1): pen at the crop's 2nd percentile (shown bright, like bone),
    not an extreme value, DejaVu Serif 20 over the lung."""
    (ds, px), lines = _cr(500, 250), []
    pen = int(np.percentile(px, 2))
    _plant(px, 0, ["name", "id"], "dejavu-serif", 20, "over anatomy", pen, "2nd percentile, not extreme (MONOCHROME1)", lines)
    return _case(ds, px, "CR MONOCHROME1, over lung, DejaVu Serif 20, 2nd-percentile pen", "CR", "silent", lines)


def _texture(rng: np.random.Generator, h: int, w: int, sigma: float, bits: int, grain: float) -> np.ndarray:
    """Mammography-like: correlated noise at scale ``sigma`` over a breast-shaped density
    (chest wall on the left), dark background."""
    from scipy import ndimage

    top = (1 << bits) - 1
    yy, xx = np.mgrid[0:h, 0:w]
    breast = ((xx / (0.85 * w)) ** 2 + ((yy - h / 2) / (0.5 * h)) ** 2) < 1
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), sigma) * (0.06 * top) * sigma ** 0.5
    texture += rng.normal(0, grain * top, (h, w))
    level = 0.45 * top
    pixels = np.where(breast, level + texture, 0.02 * top + rng.normal(0, 0.002 * top, (h, w)))
    return np.clip(pixels, 0, top - 8).astype(np.uint16)  # the top few values belong to pens


def _mammo_ds(bits: int, laterality: str, view: str) -> Dataset:
    top = (1 << bits) - 1
    return mammo_header(bits, laterality, view, window=(int(0.45 * top), int(0.3 * top)))


def _marker(px: np.ndarray, text: str, pen, position: str) -> Box:
    h, w = px.shape[:2]
    size = max(24, h // 30)
    font = ImageFont.truetype(MARKER_FONT, size)
    left, top, right, bottom = font.getbbox(text)
    xy = (w - (right - left) - 30, h - size - 40) if position == "bottom right" else (w - (right - left) - 30, 30)
    image = Image.new("L", (w, h), 0)
    ImageDraw.Draw(image).text(xy, text, font=font, fill=255)
    mask = np.asarray(image) > 127
    px[mask] = pen
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def mammo_fine_12bit(rng: np.random.Generator) -> Case:
    """Fine-grained 12-bit texture (sigma 1): DejaVu Serif Condensed 15 at 4095 over the
    texture mid-image; an "L MLO" marker. Header NO."""
    px = _texture(rng, 1000, 800, 1.0, 12, 0.03)
    ds, lines = _mammo_ds(12, "L", "MLO"), []
    _plant(px, 0, ["name", "id", "dob"], "dejavu-serif-condensed", 15, "over anatomy", 4095, "repr-max", lines)
    box = _marker(px, "L MLO", 4095, "bottom right")
    return _case(ds, px, "MG-like fine 12-bit texture, over texture, DejaVu Serif Condensed 15, 4095", "MG-like", "NO",
                 lines, [(0, box)])  # fmt: skip


def mammo_blobs_14bit_below_max(rng: np.random.Generator) -> Case:
    """Large-blob 14-bit texture (sigma 6): Liberation Mono Bold 22 at max-3 (just below the
    representable max), top centre over the texture; an "R CC" marker at the max."""
    px = _texture(rng, 1100, 880, 6.0, 14, 0.01)
    ds, lines = _mammo_ds(14, "R", "CC"), []
    pen = 16383 - 3
    _plant(px, 0, ["name", "acc"], "liberation-mono-bold", 22, "over anatomy", pen, "just below repr max", lines)
    box = _marker(px, "R CC", 16383, "top right")
    return _case(ds, px, "MG-like blob 14-bit texture, over texture, Liberation Mono Bold 22, max-3", "MG-like", "silent",
                 lines, [(0, box)])  # fmt: skip


def mammo_black_pen(rng: np.random.Generator) -> Case:
    """Medium texture (sigma 3), 14 bit: black text (pen 0) on the bright texture, DejaVu Sans
    Bold 12, left edge. Header YES."""
    px = _texture(rng, 900, 700, 3.0, 14, 0.02)
    ds, lines = _mammo_ds(14, "L", "CC"), []
    _plant(px, 0, ["name", "id", "dob"], "dejavu-bold", 12, "left edge", 0, "black (0) on bright texture", lines)
    return _case(ds, px, "MG-like medium 14-bit texture, left edge, DejaVu Sans Bold 12, black pen", "MG-like", "YES",
                 lines)  # fmt: skip


def mammo_pen_inside_texture(rng: np.random.Generator) -> Case:
    """Medium texture (sigma 2), 12 bit: pen at the texture's 99.5th percentile (bright, but
    values like it occur in the texture), Liberation Sans Narrow 16, over the texture."""
    px = _texture(rng, 900, 720, 2.0, 12, 0.02)
    ds, lines = _mammo_ds(12, "R", "MLO"), []
    pen = int(np.percentile(px[px > 0.3 * 4095], 99.5))
    _plant(px, 0, ["name", "id", "dob"], "liberation-narrow", 16, "over anatomy", pen, "texture 99.5th percentile", lines)
    return _case(ds, px, "MG-like 12-bit texture, over texture, Liberation Sans Narrow 16, 99.5th-percentile pen", "MG-like", "NO", lines)


def mr_multiframe_some_frames(data_dir: Path) -> Case:
    """Four GE MR slices as one multi-frame object; text on frames 1 and 3 only (frame 3 in
    9 px condensed oblique at the representable max)."""
    names = ["00019.dcm", "00020.dcm", "00023.dcm", "00024.dcm"]
    slices = [_shared(data_dir, "mr-brain-ge", n) for n in names]
    frames = np.stack([s.pixel_array for s in slices]).copy()
    ds, lines = slices[0], []
    pen, mid = _repr_range(ds)[1], int(frames[1].max()) + 40
    _plant(frames[1], 1, ["name", "id"], "liberation-serif", 12, "top centre", mid, "above frame max, mid-range", lines)
    _plant(frames[3], 3, ["name", "dob"], "dejavu-condensed-oblique", 9, "bottom left", pen, "repr-max", lines)
    ds.NumberOfFrames = len(frames)
    return _case(ds, frames, "MR multi-frame (4), text on frames 1 and 3 only, Liberation Serif 12 / DejaVu Condensed Oblique 9",
                 "MR multi-frame", "silent", lines)  # fmt: skip


def _rgb_from(gray: np.ndarray, tint=(1.0, 0.85, 0.7)) -> np.ndarray:
    g = gray.astype(float)
    g = (g - g.min()) / max(1.0, float(g.max() - g.min()))
    return np.stack([np.clip(g * t * 255, 0, 255) for t in tint], axis=-1).astype(np.uint8)


def _rgb_ds(ds: Dataset) -> Dataset:
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for keyword in ("WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope", "RescaleType", "SmallestImagePixelValue",
                    "LargestImagePixelValue", "PixelPaddingValue"):  # fmt: skip
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds


def sc_rgb_from_mr() -> Case:
    """A colour secondary capture of the Siemens MR: green DejaVu Serif 14 top left-ish (left
    edge) and cyan Liberation Sans Narrow 20 over the anatomy. Header NO."""
    ds = pydicom.dcmread(get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    px, lines = _rgb_from(ds.pixel_array), []
    _rgb_ds(ds)
    _plant(px, 0, ["name", "id"], "dejavu-serif", 14, "left edge", (0, 255, 0), "colour green", lines)
    _plant(px, 0, ["dob", "acc"], "liberation-narrow", 20, "over anatomy", (0, 200, 255), "colour cyan", lines)
    return _case(ds, px, "SC RGB from MR, green DejaVu Serif 14 + cyan Liberation Narrow 20", "SC RGB", "NO", lines)


def us_rgb_magenta() -> Case:
    """Real ultrasound (RGB, 240x320, has its own text): magenta DejaVu Sans Condensed Bold 10
    over the image's lower middle."""
    ds = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
    px, lines = ds.pixel_array.copy(), []
    _plant(px, 0, ["name", "id"], "dejavu-condensed-bold", 10, "over anatomy", (255, 0, 255), "colour magenta", lines)
    ds.PlanarConfiguration = 0
    return _case(ds, px, "US RGB (own text), over image, magenta DejaVu Sans Condensed Bold 10", "US RGB", "silent", lines)


def us_colour_multiframe() -> Case:
    """Real colour cine ultrasound: three frames (decoded to RGB), orange Liberation Serif Bold
    13 on the middle frame only, over the sector. Header YES."""
    ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
    frames = ds.pixel_array[[0, 14, 29]].copy()  # pydicom converts YBR_FULL_422 to RGB
    lines: list[Line] = []
    _plant(frames[1], 1, ["name", "id", "dob"], "liberation-serif-bold", 13, "over anatomy", (255, 140, 0), "colour orange", lines)
    ds.NumberOfFrames = 3
    ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
    for keyword in ("FrameTime", "FrameTimeVector"):
        if keyword in ds:
            delattr(ds, keyword)
    return _case(ds, frames, "US colour multi-frame (3), text on frame 1 only, orange Liberation Serif Bold 13", "US RGB multi-frame",
                 "YES", lines)  # fmt: skip


def sc_gray8_from_ct(data_dir: Path) -> Case:
    """An 8-bit greyscale secondary capture of a GE CT slice (windowed 40/400): pen 254,
    just below the 8-bit max, DejaVu Serif Italic 17, left edge. Header NO."""
    ds = _shared(data_dir, "ct-head-ge", "10.dcm")
    hu = ds.pixel_array.astype(float)
    px = np.clip((hu - (40 - 200)) / 400 * 255, 0, 253).astype(np.uint8)
    lines: list[Line] = []
    _plant(px, 0, ["name", "id", "inst"], "dejavu-serif-italic", 17, "left edge", 254, "8-bit 254 (just below max)", lines)
    _gray8_ds(ds)
    return _case(ds, px, "SC 8-bit grey from CT, left edge, DejaVu Serif Italic 17, 254", "SC 8-bit", "NO", lines)


def _gray8_ds(ds: Dataset) -> None:
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for keyword in ("WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope", "RescaleType", "PixelPaddingValue",
                    "SmallestImagePixelValue", "LargestImagePixelValue"):  # fmt: skip
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID


def ct_institution_serif_bold_top(data_dir: Path) -> Case:
    """Philips phantom CT: the institution and accession in DejaVu Serif Bold 12 at the
    representable max (4095), top centre; date below. Header silent."""
    ds = _shared(data_dir, "ct-phantom-philips", "20.dcm")
    px, lines = ds.pixel_array.copy(), []
    pen = _repr_range(ds)[1]
    _plant(px, 0, ["inst", "acc", "dob"], "dejavu-serif-bold", 12, "top centre", pen, "repr-max", lines)
    return _case(ds, px, "CT phantom, top centre, DejaVu Serif Bold 12, 4095", "CT", "silent", lines)


# --- objects without identity text --------------------------------------------------------------


def _plain(ds: Dataset, px: np.ndarray, name: str, kind: str, header: str = "silent", markers=None) -> Case:
    return _case(ds, px, name, kind, header, [], markers)


def text_free(data_dir: Path, rng: np.random.Generator) -> list[Case]:
    cases = []
    for folder, file, header in (("ct-head-ge", "05.dcm", "silent"), ("ct-head-ge", "27.dcm", "NO"),
                                 ("ct-phantom-philips", "25.dcm", "silent"), ("mr-brain-ge", "00017.dcm", "NO"),
                                 ("mr-brain-ge", "00022.dcm", "silent")):  # fmt: skip
        ds = _shared(data_dir, folder, file)
        cases.append(_plain(ds, ds.pixel_array.copy(), f"no text: {folder}/{file}, header {header}", "real slice", header))
    for file in ("693_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"):
        ds = pydicom.dcmread(get_testdata_file(file))
        cases.append(_plain(ds, ds.pixel_array.copy(), f"no text: pydicom {file}", "real slice"))
    ds, px = _cr(400, 500)
    cases.append(_plain(ds, px, "no text: chest CR crop (MONOCHROME1)", "real CR", "NO"))
    px = _texture(rng, 1000, 800, 2.0, 12, 0.02)
    cases.append(_plain(_mammo_ds(12, "R", "MLO"), px, "no text: MG-like 12-bit texture", "texture", "NO"))
    px = _texture(rng, 900, 720, 4.0, 14, 0.015)
    ds = _mammo_ds(14, "L", "CC")
    box = _marker(px, "L CC", 16383, "top right")
    cases.append(_plain(ds, px, "no text: MG-like 14-bit texture, L CC marker only", "texture + marker", "silent", [(0, box)]))
    ds = pydicom.dcmread(get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    px = _rgb_from(ds.pixel_array, (0.9, 1.0, 0.8))
    cases.append(_plain(_rgb_ds(ds), px, "no text: SC RGB from MR", "SC RGB", "silent"))
    return cases


def build(data_dir: Path, with_text: bool = True, without_text: bool = True) -> list[Case]:
    """The whole held-out corpus, in a fixed order (deterministic: fixed seed and files)."""
    rng = np.random.default_rng(SEED)
    cases: list[Case] = []
    if with_text:
        cases += [
            ct_repr_max_top_centre(data_dir),
            ct_below_window_left_edge(data_dir),
            ct_above_window_over_brain(data_dir),
            ct_byte128_narrow_italic(data_dir),
            ct_phantom_tiny(data_dir),
            ct_institution_serif_bold_top(data_dir),
            ct_signed14_byte200(),
            mr_low_range_below_max(data_dir),
            mr_siemens_byte255_over_anatomy(),
            mr_siemens_probe_same_font_max_pen(),
            mr_siemens_probe_byte255_over_air(),
            mr_siemens_big_bold(),
            mr_multiframe_some_frames(data_dir),
            cr_repr_min_top_centre(),
            cr_just_above_min_right_edge(),
            mammo_fine_12bit(rng),
            mammo_blobs_14bit_below_max(rng),
            mammo_black_pen(rng),
            mammo_pen_inside_texture(rng),
            cr_bright_pen_over_lung(),
            sc_rgb_from_mr(),
            sc_gray8_from_ct(data_dir),
            us_rgb_magenta(),
            us_colour_multiframe(),
        ]
    if without_text:
        cases += text_free(data_dir, np.random.default_rng(SEED + 1))
    return cases


# --- scoring (the corpus's own knowledge of the ink; nothing from the cleaner) ---------------


def changed_mask(data: bytes, ds: Dataset) -> np.ndarray:
    """frames x H x W: True where the output's stored value differs from the input's."""
    before = stored_frames(pydicom.dcmread(io.BytesIO(data)))
    after = stored_frames(ds)
    return np.any(after != before, axis=-1) if after.ndim == 4 else after != before


def line_blanked(changed: np.ndarray, after: np.ndarray, mask: np.ndarray) -> tuple[bool, float]:
    """Is every ink pixel of one line gone, and what share of its ink is?

    bench/redact.py's rule is "every ink pixel changed". That rule cannot see a blanking whose
    fill value equals the pen (black text, black fill): the ink pixels keep their value. So an
    unchanged ink pixel also counts as blanked when it holds the frame's one fill value and is
    connected, through pixels of that value, to blanked (changed) pixels; and the line counts
    as fully blanked only if its whole bounding box is then one uniform patch of the fill."""
    if changed[mask].all():
        return True, 1.0
    if not changed.any():
        return False, 0.0
    fills = after[changed]
    fills = np.unique(fills.reshape(len(fills), -1), axis=0)
    if len(fills) != 1:
        return False, float(changed[mask].mean())
    same = np.all(after == fills[0], axis=-1) if after.ndim == 3 else after == fills[0]
    from scipy import ndimage

    labels, _ = ndimage.label(same)
    touched = np.unique(labels[changed & same])
    covered = changed | (np.isin(labels, touched[touched > 0]) & same)
    rows, cols = np.nonzero(mask)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    return bool(covered[box].all()), float(covered[mask].mean())


def lines_left(case: Case, data: bytes, ds: Dataset) -> list[Line]:
    """The planted lines of ``case`` (input bytes ``data``) not fully blanked in output ``ds``."""
    changed, after = changed_mask(data, ds), stored_frames(ds)
    return [ln for ln in case.lines if not line_blanked(changed[ln.frame], after[ln.frame], ln.mask)[0]]


# --- an independent reader (tesseract; shares no code with the cleaner) ------------------------


def full_range_image(frame: np.ndarray) -> np.ndarray:
    """The frame's whole stored range stretched linearly to 8 bits (colour: luminance). Our
    own few lines, not medsendx.pixels.render: the oracle must not share the cleaner's code."""
    values = frame.astype(np.float64)
    if values.ndim == 3:
        values = values @ np.array([0.299, 0.587, 0.114])
    low, high = float(values.min()), float(values.max())
    return ((values - low) / max(high - low, 1.0) * 255).astype(np.uint8)


def pen_image(frame: np.ndarray, pens: np.ndarray) -> np.ndarray:
    """Black where the frame holds one of the planted pen values (greyscale: values; colour:
    RGB triples), white elsewhere: what a viewer shows with a window set on the pen."""
    if frame.ndim == 3:
        hit = np.zeros(frame.shape[:2], dtype=bool)
        for pen in pens.reshape(-1, 3):
            hit |= np.all(frame == pen, axis=-1)
    else:
        hit = np.isin(frame, pens)
    return np.where(hit, 0, 255).astype(np.uint8)


def pens_of(case: Case) -> dict[int, np.ndarray]:
    """Per frame, the pen values the planted lines carry in the input (from the corpus itself)."""
    frames = stored_frames(pydicom.dcmread(io.BytesIO(case.bytes())))
    out: dict[int, np.ndarray] = {}
    for line in case.lines:
        values = frames[line.frame][line.mask]
        values = np.unique(values.reshape(len(values), -1), axis=0)
        out[line.frame] = values if line.frame not in out else np.unique(np.concatenate([out[line.frame], values]), axis=0)
    return out


def read_words(image: np.ndarray) -> set[str]:
    """Tesseract (sparse text) on an 8-bit image and its inverse, enlarged 2x when small;
    upper-cased words of letters and digits."""
    import re

    import pytesseract

    words: set[str] = set()
    scale = 2 if max(image.shape) <= 1024 else 1
    for img in (image, 255 - image):
        big = Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.Resampling.BICUBIC)
        text = pytesseract.image_to_string(big, config="--psm 11")
        words |= {w for w in re.split(r"[^0-9A-Z]+", text.upper()) if w}
    return words


def planted_seen(words: set[str]) -> set[str]:
    return {p for p in PLANTED_WORDS if any(p in w for w in words)}


def reader_finds(case: Case, ds: Dataset, pens: dict[int, np.ndarray] | None = None) -> dict[int, set[str]]:
    """Per frame of ``ds``, the planted words tesseract reads in the full-range rendering and,
    for frames that had text, in the pen rendering."""
    pens = pens_of(case) if pens is None else pens
    found: dict[int, set[str]] = {}
    for index, frame in enumerate(stored_frames(ds)):
        seen = planted_seen(read_words(full_range_image(frame)))
        if index in pens:
            seen |= planted_seen(read_words(pen_image(frame, pens[index])))
        if seen:
            found[index] = seen
    return found


__all__ = ["Case", "Line", "PATIENT", "PLANTED_WORDS", "build", "stored_frames", "SEED", "reader_finds", "pens_of", "line_blanked", "changed_mask", "lines_left"]
