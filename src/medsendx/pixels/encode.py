"""Writing edited pixels back into a dataset, losslessly.

- Uncompressed input stays uncompressed in its own transfer syntax (byte order included).
- Compressed input is re-encoded with a lossless syntax: its own when pydicom can encode it
  (RLE, JPEG-LS lossless, JPEG 2000 lossless), else JPEG-LS lossless, else RLE, else
  Explicit VR Little Endian. Lossy input (JPEG baseline, JPEG-LS near-lossless, lossy
  JPEG 2000) is therefore stored losslessly from its decoded pixels; LossyImageCompression
  stays "01" because the pixels were lossy once.
- Colour decoded from YBR is RGB, and the Photometric Interpretation says so afterwards.
After writing, the pixel data is decoded again and compared with what we meant to write.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from pydicom.valuerep import VR

REENCODABLE = {RLELossless, JPEGLSLossless, JPEG2000Lossless}


class EncodeError(RuntimeError):
    """The edited pixels could not be stored losslessly; the message is our own wording."""


def _candidates(syntax: UID) -> list[UID]:
    ordered = ([syntax] if syntax in REENCODABLE else []) + [JPEGLSLossless, RLELossless]
    return list(dict.fromkeys(ordered)) + [ExplicitVRLittleEndian]


def _set_native(ds: Dataset, pixels: np.ndarray, syntax: UID) -> None:
    """Store ``pixels`` uncompressed, in the byte order of ``syntax``."""
    if syntax.is_compressed:
        syntax = ExplicitVRLittleEndian
        ds.file_meta.TransferSyntaxUID = syntax
    byte_order = ">" if syntax == "1.2.840.10008.1.2.2" else "<"
    data = pixels.astype(pixels.dtype.newbyteorder(byte_order), copy=False).tobytes()
    ds.PixelData = data if len(data) % 2 == 0 else data + b"\x00"
    element = ds["PixelData"]
    element.VR = VR.OB if int(ds.BitsAllocated) <= 8 else VR.OW
    element.is_undefined_length = False


def store_pixels(ds: Dataset, pixels: np.ndarray) -> UID:
    """Replace the pixel data of ``ds`` with ``pixels`` (all frames, as decoded) losslessly.

    Returns the transfer syntax used. Raises :class:`EncodeError` if no encoding
    reproduces ``pixels`` exactly.
    """
    original = UID(ds.file_meta.TransferSyntaxUID)
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        # pydicom decodes YBR colour to RGB; the stored pixels are RGB from now on.
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    targets = [original] if not original.is_compressed else _candidates(original)
    for target in targets:
        try:
            if target.is_compressed:
                ds.compress(target, pixels, generate_instance_uid=False)
            else:
                _set_native(ds, pixels, target)
            if np.array_equal(ds.pixel_array, pixels):
                return UID(ds.file_meta.TransferSyntaxUID)
        except Exception:  # an encoder that cannot take this pixel format: try the next one
            continue
    raise EncodeError("edited pixels could not be stored losslessly")
