"""What a kept value may look like: damage checks for every value that leaves as it came,
and the exact forms a "clean" (C) action may keep.

The engine copies kept elements byte for byte without decoding them. That is only safe
if the element was delimited cleanly: a text element whose length byte was corrupted to
cover the next element (a model name swallowing the patient's name) still parses, and
its "value" then holds the next element's header and value. Every element header of the
standard's groups contains a NUL or a control byte (group and element numbers are small
binary integers), so a text value that holds one of those bytes, other than as trailing
padding, was not delimited cleanly; nor was a value far longer than its VR allows, nor
a binary value whose length is not a multiple of its item size. Such objects go to
quarantine (``FormatError``: a damaged file). Mild non-conformance that real scanners
write (an SH a few characters too long, trailing spaces or NULs, lower case in a CS)
passes as before.

A C action keeps a value only when it has its attribute's exact form (a time of day
``HHMM...``, a UTC offset ``+HHMM``/``-HHMM``, a date-time's time and offset, a coded
string); anything else is removed, since a value we cannot parse is one we cannot vouch
for. Reasons name the tag and the VR, never the value.
"""

from __future__ import annotations

import math
import re
from typing import Callable

from medsendx.deid.codec import UNDEFINED, Element, FormatError

# Bytes no text value may hold: C0 controls except TAB, LF, FF, CR (free text) and ESC
# (ISO 2022 code extensions), and DEL. NUL is allowed only as trailing padding.
_BAD_TEXT = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
# Maximum length per value (bytes; PN: three component groups), PS3.5 Table 6.2-1. A
# value more than FAR times longer is damage, not a scanner's sloppiness.
MAX_LENGTH = {
    "AE": 16, "AS": 4, "CS": 16, "DA": 18, "DS": 16, "DT": 26, "IS": 12, "LO": 64, "LT": 10240,
    "PN": 3 * 64 + 2, "SH": 16, "ST": 1024, "TM": 28, "UI": 64,
}
FAR = 4
TEXT_VRS = frozenset(MAX_LENGTH) | {"UC", "UR", "UT"}
_SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})  # a backslash is text, not a separator
# Binary VRs: the size of one value; a length that is not a multiple is damage.
ITEM_SIZE = {
    "AT": 4, "FD": 8, "FL": 4, "OD": 8, "OF": 4, "OL": 4, "OV": 8, "OW": 2,
    "SL": 4, "SS": 2, "SV": 8, "UL": 4, "US": 2, "UV": 8,
}


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _binary_check(size: int, vr: str) -> Callable[[bytes, Element], None]:
    def check(buf: bytes, el: Element) -> None:
        if (el.end - el.value) % size and el.length != UNDEFINED:
            raise FormatError(f"damaged value in {_tag_text(el.tag)} {vr}: length is not a multiple of {size}")

    return check


def _text_check(vr: str) -> Callable[[bytes, Element], None]:
    limit = FAR * MAX_LENGTH[vr] if vr in MAX_LENGTH else None
    single = vr in _SINGLE_VALUED
    number = vr in ("IS", "DS")
    integer = vr == "IS"
    search = _BAD_TEXT.search

    def check(buf: bytes, el: Element) -> None:
        start, end = el.value, el.end
        while end > start and buf[end - 1] == 0:  # NUL padding (UIDs; some writers pad text so)
            end -= 1
        if search(buf, start, end):
            raise FormatError(f"damaged value in {_tag_text(el.tag)} {vr}: NUL or control bytes inside (not cleanly delimited)")
        if limit is not None and end - start > limit:
            values = [buf[start:end]] if single else buf[start:end].split(b"\\")
            if any(len(value) > limit for value in values):
                raise FormatError(f"damaged value in {_tag_text(el.tag)} {vr}: far longer than its value representation allows")
        if number and end > start and not _numbers(buf[start:end], integer):
            raise FormatError(f"damaged value in {_tag_text(el.tag)} {vr}: not a finite number")

    return check


def _numbers(raw: bytes, integer: bool) -> bool:
    """Every backslash-separated value is empty or a finite number (whole for IS), as
    pydicom will read it (float() on the text: the same rules)."""
    for value in raw.split(b"\\"):
        try:
            number = float(value)
        except ValueError:
            if value.strip(b" "):
                return False
            continue
        if not math.isfinite(number) or (integer and number != int(number)):
            return False
    return True


# VR -> its check, built once (the engine calls one per kept element).
KEPT_CHECKS: dict[str, Callable[[bytes, Element], None]] = {
    **{vr: _binary_check(size, vr) for vr, size in ITEM_SIZE.items()},
    **{vr: _text_check(vr) for vr in TEXT_VRS},
}
CHECKED_VRS = frozenset(KEPT_CHECKS)


def check_kept(buf: bytes, el: Element, vr: str) -> None:
    """Raise :class:`FormatError` when the value of ``el`` (of VR ``vr``) cannot be what
    its VR holds; return quietly otherwise (also for VRs with nothing to check)."""
    check = KEPT_CHECKS.get(vr)
    if check is not None:
        check(buf, el)


# Exact forms of the values a C action keeps (PS3.5 6.2): times of day, UTC offsets, the
# part of a date-time after its date, coded strings.
_TIME = r"(?:[01]\d|2[0-3])(?:[0-5]\d(?:(?:[0-5]\d|60)(?:\.\d{1,6})?)?)?"
_OFFSET = r"[+-](?:0\d|1[0-4])[0-5]\d"
TIME_FORM = re.compile(_TIME)
UTC_OFFSET_FORM = re.compile(_OFFSET)
DATETIME_REST_FORM = re.compile(f"(?:{_TIME})?(?:{_OFFSET})?")
CODE_STRING_FORM = re.compile(r"[A-Z0-9_ ]{0,16}")
