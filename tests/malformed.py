"""Byte-level surgery on Part 10 files (explicit VR little endian): damaged values that
pydicom would refuse to write, nested sequences, swallowed elements. For the malformed
input and fuzz tests."""

from __future__ import annotations

import io
import struct

from pydicom.dataset import Dataset

from medsendx.deid import codec

LONG = codec.LONG_VRS


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def element(tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """One explicit-VR little-endian element; ``length`` overrides the declared length."""
    length = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("latin-1")
    head += (b"\0\0" + struct.pack("<I", length)) if vr in LONG else struct.pack("<H", length)
    return head + value


def top_elements(data: bytes) -> tuple[codec.Part10, list[codec.Element]]:
    part = codec.read_part10(data)
    elements, _ = codec.parse_dataset_python(part.body, part.body_start, len(part.body), part.encoding, lambda tag: None)
    return part, elements


def set_value(data: bytes, tag: int, vr: str, value: bytes) -> bytes:
    """``data`` with top-level element ``tag`` replaced (or inserted in tag order)."""
    part, elements = top_elements(data)
    assert not part.deflated and part.encoding == codec.EXPLICIT_LE
    new = element(tag, vr, value)
    for el in elements:
        if el.tag == tag:
            return data[: el.start] + new + data[el.end :]
        if el.tag > tag:
            return data[: el.start] + new + data[el.start :]
    return data + new


def set_vr(data: bytes, tag: int, vr: str) -> bytes:
    """``data`` with the two VR bytes of top-level element ``tag`` overwritten."""
    _, elements = top_elements(data)
    el = next(e for e in elements if e.tag == tag)
    return data[: el.start + 4] + vr.encode("latin-1") + data[el.start + 6 :]


def swallow_next(data: bytes, tag: int) -> bytes:
    """Corrupt the length of short-VR text element ``tag`` so that it covers the element
    after it (which then disappears into its value): the fuzz campaign's leak."""
    _, elements = top_elements(data)
    index = next(i for i, e in enumerate(elements) if e.tag == tag)
    el, following = elements[index], elements[index + 1]
    assert el.vr not in LONG
    length = following.end - el.value
    return data[: el.start + 6] + struct.pack("<H", length) + data[el.start + 8 :]


def nested_sequence(levels: int, *, undefined: bool = True, tag: int = 0x00189321) -> bytes:
    """``levels`` sequences nested in one another (the deepest item is at depth ``levels``).
    (0018,9321) CT Exposure Sequence: the profile keeps it and walks its items. Built in
    linear time (40,000 levels are 800 KB)."""
    item_end, seq_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0), struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    if undefined:
        opening = element(tag, "SQ", b"", codec.UNDEFINED) + struct.pack("<HHI", 0xFFFE, 0xE000, codec.UNDEFINED)
        return opening * levels + (item_end + seq_end) * levels
    # A sequence holding k levels is 20 * k bytes: its 12-byte header, one 8-byte item
    # header, and the k - 1 levels inside.
    return b"".join(
        element(tag, "SQ", b"", 8 + 20 * (k - 1)) + struct.pack("<HHI", 0xFFFE, 0xE000, 20 * (k - 1))
        for k in range(levels, 0, -1)
    )


def insert_raw(data: bytes, tag: int, raw: bytes) -> bytes:
    """``data`` with the encoded element(s) ``raw`` inserted where ``tag`` sorts."""
    _, elements = top_elements(data)
    at = next((e.start for e in elements if e.tag > tag), len(data))
    return data[:at] + raw + data[at:]


def set_transfer_syntax(data: bytes, uid: str) -> bytes:
    """``data`` with its file meta's Transfer Syntax UID (and group length) replaced."""
    value = uid.encode() + (b"\0" if len(uid) % 2 else b"")
    pos = 132
    meta: list[bytes] = []
    while pos < len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 2:
            break
        vr = data[pos + 4 : pos + 6].decode()
        if vr in LONG:
            length, start = struct.unpack_from("<I", data, pos + 8)[0], pos + 12
        else:
            length, start = struct.unpack_from("<H", data, pos + 6)[0], pos + 8
        if elem == 0x0010:
            meta.append(element(0x00020010, "UI", value))
        elif elem != 0x0000:
            meta.append(data[pos : start + length])
        pos = start + length
    body = b"".join(meta)
    return data[:132] + element(0x00020000, "UL", struct.pack("<I", len(body))) + body + data[pos:]
