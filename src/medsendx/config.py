"""One typed settings object, loaded from a TOML file and ``MEDSENDX_*`` environment variables.

Precedence (highest first): explicit overrides passed by the CLI, environment variables,
the TOML file, the defaults below.

TOML layout mirrors the dataclasses::

    station_id = "REMOTE_MOBILE_CLINIC_01"
    state_dir = "/var/lib/medsendx"

    [deid]
    dates = "modified"          # "remove" (Basic Profile), "modified" or "full"
    retain_uids = false

Environment variables use the field name, with ``__`` between a section and its field:
``MEDSENDX_STATION_ID``, ``MEDSENDX_STATE_DIR``, ``MEDSENDX_DEID__DATES=full``,
``MEDSENDX_DEID__RETAIN_DEVICE_IDENTITY=true``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ENV_PREFIX = "MEDSENDX_"
DEFAULT_CONFIG_NAME = "medsendx.toml"

DateOption = Literal["remove", "modified", "full"]
PixelPolicy = Literal["quarantine", "redact-identifying", "redact-all-text"]


class ConfigError(ValueError):
    """A setting is missing, of the wrong type or out of range."""


@dataclass
class DeidSettings:
    """PS3.15 Annex E profile options. The Basic Profile is always applied."""

    # Retain Longitudinal Temporal Information: "remove" = Basic Profile only,
    # "modified" = dates shifted by a per-patient offset, "full" = dates kept as they are.
    dates: DateOption = "modified"
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_uids: bool = False
    clean_descriptors: bool = False
    retain_safe_private: bool = False
    patient_name: str = "ANONYMIZED"
    # Maximum shift (days) for the modified-dates option; the per-patient offset lies in
    # [-max_date_shift_days, -1] so a shifted date never lands in the future.
    max_date_shift_days: int = 365


@dataclass
class PixelSettings:
    """What to do with objects that may show identity in their pixels."""

    policy: PixelPolicy = "redact-identifying"
    ocr_every_object: bool = False
    # Known fixed layouts: manufacturer/model -> list of [x0, y0, x1, y1] boxes to blank.
    fixed_regions: dict[str, list[list[int]]] = field(default_factory=dict)


@dataclass
class OutboxSettings:
    """Delivery queue and retry policy."""

    destination: str = ""  # empty: <state_dir>/hq (a local folder standing in for HQ)
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 300.0
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 60.0
    total_timeout_seconds: float = 600.0  # one request/association end to end
    verify_tls: bool = True
    compress: bool = True  # lossless transcoding on the wire where the peer accepts it
    batch_max_objects: int = 16  # instances per STOW-RS request / C-STORE association
    # Bytes per STOW-RS request: a reset loses at most one request, so keep it small on 4G.
    batch_max_bytes: int = 1024 * 1024
    ca_file: str = ""  # extra CA bundle for TLS peers (empty: system store)
    # C-STORE associations open at once per batch: a PACS stores one object per association
    # at a time, so a second one keeps it busy while the first waits for its response.
    dimse_associations: int = 2


@dataclass
class S3Settings:
    """S3-compatible destination; credentials may also come from the usual AWS_* variables."""

    endpoint_url: str = ""
    region: str = "us-east-1"
    access_key_id: str = ""
    secret_access_key: str = ""
    server_side_encryption: str = "AES256"
    multipart_threshold_bytes: int = 8 * 1024 * 1024
    multipart_part_bytes: int = 8 * 1024 * 1024  # S3 needs at least 5 MiB per part but the last
    part_attempts: int = 3  # tries per part before the object goes back to the queue


@dataclass
class GatewaySettings:
    """The long-running service: DICOM receiver, drop folders, health/metrics port."""

    ae_title: str = "MEDSENDX"
    dicom_port: int = 11112
    allowed_calling_aets: list[str] = field(default_factory=list)  # empty: accept any
    http_port: int = 9042  # not 8042: that is Orthanc's default, often on the same host
    watch_dirs: list[str] = field(default_factory=list)
    originals: Literal["move", "delete"] = "move"
    min_free_bytes: int = 500 * 1024 * 1024
    study_quiet_seconds: float = 0.0  # 0: stream each instance as soon as it is ready
    # Pipeline threads (each handles one object at a time; much of that is waiting for
    # fsync, so more threads than cores pays off) and worker processes doing the CPU work
    # (de-identification, triage, features) beside them; 0 processes: all in the threads.
    workers: int = 4
    processes: int = 2
    # Address the DICOM receiver listens on (the scanner is on the truck's LAN); the
    # health/metrics port always listens on loopback only.
    bind_address: str = "0.0.0.0"
    # A dropped file counts as completely written once its size and mtime have not changed
    # for this long (a USB copy or a slow network share writes in pieces).
    settle_seconds: float = 2.0
    # At most this many objects wait for a pipeline worker; receivers block beyond it
    # (backpressure on the scanner instead of unbounded memory).
    queue_size: int = 32


@dataclass
class TriageSettings:
    """On-device triage and the DICOM results shipped with each study (issue 14)."""

    # Each result kind can be turned off: a Segmentation per series, a TID 1500 report and
    # a Key Object Selection per study (see medsendx.triage.dicom_results).
    results_seg: bool = True
    results_sr: bool = True
    results_kos: bool = True
    key_images: int = 8  # at most this many images referenced by the KOS
    # A learned segmenter (ONNX; contract in medsendx.triage.onnx_segmenter); empty: the
    # exact k-means. A model that cannot be loaded or run falls back to k-means (logged).
    model_path: str = ""


@dataclass
class HubSettings:
    """The HQ hub (``medsendx hub``): worklist and fleet dashboard in the browser."""

    # Where the studies are: a DICOMweb root (dicomweb+http(s)://host/dicom-web, or plain
    # http(s)://...) or a folder of DICOM files; empty: the truck's destination setting.
    source: str = ""
    feature_store: str = ""  # Parquet folder or s3:// prefix; empty: <state_dir>/features
    host: str = "127.0.0.1"  # loopback only unless told; put a TLS reverse proxy in front
    port: int = 8043
    users_file: Path | None = None  # default: <state_dir>/hub-users.txt ("name:argon2 hash" lines)
    cache_path: Path | None = None  # default: <state_dir>/hub-cache.sqlite3 (rebuilt at will)
    # Link to the site's viewer; {study_uid} is replaced, e.g.
    # "http://pacs:8042/ui/app/#/filtered-studies?StudyInstanceUID={study_uid}".
    viewer_url: str = ""
    poll_seconds: float = 10.0  # how often the PACS and the feature store are looked at
    session_hours: float = 12.0
    secure_cookies: Literal["auto", "always", "never"] = "auto"  # auto: when the request is HTTPS
    # Trust an authenticating reverse proxy: the user name in this header, only from these
    # client addresses (both must be set; empty header = sign-in form only).
    trusted_user_header: str = ""
    trusted_proxies: list[str] = field(default_factory=list)
    verify_tls: bool = True


@dataclass
class Settings:
    """Everything MedSendX can be told. Build it with :func:`load_settings`."""

    station_id: str = "REMOTE_MOBILE_CLINIC_01"
    state_dir: Path = Path.home() / ".medsendx"
    secret_path: Path | None = None  # default: <state_dir>/secret.key
    data_dir: Path = Path("../shared/data")  # real sample DICOM files for tests and benches
    log_level: str = "INFO"
    deid: DeidSettings = field(default_factory=DeidSettings)
    pixels: PixelSettings = field(default_factory=PixelSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    s3: S3Settings = field(default_factory=S3Settings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    triage: TriageSettings = field(default_factory=TriageSettings)
    hub: HubSettings = field(default_factory=HubSettings)

    @property
    def secret_file(self) -> Path:
        return self.secret_path or self.state_dir / "secret.key"

    @property
    def quarantine_dir(self) -> Path:
        return self.state_dir / "quarantine"

    @property
    def audit_log(self) -> Path:
        return self.state_dir / "audit.jsonl"

    @property
    def outbox_db(self) -> Path:
        return self.state_dir / "outbox.sqlite3"

    @property
    def destination(self) -> str:
        return self.outbox.destination or str(self.state_dir / "hq")


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a TOML or environment value to the field's declared type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or origin is getattr(__import__("types"), "UnionType", None):
        non_none = [a for a in args if a is not type(None)]
        if value in (None, ""):
            return None
        return _coerce(value, non_none[0], name)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: {value!r} is not a boolean (use true or false)")
    if annotation in (int, float):
        try:
            return annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: {value!r} is not a number") from None
    if annotation is Path:
        return Path(os.path.expanduser(str(value)))
    if annotation is str:
        return str(value)
    if origin is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a table")
        return dict(value)
    return value


def _apply(target: Any, values: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(target))
    known = {f.name for f in dataclasses.fields(target)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a table of settings")
            _apply(current, value, f"{where}.{key}")
        else:
            setattr(target, key, _coerce(value, hints[key], f"{where}.{key}".lstrip(".")))


def _env_values(environ: dict[str, str]) -> dict[str, Any]:
    """Turn MEDSENDX_A__B=v into {"a": {"b": "v"}}."""
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        parts = key[len(ENV_PREFIX):].lower().split("__")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the settings from defaults, a TOML file, the environment and overrides.

    The TOML file is ``config_path``, else ``$MEDSENDX_CONFIG``, else ``./medsendx.toml``
    when it exists. ``overrides`` uses the same nested-dict shape as the TOML file.
    """
    environ = dict(os.environ if environ is None else environ)
    settings = Settings()
    path = config_path or environ.get(ENV_PREFIX + "CONFIG")
    if path is None and Path(DEFAULT_CONFIG_NAME).is_file():
        path = DEFAULT_CONFIG_NAME
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        _apply(settings, data, str(path))
    _apply(settings, _env_values(environ), "environment")
    if overrides:
        _apply(settings, overrides, "command line")
    return settings
