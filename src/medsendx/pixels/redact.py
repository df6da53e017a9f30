"""Deciding which OCR words to blank, and blanking them.

A word is *identifying* when it matches one of the object's own identifying header values
(names, IDs, birth date, accession number, as they were before de-identification), looks
like a date, a time, a long number or an ID-like code of letters and digits, or follows a
label such as "Name:" or "ID" on its line. OCR misreads letters and digits that look
alike, so matching folds them together (O/0, I/1, L/1, S/5, B/8, Z/2) and tolerates one
wrong character in long values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from medsendx.pixels.ocr import OcrWord

_FOLD = str.maketrans("OILSBZ", "011582")
_NON_ALNUM = re.compile(r"[^0-9A-Z]+")

DATE_PATTERNS = [
    re.compile(r"\d{1,4}[./-]\d{1,2}[./-]\d{1,4}"),
    re.compile(r"\d{1,2}[-/ .]?(JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC)[A-Z]*[-/ .,]?\d{2,4}"),
]
TIME_PATTERN = re.compile(r"\d:|:\d")  # 10:22, and fragments such as "10:" when OCR splits a time
LONG_DIGITS = re.compile(r"\d{5,}")
DECIMAL_NUMBER = re.compile(r"[-+]?\d+[.,]\d+")
NUMBER_WITH_SEPARATORS = re.compile(r"[\d\-/.:#]+")
MONTHS = {
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "SEPT", "OCT", "NOV", "DEC",
    "JANUARY", "FEBRUARY", "MARCH", "APRIL", "JUNE", "JULY", "AUGUST", "SEPTEMBER", "OCTOBER",
    "NOVEMBER", "DECEMBER",
}  # fmt: skip
# Words after one of these labels on the same line are treated as identifying.
LABELS = {
    "NAME", "PATIENT", "PAT", "PT", "ID", "PID", "MRN", "DOB", "BIRTH", "BORN", "ACCESSION",
    "ACC", "ACCN", "SSN", "NHS", "SURNAME", "FIRSTNAME", "GIVEN",
}  # fmt: skip
ALL_TEXT_MIN_CONFIDENCE = 15.0  # below this, "words" on a busy image (speckle) are noise


def fold(text: str) -> str:
    """Upper-case, letters and digits only, look-alike letters folded to digits."""
    return _NON_ALNUM.sub("", text.upper()).translate(_FOLD)


def _parts(text: str) -> list[str]:
    return [p.translate(_FOLD) for p in _NON_ALNUM.split(text.upper()) if p]


def _within_one_edit(a: str, b: str) -> bool:
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = j = edits = 0
    while i < len(a) and j < len(b):
        if a[i] == b[j]:
            i += 1
            j += 1
            continue
        edits += 1
        if edits > 1:
            return False
        if len(a) == len(b):
            i += 1
        j += 1
    return edits + (len(b) - j) + (len(a) - i) <= 1


@dataclass(frozen=True)
class IdentityMatcher:
    """The object's identifying header values, ready to be matched against OCR words."""

    tokens: frozenset[str]

    @classmethod
    def from_values(cls, values: Iterable[str]) -> IdentityMatcher:
        tokens: set[str] = set()
        for value in values:
            text = str(value or "")
            # Short number pieces ("07" of a date) would match every small number on a page.
            tokens.update(p for p in _parts(text) if len(p) >= 2 and not (p.isdigit() and len(p) < 4))
            whole = fold(text)
            if len(whole) >= 2:
                tokens.add(whole)  # "DOE^JOHN" may be read as one word "DOEJOHN"
        return cls(frozenset(tokens))

    def matches(self, word: str) -> bool:
        whole = fold(word)
        if not whole:
            return False
        parts = _parts(word)
        for token in self.tokens:
            if token in parts or token == whole:
                return True
            if len(token) >= 4 and token in whole:
                return True
            if len(token) >= 6 and any(_within_one_edit(token, p) for p in [whole, *parts]):
                return True
        return False


def looks_like_date_time_or_number(word: str) -> bool:
    text = word.upper()
    if any(p.search(text) for p in DATE_PATTERNS) or TIME_PATTERN.search(text):
        return True
    if LONG_DIGITS.search(text):
        return True
    digits = sum(c.isdigit() for c in text)
    if digits >= 6 and NUMBER_WITH_SEPARATORS.fullmatch(text) and not DECIMAL_NUMBER.fullmatch(text):
        return True  # 123-45-6789, 12/345/678
    letters = sum(c.isalpha() for c in text)
    if digits >= 4 and letters and not re.search(r"\d[.,]\d", text):
        # ID-like codes: ACC55102, 630P630, 78F78, and numbers with a digit misread as a
        # letter (4821397l); not measurements like 5.0MHz.
        return True
    return False


def _bare(word: OcrWord) -> str:
    return re.sub(r"[^A-Z]", "", word.text.upper())


def _has_alnum(word: OcrWord) -> bool:
    return any(c.isalnum() for c in word.text)


def identifying_words(words: list[OcrWord], matcher: IdentityMatcher) -> list[OcrWord]:
    """The words that may identify the patient (see the module docstring)."""
    flagged: set[int] = set()
    lines: dict[tuple[int, int, int], list[int]] = {}
    for i, word in enumerate(words):
        lines.setdefault(word.line, []).append(i)
        if matcher.matches(word.text) or looks_like_date_time_or_number(word.text):
            flagged.add(i)
    for members in lines.values():
        members.sort(key=lambda i: words[i].left)
        after_label = False
        for pos, i in enumerate(members):
            bare = _bare(words[i])
            if bare in LABELS:
                after_label = True
                continue
            if after_label and _has_alnum(words[i]):
                flagged.add(i)
            if bare in MONTHS:  # "22 Jul 1961": the month and the numbers beside it
                flagged.add(i)
                for k in (pos - 1, pos + 1):
                    if 0 <= k < len(members) and re.fullmatch(r"\W*\d{1,4}\W*", words[members[k]].text):
                        flagged.add(members[k])
    return [words[i] for i in sorted(flagged)]


def words_to_redact(words: list[OcrWord], policy: str, matcher: IdentityMatcher) -> list[OcrWord]:
    """The words to blank under ``policy`` ("redact-identifying" or "redact-all-text")."""
    chosen = identifying_words(words, matcher)
    if policy == "redact-all-text":
        seen = {id(w) for w in chosen}
        chosen += [
            w for w in words if id(w) not in seen and _has_alnum(w) and w.confidence >= ALL_TEXT_MIN_CONFIDENCE
        ]
    return chosen


def redaction_box(word: OcrWord, height: int, width: int) -> tuple[int, int, int, int]:
    """The word's box grown by a margin (a quarter of the text height, at least 2 px), clipped."""
    margin = max(2, round(0.25 * word.height))
    x0, y0, x1, y1 = word.box
    return (max(0, x0 - margin), max(0, y0 - margin), min(width, x1 + margin), min(height, y1 + margin))


def blank(frame: np.ndarray, box: tuple[int, int, int, int], fill: np.ndarray | int | float) -> None:
    """Fill ``box`` (x0, y0, x1, y1) of one frame (H x W or H x W x S) in place."""
    x0, y0, x1, y1 = box
    frame[y0:y1, x0:x1] = fill
