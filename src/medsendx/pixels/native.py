"""Stored pixel values straight from uncompressed Pixel Data bytes, for the screen.

Most objects the screen looks at (CT and MR slices) hold nothing to find, and decoding
them through pydicom, copying every pixel and parsing the whole object again costs several
times the screen itself. For the plain layouts (little-endian native, greyscale, 8 or 16
bits allocated) the stored values are the bytes themselves: ``np.frombuffer`` gives them
without a copy. Anything else (compressed, big endian, colour, palette, odd bit depths)
returns None and goes the decoding way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

# Native little-endian transfer syntaxes (implicit VR, explicit VR): Pixel Data as stored.
NATIVE_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


@dataclass(frozen=True)
class NativeLayout:
    """How the pixel bytes are laid out (the Image Pixel module, and the transfer syntax)."""

    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    transfer_syntax: str

    def readable(self) -> bool:
        """A layout :func:`native_frames` reads (else: decode through pydicom)."""
        return (
            self.transfer_syntax in NATIVE_LITTLE_ENDIAN
            and self.samples == 1
            and self.photometric.strip().upper() in ("MONOCHROME1", "MONOCHROME2")
            and self.bits_allocated in (8, 16)
            and 1 <= self.bits_stored <= self.bits_allocated
            and self.pixel_representation in (0, 1)
            and self.rows > 0
            and self.columns > 0
            and self.frames > 0
        )


def layout_of(ds: Dataset) -> NativeLayout | None:
    """The layout of ``ds``'s Pixel Data, or None when it has none or is not native."""
    meta = getattr(ds, "file_meta", None)
    if "PixelData" not in ds or meta is None or "TransferSyntaxUID" not in meta:
        return None
    try:
        layout = NativeLayout(
            rows=int(ds.Rows), columns=int(ds.Columns), frames=int(ds.get("NumberOfFrames", 1) or 1),
            samples=int(ds.SamplesPerPixel), bits_allocated=int(ds.BitsAllocated), bits_stored=int(ds.BitsStored),
            pixel_representation=int(ds.PixelRepresentation), photometric=str(ds.PhotometricInterpretation),
            transfer_syntax=str(meta.TransferSyntaxUID),
        )  # fmt: skip
    except (AttributeError, TypeError, ValueError):
        return None
    return layout if layout.readable() else None


def native_frames(layout: NativeLayout, data: bytes | memoryview) -> tuple[np.ndarray, bool] | None:
    """(frames x rows x columns stored values, hidden) from native ``data``, or None when the
    layout is not readable so or the data is too short.

    The values are what pydicom's decoding gives: bits above Bits Stored are masked off
    (unsigned) or replaced by the sign (signed). ``hidden`` says that unsigned data had bits
    set above Bits Stored (the retired overlay practice): the caller must then rewrite the
    pixels, which this fast path does not do. No copy is made unless such bits are present
    or the values are signed with fewer bits stored than allocated."""
    if not layout.readable():
        return None
    count = layout.rows * layout.columns * layout.frames
    unsigned = np.dtype(f"<u{layout.bits_allocated // 8}")
    if len(data) < count * unsigned.itemsize:
        return None
    raw = np.frombuffer(data, dtype=unsigned, count=count)
    spare = layout.bits_allocated - layout.bits_stored
    hidden = False
    if layout.pixel_representation == 0:
        values = raw
        if spare:
            hidden = bool((raw >> layout.bits_stored).any())
            if hidden:
                values = raw & unsigned.type((1 << layout.bits_stored) - 1)
    else:
        signed = raw.view(f"<i{layout.bits_allocated // 8}")
        values = (signed << spare) >> spare if spare else signed  # (arithmetic shift: sign extension)
    return values.reshape(layout.frames, layout.rows, layout.columns), hidden
