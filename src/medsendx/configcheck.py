"""What ``medsendx config check`` adds to the loader: value checks and a redacted dump.

``medsendx.config.validate`` already reports every unknown key, wrong type, value outside
a choice list and number out of range (``config.RANGES``), naming the key. This module
checks what a single value cannot say (AE titles, addresses, destination URLs, files that
must exist, settings that must agree) and prints the effective settings with every secret
replaced; it only reads a finished ``Settings``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from medsendx.config import ENV_PREFIX, Settings
from medsendx.transport.base import redact_url

REDACTED = "<redacted>"
# Settings whose whole value is a secret.
SECRET_KEYS = frozenset({"s3.access_key_id", "s3.secret_access_key"})
# Settings holding URLs: a password in them (user:password@host) is replaced.
URL_KEYS = frozenset({"outbox.destination", "s3.endpoint_url"})
DESTINATION_SCHEMES = ("dicomweb+http", "dicomweb+https", "dimse", "dimse+tls", "s3", "file")


@dataclass(frozen=True)
class Problem:
    key: str  # dotted setting name, e.g. "gateway.dicom_port"
    message: str  # why it is wrong, in our words (never the value of a secret)

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def _ae_title_problem(value: str) -> str | None:
    """PS3.5 6.2 AE: 1-16 characters of the default repertoire, no backslash or controls,
    not only spaces."""
    if not value.strip():
        return "an AE title must not be empty"
    if len(value) > 16:
        return f"an AE title has at most 16 characters (this one has {len(value)})"
    if any(c == "\\" or not (32 <= ord(c) < 127) for c in value):
        return "an AE title may hold printable ASCII characters only, no backslash"
    return None


def _destination_problem(url: str) -> str | None:
    if not url or "://" not in url:
        return None  # a local folder
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DESTINATION_SCHEMES:
        return f"unsupported scheme {scheme!r} (use one of {', '.join(DESTINATION_SCHEMES)} or a folder)"
    try:
        port = parts.port
    except ValueError:
        return "the port is not a number between 0 and 65535"
    if scheme.startswith("dimse"):
        if not parts.username or not parts.hostname or not port:
            return "DIMSE destinations look like dimse://AET@host:port"
        return _ae_title_problem(parts.username)
    if scheme.startswith("dicomweb") and not parts.hostname:
        return "a DICOMweb destination needs a host (dicomweb+https://host/path)"
    if scheme == "s3" and not parts.hostname:
        return "an S3 destination needs a bucket (s3://bucket/prefix)"
    return None


def check_settings(settings: Settings) -> list[Problem]:
    """Every problem with values the loader accepted; empty when the settings are usable."""
    problems: list[Problem] = []

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            problems.append(Problem(key, message))

    gw, box, s3, deid = settings.gateway, settings.outbox, settings.s3, settings.deid
    need(bool(settings.station_id.strip()), "station_id", "must not be empty")
    need(not any(c == "\\" or ord(c) < 32 for c in settings.station_id), "station_id",
         "may not hold a backslash or control characters")
    need(settings.log_level.upper() in logging.getLevelNamesMapping(), "log_level",
         "not a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    state = settings.state_dir
    existing = next((p for p in (state, *state.parents) if p.exists()), None)
    need(existing is not None and existing.is_dir() and os.access(existing, os.W_OK | os.X_OK), "state_dir",
         "cannot be created or written by this user")

    # gateway (number ranges are the loader's: config.RANGES)
    need(gw.dicom_port != gw.http_port or gw.dicom_port == 0, "gateway.http_port", "must differ from gateway.dicom_port")
    if (reason := _ae_title_problem(gw.ae_title)) is not None:
        problems.append(Problem("gateway.ae_title", reason))
    for i, aet in enumerate(gw.allowed_calling_aets):
        if (reason := _ae_title_problem(aet)) is not None:
            problems.append(Problem(f"gateway.allowed_calling_aets[{i}]", reason))
    try:
        ipaddress.ip_address(gw.bind_address)
    except ValueError:
        problems.append(Problem("gateway.bind_address", "not an IP address (e.g. 127.0.0.1, 192.168.1.10 or ::1)"))
    for i, folder in enumerate(gw.watch_dirs):
        need(Path(folder).is_dir(), f"gateway.watch_dirs[{i}]", "folder does not exist")

    # outbox
    if (reason := _destination_problem(box.destination)) is not None:
        problems.append(Problem("outbox.destination", reason))
    need(box.backoff_cap_seconds >= box.backoff_base_seconds, "outbox.backoff_cap_seconds",
         "must be at least outbox.backoff_base_seconds")
    need(not box.ca_file or Path(box.ca_file).is_file(), "outbox.ca_file", "file does not exist")

    # s3
    if s3.endpoint_url:
        parts = urlsplit(s3.endpoint_url)
        need(parts.scheme in ("http", "https") and bool(parts.hostname), "s3.endpoint_url",
             "must be an http:// or https:// URL")
    need(bool(s3.access_key_id) == bool(s3.secret_access_key), "s3.secret_access_key",
         "s3.access_key_id and s3.secret_access_key are set together or not at all")

    # deid and pixels
    need(bool(deid.patient_name.strip()) and len(deid.patient_name) <= 64, "deid.patient_name",
         "must be 1 to 64 characters")
    for model, boxes in settings.pixels.fixed_regions.items():
        key = f"pixels.fixed_regions.{model}"
        if not isinstance(boxes, list):
            problems.append(Problem(key, "expected a list of [x0, y0, x1, y1] boxes"))
            continue
        for i, box_ in enumerate(boxes):
            ok = (isinstance(box_, list) and len(box_) == 4 and all(isinstance(v, int) and v >= 0 for v in box_)
                  and box_[0] < box_[2] and box_[1] < box_[3])
            need(ok, f"{key}[{i}]", "a box is [x0, y0, x1, y1] with 0 <= x0 < x1 and 0 <= y0 < y1")
    return problems


def effective_settings(settings: Settings) -> dict[str, Any]:
    """The settings as a nested dict of plain values, secrets redacted."""

    def walk(obj: Any, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                out[f.name] = walk(value, key + ".")
            elif key in SECRET_KEYS:
                out[f.name] = REDACTED if value else ""
            elif key in URL_KEYS:
                out[f.name] = redact_url(value)
            elif isinstance(value, Path):
                out[f.name] = str(value)
            else:
                out[f.name] = value
        return out

    values = walk(settings, "")
    values["secret_path"] = str(settings.secret_file)  # where the key lives, never the key
    return values


def environment_keys(environ: dict[str, str]) -> set[str]:
    """Dotted names of the settings the environment sets (MEDSENDX_A__B -> a.b)."""
    return {
        key[len(ENV_PREFIX):].lower().replace("__", ".")
        for key in environ
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "CONFIG"
    }


def to_toml(values: dict[str, Any], env_keys: set[str] = frozenset(), prefix: str = "") -> str:
    """A TOML rendering of ``effective_settings`` (tables after plain keys); settings that
    come from the environment are marked with a comment."""
    lines: list[str] = []
    tables = []
    for key, value in values.items():
        if isinstance(value, dict) and not (prefix and key and prefix.startswith("pixels.fixed_regions")):
            if prefix + key == "pixels.fixed_regions":
                lines.append(f"{key} = {_toml_value(value)}" + _mark(prefix + key, env_keys))
            else:
                tables.append((key, value))
            continue
        lines.append(f"{key} = {_toml_value(value)}" + _mark(prefix + key, env_keys))
    for key, table in tables:
        lines.append(f"\n[{prefix}{key}]")
        lines.append(to_toml(table, env_keys, f"{prefix}{key}.").rstrip("\n"))
    return "\n".join(line for line in lines if line) + "\n"


def _mark(key: str, env_keys: set[str]) -> str:
    return "  # from the environment" if key in env_keys else ""


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if value is None:
        return '""'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string
