"""Synthetic screen captures and ultrasound frames with planted identities, drawn with real
fonts (Debian ``fonts-dejavu-core``), for the pixel cleaner's tests and benchmark.

Every builder returns a :class:`Planted`: the DICOM dataset (file meta included, ready to
save), and where each piece of text was drawn, split into what identifies the patient and
what must survive (dose values, scale labels). Text positions come from Pillow's own
``textbbox``, so tests can check pixels without trusting OCR.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    generate_uid,
)

FONT_DIR = "/usr/share/fonts/truetype/dejavu"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ULTRASOUND_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
ULTRASOUND = "1.2.840.10008.5.1.4.1.1.6.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
XA_IMAGE = "1.2.840.10008.5.1.4.1.1.12.1"

# The planted patient, in the header as the scanner wrote it.
IDENTITY = {
    "PatientName": "MCALLISTER^FIONA",
    "PatientID": "48213977",
    "PatientBirthDate": "19610722",
    "AccessionNumber": "ACC55102",
}
# Words that must not be readable anywhere in a cleaned image.
PLANTED_WORDS = ["MCALLISTER", "FIONA", "48213977", "ACC55102", "1961", "2024"]


def font(size: int, mono: bool = False) -> ImageFont.FreeTypeFont:
    name = "DejaVuSansMono.ttf" if mono else "DejaVuSans.ttf"
    return ImageFont.truetype(f"{FONT_DIR}/{name}", size)


Box = tuple[int, int, int, int]


@dataclass
class Planted:
    ds: Dataset
    identifying: list[Box] = field(default_factory=list)  # boxes of text that must be blanked
    keep: dict[str, Box] = field(default_factory=dict)  # text that must survive -> its box
    frames: list[np.ndarray] = field(default_factory=list)  # the pixels as drawn
    ink: list[np.ndarray] = field(default_factory=list)  # per frame: True where identifying text was drawn


class Canvas:
    """A Pillow image that records where text went."""

    def __init__(self, image: Image.Image) -> None:
        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.ink = Image.new("L", image.size, 0)
        self.identifying: list[Box] = []
        self.keep: dict[str, Box] = {}

    def text(self, xy: tuple[int, int], text: str, size: int, fill, *, identifying: bool = False, keep: bool = False,
             mono: bool = False) -> Box:
        f = font(size, mono)
        self.draw.text(xy, text, font=f, fill=fill)
        box = tuple(int(v) for v in self.draw.textbbox(xy, text, font=f))
        if identifying:
            ImageDraw.Draw(self.ink).text(xy, text, font=f, fill=255)
            self.identifying.append(box)  # type: ignore[arg-type]
        if keep:
            self.keep[text] = box  # type: ignore[assignment]
        return box  # type: ignore[return-value]


def base_dataset(sop_class: str, modality: str, *, identity: dict[str, str] | None = None, **extra) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = "20240314"
    ds.Manufacturer = "ACME MEDICAL"
    ds.ManufacturerModelName = "SCREENMAKER 1"
    for keyword, value in (IDENTITY if identity is None else identity).items():
        setattr(ds, keyword, value)
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def set_pixels(ds: Dataset, frames: list[np.ndarray], photometric: str, bits_stored: int) -> None:
    arr = np.stack(frames) if len(frames) > 1 else frames[0]
    ds.set_pixel_data(arr, photometric, bits_stored, generate_instance_uid=False)


def jpeg_baseline(ds: Dataset, frames: list[np.ndarray]) -> None:
    """Encode RGB frames as lossy JPEG baseline (YBR_FULL_422), as many ultrasound carts do."""
    blobs = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=95, subsampling=1)  # 4:2:2
        blobs.append(buf.getvalue())
    ds.PixelData = encapsulate(blobs)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.LossyImageCompression = "01"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit


def dose_report_screen(*, burned_in: str | None = None) -> Planted:
    """A ~650x740 RGB CT dose page saved as Secondary Capture, white text on dark blue."""
    image = Image.new("RGB", (650, 740), (12, 18, 40))
    c = Canvas(image)
    white, grey, yellow = (235, 235, 235), (170, 175, 190), (250, 220, 90)
    c.text((24, 16), "Dose Report", 22, white, keep=True)
    rows = [("Patient Name:", "MCALLISTER, FIONA"), ("Patient ID:", "48213977"), ("DOB:", "1961-07-22"),
            ("Accession:", "ACC55102"), ("Exam:", "03/14/2024")]  # fmt: skip
    for row, (label, value) in enumerate(rows):
        c.text((24, 64 + 26 * row), label, 14, grey)
        c.text((150, 64 + 26 * row), value, 14, white, identifying=True)
    y = 64 + 26 * (len(rows) - 1)
    c.text((260, y), "10:22:51", 14, white, identifying=True)
    y += 48
    c.draw.line((24, y, 626, y), fill=grey, width=1)
    y += 16
    c.text((24, y), "Series", 13, grey)
    c.text((120, y), "Scan Range", 13, grey)
    c.text((300, y), "CTDIvol", 13, grey, keep=True)
    c.text((440, y), "Phantom", 13, grey)
    y += 28
    c.text((24, y), "Helical", 13, white)
    c.text((300, y), "45.2 mGy", 13, yellow, keep=True)
    c.text((440, y), "Body 32", 13, white, keep=True)
    y += 28
    c.text((24, y), "Total DLP", 13, white, keep=True)
    c.text((300, y), "1312.77 mGy-cm", 13, yellow, keep=True)
    c.text((24, 700), "Page 1 of 1", 11, grey, keep=True)
    frame = np.array(image)
    extra = {"ConversionType": "WSD", "ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]}
    if burned_in is not None:
        extra["BurnedInAnnotation"] = burned_in
    ds = base_dataset(SECONDARY_CAPTURE, "CT", **extra)
    set_pixels(ds, [frame], "RGB", 8)
    return Planted(ds, c.identifying, c.keep, [frame], [np.array(c.ink) > 0])


def _speckle_fan(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    cx = width / 2
    r2 = (xx - cx) ** 2 + (yy + 40) ** 2
    fan = (r2 < (height - 50) ** 2) & (r2 > 90**2) & (np.abs(xx - cx) < (yy + 40) * 0.75) & (yy > 40)
    out = np.zeros((height, width), np.uint8)
    out[fan] = rng.gamma(2.0, 28.0, int(fan.sum())).clip(0, 230).astype(np.uint8)
    return out


def ultrasound_cine(*, frames: int = 3, colour: bool = False, lossy: bool = False, seed: int = 7,
                    burned_in: str | None = None) -> Planted:
    """A 480x640 ultrasound cine: header bar with the patient, a clock that changes per frame,
    a depth scale label, acoustic output values; greyscale or RGB (yellow text), 8-bit."""
    rng = np.random.default_rng(seed)
    drawn: list[np.ndarray] = []
    identifying: list[Box] = []
    keep: dict[str, Box] = {}
    ink: list[np.ndarray] = []
    for index in range(frames):
        speckle = _speckle_fan(rng, 480, 640)
        image = Image.fromarray(np.stack([speckle] * 3, axis=-1) if colour else speckle)
        c = Canvas(image)
        text = (250, 230, 120) if colour else 255
        c.text((8, 6), "MCALLISTER^FIONA", 12, text, identifying=True, mono=True)
        c.text((220, 6), "ID", 12, text, mono=True)
        c.text((244, 6), "48213977", 12, text, identifying=True, mono=True)
        c.text((400, 6), f"14/03/2024 10:2{index}:5{index}", 12, text, identifying=True, mono=True)
        c.text((594, 240), "5 cm", 12, 200 if not colour else (200, 200, 200), keep=True, mono=True)
        c.text((8, 458), "MI 1.1", 12, text, keep=True, mono=True)
        c.text((80, 458), "TIS 0.4", 12, text, keep=True, mono=True)
        identifying = c.identifying if index == 0 else identifying + [b for b in c.identifying if b not in identifying]
        keep = c.keep
        drawn.append(np.array(image))
        ink.append(np.array(c.ink) > 0)
    extra = {} if burned_in is None else {"BurnedInAnnotation": burned_in}
    sop = ULTRASOUND_MULTIFRAME if frames > 1 else ULTRASOUND
    ds = base_dataset(sop, "US", **extra)
    set_pixels(ds, drawn, "RGB" if colour else "MONOCHROME2", 8)
    if frames > 1:
        ds.FrameTime = 33.3
        ds.FrameIncrementPointer = 0x00181063
    if lossy:
        if not colour:
            raise ValueError("the lossy variant is colour (YBR_FULL_422)")
        jpeg_baseline(ds, drawn)
    return Planted(ds, identifying, keep, drawn, ink)


def greyscale16_with_text(*, sop_class: str = XA_IMAGE, modality: str = "XA", burned_in: str | None = "YES",
                          text: str = "MCALLISTER FIONA 48213977") -> Planted:
    """A 12-bit-in-16 greyscale frame (soft gradient) with the patient painted at full white."""
    height, width = 512, 512
    yy, xx = np.mgrid[0:height, 0:width]
    base = (800 + 1200 * np.exp(-((xx - 256) ** 2 + (yy - 280) ** 2) / (2 * 110.0**2))).astype(np.uint16)
    canvas = Image.new("I", (width, height), 0)
    c = Canvas(canvas)
    # Pillow draws into 16-bit images with an integer fill; 4095 is white for 12 bits stored.
    c.text((12, 10), text, 16, 4095, identifying=True)
    c.text((12, 488), "LAO 30", 14, 4095, keep=True)
    painted = np.array(canvas, dtype=np.uint16)
    frame = np.where(painted > 0, painted, base).astype(np.uint16)
    extra = {} if burned_in is None else {"BurnedInAnnotation": burned_in}
    ds = base_dataset(sop_class, modality, **extra)
    set_pixels(ds, [frame], "MONOCHROME2", 12)
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    return Planted(ds, c.identifying, c.keep, [frame], [np.array(c.ink) > 0])


def saved_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
