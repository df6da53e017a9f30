"""A synthetic corpus of real images with identity text burned into their pixels (issue 12).

Built from the real files in ``../shared/data`` and pydicom-data: identity lines drawn in
DejaVu and Liberation fonts, several sizes, in corners and over anatomy, with the pen
values burners use (the maximum stored value; 255, an 8-bit pen, in 16-bit data; the
minimum for MONOCHROME1; a colour), over mammography-like noise texture, in multi-frame
objects, with headers that say nothing, "NO" and "YES". Laterality markers are planted
where mammograms carry them; they must survive.

Each :class:`Case` knows, independently of the cleaner: the planted words, where each
identity line's ink is (a pixel mask, from Pillow), and the markers' boxes. Large real
images are cropped (the corpus must stay fast); pixels are otherwise the files' own.
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
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

FONTS = {
    "dejavu": "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "dejavu-mono": "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "liberation": "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "liberation-mono": "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
}
# The planted patient (header and pixels).
PATIENT = {"PatientName": "KOWALCZYK^AGNIESZKA", "PatientID": "70341958", "PatientBirthDate": "19580913",
           "AccessionNumber": "RQ884120", "InstitutionName": "HARBORVIEW CLINIC"}  # fmt: skip
# Lines burned in, and the words an independent reader must not find afterwards.
LINES = ["KOWALCZYK AGNIESZKA", "ID 70341958", "DOB 13.09.1958", "HARBORVIEW CLINIC", "ACC RQ884120"]
PLANTED_WORDS = ["KOWALCZYK", "AGNIESZKA", "70341958", "1958", "HARBORVIEW", "RQ884120"]

Box = tuple[int, int, int, int]


@dataclass
class Case:
    name: str
    ds: Dataset
    ink: np.ndarray  # frames x H x W: True where identity text was drawn
    markers: list[Box] = field(default_factory=list)  # laterality/view labels (must survive)
    header: str = "silent"

    def bytes(self) -> bytes:
        buf = io.BytesIO()
        self.ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()


def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(FONTS[name], size)


def text_mask(shape: tuple[int, int], items: list[tuple[tuple[int, int], str, str, int]]) -> np.ndarray:
    """Where the strokes of ``items`` ((x, y), text, font, size) fall: a burner's pen has no
    anti-aliasing, so a pixel is either ink or not."""
    image = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(image)
    for xy, text, font, size in items:
        draw.text(xy, text, font=_font(font, size), fill=255)
    return np.asarray(image) > 127


def _box(mask: np.ndarray) -> Box:
    rows, cols = np.nonzero(mask)
    return (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)


def _finish(ds: Dataset, header: str, patient: dict[str, str] | None = None) -> None:
    """The planted identity (``patient``, default :data:`PATIENT`) in the header, the
    BurnedInAnnotation asked for ("silent": none), and a new SOP Instance UID."""
    for keyword, value in (PATIENT if patient is None else patient).items():
        setattr(ds, keyword, value)
    if header == "silent":
        if "BurnedInAnnotation" in ds:
            del ds.BurnedInAnnotation
    else:
        ds.BurnedInAnnotation = header
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _store(ds: Dataset, pixels: np.ndarray) -> None:
    """Write ``pixels`` back uncompressed, with the dataset's own description."""
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if int(ds.get("SamplesPerPixel", 1)) == 3 else pixels.shape[-2:]


def _lines(x: int, y: int, font: str, size: int, count: int = 3) -> list[tuple[tuple[int, int], str, str, int]]:
    return [((x, y + i * int(size * 1.4)), LINES[i], font, size) for i in range(count)]


def ct_max_value_corner(data_dir: Path) -> Case:
    """Real head CT, name block at the maximum stored value top left, header silent."""
    ds = pydicom.dcmread(data_dir / "ct-head-ge" / "12.dcm")
    pixels = ds.pixel_array.copy()
    ink = text_mask(pixels.shape, _lines(8, 8, "dejavu", 12))
    pixels[ink] = pixels.max()
    _store(ds, pixels)
    _finish(ds, "silent")
    return Case("CT max value, corner, DejaVu 12", ds, ink[np.newaxis])


def ct_byte_pen_over_anatomy(data_dir: Path) -> Case:
    """Real head CT, 8-bit pen (255) in 16-bit data over the brain: black in the 40/400
    window, invisible until another window is chosen. Header says NO."""
    ds = pydicom.dcmread(data_dir / "ct-head-ge" / "16.dcm")
    pixels = ds.pixel_array.copy()
    ink = text_mask(pixels.shape, _lines(150, 220, "liberation", 14, 2))
    pixels[ink] = 255
    _store(ds, pixels)
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    _finish(ds, "NO")
    return Case("CT 8-bit pen in 16-bit data, over anatomy, Liberation 14, header NO", ds, ink[np.newaxis], header="NO")


def ct_phantom_yes(data_dir: Path) -> Case:
    ds = pydicom.dcmread(data_dir / "ct-phantom-philips" / "05.dcm")
    pixels = ds.pixel_array.copy()
    h, w = pixels.shape
    ink = text_mask(pixels.shape, _lines(w - 200, h - 60, "liberation-mono", 10))
    pixels[ink] = pixels.max()
    _store(ds, pixels)
    _finish(ds, "YES")
    return Case("CT phantom, bottom right, Liberation Mono 10, header YES", ds, ink[np.newaxis], header="YES")


