"""Keyed, deterministic replacements: UIDs, patient pseudonyms and date offsets.

Everything is HMAC-SHA256 under one site secret, so the same input always gives the same
output (a re-sent object is the same object; every slice of a series keeps one new Series
Instance UID; references between objects stay consistent) while nobody without the secret
can go back. No table of identities is kept or has to travel.

The secret is 32 random bytes (hex) in ``settings.secret_file``, created on first use with
mode 0600. Point ``secret_path`` at a shared file to give a fleet one mapping. The secret is
never logged or printed.
"""

from __future__ import annotations

import base64
import hmac
import os
import secrets
from datetime import date, timedelta
from pathlib import Path

UID_ROOT = "2.25."


class SecretError(Exception):
    """The site secret cannot be created or read."""


def load_or_create_secret(path: Path) -> bytes:
    """Read the site secret, creating it (0600, atomically) if it does not exist yet.

    Several processes may start at once: the secret is written to a temp file and linked
    into place, so a reader sees either no file or the complete secret, and exactly one
    creator wins.
    """
    path = Path(path)
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".tmp-secret-{os.getpid()}-{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process created it first
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    except OSError as exc:
        raise SecretError(f"cannot create the site secret at {path}: {exc.strerror}") from None
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    # Checked on every start, on the open file (no race with a swap of the path): whoever
    # can read the key can reverse the pseudonyms, so a key that others may read, or that
    # someone else owns, is refused rather than used (config.read_private_file's rule).
    from medsendx.config import ConfigError, read_private_file

    if not os.path.lexists(path):
        raise FileNotFoundError(path)  # the caller creates it
    try:
        text = read_private_file(path).strip()
    except ConfigError as exc:
        raise SecretError(f"the site secret is refused: {exc}") from None
    if len(text) < 32:
        raise SecretError(f"the site secret at {path} is too short (need at least 32 characters)")
    return text.encode()


class KeyedMapper:
    """UIDs, pseudonyms and date offsets derived from the site secret."""

    def __init__(self, secret: bytes, max_date_shift_days: int = 365) -> None:
        self._secret = secret
        self._max_shift = max(1, int(max_date_shift_days))
        # Slices of one series repeat the same UIDs and patient: derive each value once.
        self._uid_cache: dict[str, str] = {}
        self._pseudonym_cache: dict[str, str] = {}
        self._offset_cache: dict[str, int] = {}

    def _digest(self, purpose: bytes, value: str) -> bytes:
        # (hmac.digest: the one-shot C path, several times cheaper than hmac.new per call)
        return hmac.digest(self._secret, purpose + b"\x00" + value.encode("utf-8", "surrogateescape"), "sha256")

    def uid(self, original: str) -> str:
        """``2.25.<128-bit integer>``: at most 44 characters, no leading zeros."""
        cached = self._uid_cache.get(original)
        if cached is None:
            number = int.from_bytes(self._digest(b"uid", original)[:16], "big")
            cached = UID_ROOT + str(number)
            if len(self._uid_cache) > 100_000:
                self._uid_cache.clear()
            self._uid_cache[original] = cached
        return cached

    def patient_pseudonym(self, patient_key: str) -> str:
        """A 20-character pseudonym (100 bits): collisions are out of reach in practice."""
        cached = self._pseudonym_cache.get(patient_key)
        if cached is None:
            digest = self._digest(b"patient-id", patient_key)
            cached = "MSX" + base64.b32encode(digest[:13]).decode().rstrip("=")[:17]
            if len(self._pseudonym_cache) > 10_000:
                self._pseudonym_cache.clear()
            self._pseudonym_cache[patient_key] = cached
        return cached

    def date_offset_days(self, patient_key: str) -> int:
        """Per-patient shift in [-max_date_shift_days, -1]: never into the future."""
        cached = self._offset_cache.get(patient_key)
        if cached is None:
            digest = self._digest(b"date-shift", patient_key)
            cached = -(1 + int.from_bytes(digest[:8], "big") % self._max_shift)
            if len(self._offset_cache) > 10_000:
                self._offset_cache.clear()
            self._offset_cache[patient_key] = cached
        return cached


def shift_date(value: str, days: int) -> str:
    """Shift a DA value (YYYYMMDD) by ``days``; partial or malformed values are emptied
    (a value we cannot parse is a value we cannot vouch for)."""
    value = value.strip()
    if len(value) == 8 and value.isdigit():
        try:
            shifted = date(int(value[:4]), int(value[4:6]), int(value[6:8])) + timedelta(days=days)
        except ValueError:
            return ""
        if shifted.year < 1:
            return ""
        return f"{shifted.year:04d}{shifted.month:02d}{shifted.day:02d}"
    return ""


def shift_datetime(value: str, days: int) -> str:
    """Shift the date part of a DT value; time of day and UTC offset stay as they are.

    A DT with only a year (or year and month) cannot be shifted by days without inventing
    precision, so such values are emptied; so is one whose rest is not a time of day and
    an optional ``+HHMM``/``-HHMM`` offset (the rest is kept: it must be nothing else).
    """
    from medsendx.deid.values import DATETIME_REST_FORM

    value = value.strip()
    if len(value) < 8 or not value[:8].isdigit() or not DATETIME_REST_FORM.fullmatch(value[8:]):
        return ""
    shifted = shift_date(value[:8], days)
    return shifted + value[8:] if shifted else ""
