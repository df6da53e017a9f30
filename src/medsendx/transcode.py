"""Lossless compression for the wire: fewer bytes over 4G, the same pixels at the hospital.

:func:`prepare_for_wire` turns a de-identified file into the bytes a transport sends, in
the best transfer syntax the peer accepts:

1. JPEG-LS Lossless (pyjpegls), else JPEG 2000 Lossless (pylibjpeg-openjpeg), when the
   peer accepts it and the codec can encode the image (pydicom 3 ``Dataset.compress``);
2. else the file as it is, when the peer accepts its transfer syntax;
3. else decompressed to Explicit VR Little Endian (every peer accepts that).

The encoded result is decoded again and compared with the original pixels before it is
used: a codec that lost a single bit would make us send the original instead. Only the
pixel encoding changes; every other element, the UIDs included, stays as it was.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels import pixel_array
from pydicom.pixels.encoders import JPEG2000LosslessEncoder, JPEGLSLosslessEncoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
)

# Our preference for the wire, best first: JPEG-LS is as small as JPEG 2000 on CT and
# encodes about twice as fast.
LOSSLESS_WIRE_SYNTAXES: tuple[UID, ...] = (JPEGLSLossless, JPEG2000Lossless)
UNCOMPRESSED_SYNTAXES: tuple[UID, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
ANY_SYNTAX = None  # a peer that stores whatever it gets (folder, S3)


@dataclass(frozen=True)
class WirePayload:
    """The bytes to send and what they are."""

    data: bytes
    transfer_syntax: UID
    raw_size: int  # size of the de-identified file before transcoding
    transcoded: bool  # False: ``data`` is the file's own bytes, unchanged


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _pixels(ds: Dataset) -> np.ndarray:
    return np.asarray(ds.pixel_array)


def _has_pixels(ds: Dataset) -> bool:
    return "PixelData" in ds


_ENCODERS = {JPEGLSLossless: JPEGLSLosslessEncoder, JPEG2000Lossless: JPEG2000LosslessEncoder}
# CharLS decodes JPEG-LS ~6x faster than libjpeg; openjpeg is the JPEG 2000 decoder.
_DECODER_PLUGIN = {JPEGLSLossless: "pyjpegls", JPEG2000Lossless: "pylibjpeg"}
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def compress_lossless(raw: bytes, syntax: UID, ds: Dataset | None = None) -> bytes | None:
    """The Part 10 file ``raw`` (already parsed as ``ds``, which may change) re-encoded
    losslessly in ``syntax`` and verified bit for bit, or None when the codec cannot
    encode this image."""
    try:
        ds = pydicom.dcmread(io.BytesIO(raw)) if ds is None else ds
        original = _pixels(ds)
        data = _splice(raw, ds, syntax)
        if data is None:  # not the common layout: let pydicom re-encode the whole dataset
            # Lossless re-encoding keeps the instance identity (PS3.5 8.2): same SOP Instance
            # UID, which idempotent delivery relies on. pydicom would otherwise mint a new one.
            ds.compress(syntax, original, generate_instance_uid=False)
            data = _encode(ds)
        decoded = pixel_array(io.BytesIO(data), decoding_plugin=_DECODER_PLUGIN[syntax])
    except Exception:  # unsupported bit depth, colour model, missing codec...
        return None
    if decoded.shape != original.shape or decoded.dtype != original.dtype or not np.array_equal(decoded, original):
        return None
    return data


def _splice(raw: bytes, ds: Dataset, syntax: UID) -> bytes | None:
    """Fast path for Explicit VR Little Endian files: keep every byte of the file except the
    meta group (new transfer syntax) and the pixel data element (now encapsulated frames).
    Re-serialising the whole dataset with pydicom costs more than the codec itself."""
    if ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian or raw[128:132] != b"DICM":
        return None
    if raw[132:140] != b"\x02\x00\x00\x00UL\x04\x00":  # (0002,0000) group length first
        return None
    body_start = 144 + int.from_bytes(raw[140:144], "little")
    expected = len(ds.PixelData)
    offset = raw.rfind(_PIXEL_DATA_TAG, body_start)
    while offset >= body_start:
        vr = raw[offset + 4:offset + 6]
        length = int.from_bytes(raw[offset + 8:offset + 12], "little")
        if vr in (b"OW", b"OB") and raw[offset + 6:offset + 8] == b"\x00\x00" and length == expected:
            break
        offset = raw.rfind(_PIXEL_DATA_TAG, body_start, offset)
    else:
        return None
    frames = list(_ENCODERS[syntax].iter_encode(ds))
    meta = Dataset()
    meta.update(ds.file_meta)
    meta.TransferSyntaxUID = syntax
    head = io.BytesIO()
    head.write(raw[:132])
    write_file_meta_info(head, FileMetaDataset(meta), enforce_standard=True)
    element = _PIXEL_DATA_TAG + b"OB\x00\x00\xff\xff\xff\xff" + encapsulate(frames) + _SEQUENCE_DELIMITER
    return b"".join([head.getvalue(), raw[body_start:offset], element, raw[offset + 12 + length:]])


def prepare_for_wire(
    path: str | Path,
    accepted: Iterable[str] | None = ANY_SYNTAX,
    *,
    compress: bool = True,
) -> WirePayload:
    """The bytes to send for the file at ``path`` to a peer accepting ``accepted``
    transfer syntaxes (None: any)."""
    raw = Path(path).read_bytes()
    raw_size = len(raw)
    accepted_set = None if accepted is None else {UID(str(s)) for s in accepted}

    def ok(syntax: UID) -> bool:
        return accepted_set is None or syntax in accepted_set

    ds = pydicom.dcmread(io.BytesIO(raw))
    converted = False  # True once ``raw`` no longer holds the file's own bytes
    if not ds.file_meta.TransferSyntaxUID.is_little_endian:
        # Retired Explicit VR Big Endian: re-encode as little endian first (few peers take it).
        raw = _little_endian(ds)
        ds = pydicom.dcmread(io.BytesIO(raw))
        converted = True
    current = UID(ds.file_meta.TransferSyntaxUID)
    if _has_pixels(ds) and compress:
        if current in LOSSLESS_WIRE_SYNTAXES and ok(current):
            return WirePayload(raw, current, raw_size, converted)
        for syntax in LOSSLESS_WIRE_SYNTAXES:
            if not ok(syntax):
                continue
            data = compress_lossless(raw, syntax, ds)
            if data is not None and (len(data) < len(raw) or not ok(current)):
                return WirePayload(data, syntax, raw_size, True)
            ds = pydicom.dcmread(io.BytesIO(raw))  # the failed attempt may have changed it
            if data is not None:
                break  # incompressible noise: the original, which the peer takes, is smaller
    if ok(current):
        return WirePayload(raw, current, raw_size, converted)
    return _as_uncompressed(ds, raw_size, accepted_set)


def _little_endian(ds: Dataset) -> bytes:
    if "PixelData" in ds:
        pixels = _pixels(ds)
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_original_encoding(False, True)
    return _encode(ds)


def _as_uncompressed(ds: Dataset, raw_size: int, accepted: set[UID] | None) -> WirePayload:
    target = next((s for s in UNCOMPRESSED_SYNTAXES if accepted is None or s in accepted), ExplicitVRLittleEndian)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)
        if int(ds.get("BitsAllocated", 8)) == 1:
            # a BINARY Segmentation (JPEG 2000 on our side): decoding gives a byte per
            # pixel, the uncompressed encoding wants them packed 8 to a byte
            from pydicom.pixels import pack_bits

            frames = int(ds.get("NumberOfFrames", 1) or 1)
            pixels = np.frombuffer(ds.PixelData, dtype=np.uint8)
            if pixels.size == frames * int(ds.Rows) * int(ds.Columns):
                ds.PixelData = pack_bits(pixels)
    if target == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return WirePayload(_encode(ds), target, raw_size, True)