def mr_large_font(data_dir: Path) -> Case:
    ds = pydicom.dcmread(get_testdata_file("MR2_UNCR.dcm"))
    pixels = ds.pixel_array[:640, 128:896].copy()
    ink = text_mask(pixels.shape, _lines(40, 500, "liberation", 22))
    pixels[ink] = pixels.max()
    _store(ds, pixels)
    _finish(ds, "silent")
    return Case("MR, over anatomy, Liberation 22", ds, ink[np.newaxis])


def cr_monochrome1(data_dir: Path) -> Case:
    """Real CR (MONOCHROME1): the pen is the minimum stored value (shown white)."""
    ds = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
    pixels = ds.pixel_array[200:900, 300:1100].copy()
    ink = text_mask(pixels.shape, _lines(30, 30, "dejavu", 20))
    pixels[ink] = pixels.min()
    _store(ds, pixels)
    _finish(ds, "silent")
    return Case("CR MONOCHROME1 pen at min, DejaVu 20", ds, ink[np.newaxis])


def mammo_noise(seed: int = 3, laterality: str = "L", view: str = "CC", header: str = "NO") -> Case:
    """Mammography-like: 14-bit correlated noise texture over a breast-shaped density, the
    name at the maximum stored value over the texture, laterality/view markers at max too."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    h, w = 900, 720
    yy, xx = np.mgrid[0:h, 0:w]
    breast = ((xx / (0.8 * w)) ** 2 + ((yy - h / 2) / (0.48 * h)) ** 2) < 1
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 2.0) * 900 + rng.normal(0, 120, (h, w))
    pixels = np.clip(np.where(breast, 7000 + texture, 300 + rng.normal(0, 30, (h, w))), 0, 16383).astype(np.uint16)
    pixels[pixels == pixels.max()] -= 1  # the pen value belongs to the pen alone
    items = [((w - 330, 40 + i * 28), LINES[i], "dejavu", 18) for i in (0, 1, 2)]
    ink = text_mask(pixels.shape, items)
    marker_mask = text_mask(pixels.shape, [((w - 140, h - 110), f"{laterality} {view}", "liberation", 40)])
    pixels[ink | marker_mask] = 16383
    ds = mammo_header(14, laterality, view, window=(7000, 3000))
    _store(ds, pixels)
    _finish(ds, header)
    return Case(f"mammography-like noise, {laterality} {view} marker, header {header}", ds, ink[np.newaxis],
                markers=[_box(marker_mask)], header=header)  # fmt: skip


def mammo_header(bits: int, laterality: str, view: str, window: tuple[int, int]) -> Dataset:
    """A digital mammography (for presentation) header for 16-bit allocated, ``bits`` stored pixels."""
    from pydicom.dataset import FileMetaDataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # digital mammography, for presentation
    ds.file_meta.ImplementationClassUID = "1.2.3.4"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "MG", generate_uid(), generate_uid()
    ds.ImageLaterality, ds.ViewPosition = laterality, view
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.WindowCenter, ds.WindowWidth = window
    return ds


def ultrasound_rgb() -> Case:
    """Real ultrasound (RGB), a yellow name line planted; header says NO (not trusted)."""
    ds = pydicom.dcmread(get_testdata_file("US1_UNCR.dcm"))
    pixels = ds.pixel_array.copy()
    ink = text_mask(pixels.shape[:2], [((330, 430), LINES[0], "liberation", 16), ((330, 452), LINES[1], "liberation", 16)])
    pixels[ink] = (255, 230, 0)
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    _store(ds, pixels)
    _finish(ds, "NO")
    return Case("ultrasound RGB, yellow Liberation 16, header NO", ds, ink[np.newaxis], header="NO")


def multiframe_ct(data_dir: Path) -> Case:
    """Two real CT slices as one multi-frame object, a different line on each frame."""
    first = pydicom.dcmread(data_dir / "ct-head-ge" / "08.dcm")
    second = pydicom.dcmread(data_dir / "ct-head-ge" / "20.dcm")
    frames = np.stack([first.pixel_array, second.pixel_array]).copy()
    ink = np.stack([
        text_mask(frames.shape[1:], [((300, 12), LINES[1], "dejavu-mono", 13)]),
        text_mask(frames.shape[1:], [((12, 470), LINES[0], "dejavu", 15)]),
    ])  # fmt: skip
    for index in range(2):
        frames[index][ink[index]] = frames[index].max()
    ds = first
    ds.NumberOfFrames = 2
    _store(ds, frames)
    _finish(ds, "silent")
    return Case("CT multi-frame, one line per frame", ds, ink)


def build(data_dir: Path) -> list[Case]:
    return [
        ct_max_value_corner(data_dir),
        ct_byte_pen_over_anatomy(data_dir),
        ct_phantom_yes(data_dir),
        mr_large_font(data_dir),
        cr_monochrome1(data_dir),
        mammo_noise(3, "L", "CC", "NO"),
        mammo_noise(4, "R", "MLO", "silent"),
        ultrasound_rgb(),
        multiframe_ct(data_dir),
    ]


def stored_frames(ds: Dataset) -> np.ndarray:
    """All frames of ``ds`` as frames x H x W (x S)."""
    arr = ds.pixel_array
    return arr[np.newaxis] if int(ds.get("NumberOfFrames", 1) or 1) == 1 else arr
