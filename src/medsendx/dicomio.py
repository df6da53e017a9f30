"""Reading DICOM files, pixel access in physical units, and rendering for people.

Everything that touches pixels goes through here, so that rescale slope/intercept,
PixelPaddingValue, VOI LUT / windowing, MONOCHROME1 and colour are handled once.
Compressed transfer syntaxes (JPEG Lossless, JPEG-LS, JPEG 2000, RLE) decode through the
pylibjpeg / pyjpegls plugins that pydicom finds on its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

DATA_DIR_ENV = "MEDSENDX_DATA_DIR"


class DicomReadError(Exception):
    """A file could not be read as DICOM. The message never contains values from the file."""


def project_data_dir() -> Path:
    """Where the real sample DICOM files are: ``$MEDSENDX_DATA_DIR`` or ``../shared/data``."""
    return Path(os.environ.get(DATA_DIR_ENV, "../shared/data"))


def skip_value_validation() -> None:
    """Tell pydicom not to check every value it reads or writes against its VR (regular
    expressions, lengths). In the default mode those checks only warn, so they change
    nothing, yet their warnings quote the offending value (an identifier of an original
    file on stderr) and they cost ~10% of the CPU per object in the gateway. Process-wide:
    the CLI sets it for every command that reads DICOM but ``inspect`` and ``view`` (which
    count the warnings without quoting them; see ``cli.VALUE_CHECKS_KEPT``), and the
    gateway's worker processes set it too."""
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE


def read_dataset(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    stop_before_pixels: bool = False,
    force: bool = False,
) -> Dataset:
    """Read a DICOM Part 10 file, raising :class:`DicomReadError` with a one-line reason.

    Without ``force`` the file must carry the 128-byte preamble and ``DICM`` marker; a
    file missing them is refused rather than guessed at.
    """
    try:
        ds = pydicom.dcmread(source, stop_before_pixels=stop_before_pixels, force=force)
    except InvalidDicomError:
        raise DicomReadError("not a DICOM file (no DICM preamble)") from None
    except FileNotFoundError:
        raise DicomReadError("file not found") from None
    except IsADirectoryError:
        raise DicomReadError("is a directory, not a file") from None
    except PermissionError:
        raise DicomReadError("permission denied") from None
    except EOFError:
        raise DicomReadError("truncated file (ended inside the header)") from None
    except Exception as exc:  # pydicom raises many types for damaged files
        raise DicomReadError(f"unreadable DICOM ({type(exc).__name__})") from None
    if not force and "TransferSyntaxUID" not in ds.file_meta:
        raise DicomReadError("no transfer syntax in the file meta information")
    return ds


def frame_count(ds: Dataset) -> int:
    """NumberOfFrames (1 when absent or empty); :class:`DicomReadError` when the value
    is not a positive whole number (damaged: "nan", "1e309", "-3")."""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError, OverflowError):
        raise DicomReadError("NumberOfFrames is not a whole number (damaged header)") from None
    if frames < 1:
        raise DicomReadError("NumberOfFrames is not a positive number (damaged header)")
    return frames


def stored_pixels(ds: Dataset, frame: int | None = None) -> np.ndarray:
    """Stored pixel values (decoded if compressed), one frame or all frames.

    Raises :class:`DicomReadError` if there is no pixel data or it cannot be decoded.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomReadError("object has no pixel data")
    try:
        if frame is None:
            return ds.pixel_array
        if frame_count(ds) == 1:
            if frame != 0:
                raise DicomReadError(f"frame {frame} requested from a single-frame object")
            return ds.pixel_array
        return ds.pixel_array[frame]
    except DicomReadError:
        raise
    except Exception as exc:
        # (the type only: library messages can quote values of the file)
        raise DicomReadError(f"pixel data cannot be decoded ({type(exc).__name__})") from None


def modality_pixels(ds: Dataset, frame: int | None = 0) -> np.ndarray:
    """Pixels in modality units (Hounsfield units for CT), as float32."""
    arr = stored_pixels(ds, frame)
    if "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" in ds:
        arr = apply_modality_lut(arr, ds)
    return np.asarray(arr, dtype=np.float32)


def padding_mask(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """True where a stored value is PixelPaddingValue (not part of the image)."""
    if "PixelPaddingValue" not in ds:
        return np.zeros(stored.shape, dtype=bool)
    pad = ds.PixelPaddingValue
    mask = stored == pad
    if "PixelPaddingRangeLimit" in ds:
        lo, hi = sorted((pad, ds.PixelPaddingRangeLimit))
        mask = (stored >= lo) & (stored <= hi)
    return mask


def display_image(ds: Dataset, frame: int = 0) -> np.ndarray:
    """An 8-bit image as a person would look at it (H x W, or H x W x 3 for colour).

    Greyscale: modality LUT, then the object's VOI LUT or window (first one), else a
    window over the 0.5-99.5 percentiles; MONOCHROME1 is inverted. Colour: converted to RGB.
    """
    return display_array(ds, stored_pixels(ds, frame if frame_count(ds) > 1 else None))


def display_array(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    """Like :func:`display_image`, for one frame of stored values already in hand
    (for example a frame that was edited and not yet written back)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples == 3:
        # pydicom's decoders already return RGB for YBR_* data (as_rgb defaults to True).
        return _to_uint8(arr.astype(np.float32), 0.0, float(2 ** int(ds.get("BitsStored", 8)) - 1))
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds)
        top = float(rgb.max()) or 1.0
        return _to_uint8(rgb.astype(np.float32), 0.0, top)
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    pad = padding_mask(ds, arr)
    has_voi = "WindowCenter" in ds and "WindowWidth" in ds or "VOILUTSequence" in ds
    if has_voi:
        voi = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float32)
        lo, hi = float(voi.min()), float(voi.max())
        if "WindowCenter" in ds and "WindowWidth" in ds and "VOILUTSequence" not in ds:
            center = float(_first(ds.WindowCenter))
            width = max(float(_first(ds.WindowWidth)), 1.0)
            lo, hi = center - width / 2.0, center + width / 2.0
            image = _to_uint8(values, lo, hi)
        else:
            image = _to_uint8(voi, lo, hi)
    else:
        valid = values[~pad] if pad.any() else values.ravel()
        lo, hi = (np.percentile(valid, [0.5, 99.5]) if valid.size else (0.0, 1.0))
        image = _to_uint8(values, float(lo), float(hi))
    if pad.any():
        image[pad] = 0
    if photometric == "MONOCHROME1":
        image = 255 - image
    return image


def _first(value: object) -> float:
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]


def _to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        hi = lo + 1.0
    scaled = (values - lo) * (255.0 / (hi - lo))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def save_png(image: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write an 8-bit greyscale or RGB array as PNG, atomically."""
    from io import BytesIO

    from PIL import Image

    from medsendx.fsutil import atomic_write_bytes

    buf = BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return atomic_write_bytes(Path(path), buf.getvalue())


def iter_dicom_files(root: Path) -> list[Path]:
    """Files under ``root`` (recursively, sorted) that are candidates for DICOM reading.

    Hidden files and our own temp files are skipped; non-DICOM files are not filtered here,
    so that callers can report and quarantine them.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"no such file or folder: {root}")
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.name.upper() not in ("DICOMDIR", "LICENSE", "README.MD")
    )
