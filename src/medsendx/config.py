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
PixelPolicy = Literal["redact-detected", "quarantine", "redact-identifying", "redact-all-text"]


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


# Text the default policy may leave in place: laterality, view and orientation labels
# (each word of a detected line must be one of these). See README "Pixel cleaner".
DEFAULT_ALLOWED_MARKERS = [
    "L", "R", "LT", "RT", "LEFT", "RIGHT", "CC", "MLO", "ML", "LM", "XCCL", "XCCM", "AT", "SIO",
    "LCC", "RCC", "LMLO", "RMLO", "LML", "RML", "AP", "PA", "LAT", "LATERAL", "OBL", "LAO",
    "RAO", "LPO", "RPO", "A", "P", "H", "F", "S", "I",
]  # fmt: skip


@dataclass
class PixelSettings:
    """What to do with objects that may show identity in their pixels."""

    # "redact-detected" (default): every text region the learned detector finds is blanked
    # unless it reads as an allowed marker. "redact-identifying" / "redact-all-text": the
    # older tesseract word policies (opt-in; they never attest clean pixels).
    # "quarantine": nothing is redacted; every object the default would redact or run the
    # detector on goes to quarantine.
    policy: PixelPolicy = "redact-detected"
    # Old policies: OCR every object with pixels (the default policy screens every object).
    ocr_every_object: bool = False
    # Default policy: screen every object with pixels (CT and MR included), not only those
    # whose header puts them at risk. Turning it off restores the header-only choice.
    screen_every_object: bool = True
    allowed_markers: list[str] = field(default_factory=lambda: list(DEFAULT_ALLOWED_MARKERS))
    # Detector boxes are grown by this many pixels (plus a fifth of the text height).
    margin: int = 3
    # More than this share of a frame detected as text: it cannot be told from anatomy
    # (or it is a page of text): quarantine rather than blank the image away.
    max_blanked_share: float = 0.35
    # Known fixed layouts: manufacturer/model -> list of [x0, y0, x1, y1] boxes to blank.
    fixed_regions: dict[str, list[list[int]]] = field(default_factory=dict)

    def checks_every_object(self) -> bool:
        """Whether every object with pixels goes to the cleaner (screened or read)."""
        if self.policy in ("redact-detected", "quarantine"):
            return self.screen_every_object
        return self.ocr_every_object


@dataclass
class OutboxSettings:
    """Delivery queue and retry policy."""

    destination: str = ""  # empty: destination_file, else <state_dir>/hq (a folder standing in for HQ)
    # A file (mode 0600, owned by this user) holding the destination URL: a URL with a
    # user and password (or a token) is kept there rather than in a shared settings file.
    destination_file: str = ""
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

    ae_title: str = "MEDSENDX"  # the called AE title a scanner must use (checked)
    dicom_port: int = 11112
    # Scanners allowed to push (their calling AE titles). Empty: every association is
    # refused unless accept_any_calling_aet is set (which logs a warning at start).
    allowed_calling_aets: list[str] = field(default_factory=list)
    accept_any_calling_aet: bool = False
    # TLS on the receiving side (DICOM over TLS, PS3.15 Annex B): a certificate and key make
    # the receiver speak TLS only; tls_ca_file + tls_require_client_cert make it accept
    # only scanners with a certificate signed by that CA.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    tls_require_client_cert: bool = False
    http_port: int = 9042  # not 8042: that is Orthanc's default, often on the same host
    watch_dirs: list[str] = field(default_factory=list)
    originals: Literal["move", "delete"] = "move"
    min_free_bytes: int = 500 * 1024 * 1024
    study_quiet_seconds: float = 0.0  # 0: stream each instance as soon as it is ready
    # Streaming (no study hold): a study's triage results (SEG / SR / KOS) are built once it
    # has had no new image for this long; more images later make a new release. 0: none.
    results_quiet_seconds: float = 30.0
    # Pipeline threads (each handles one object at a time; much of that is waiting for
    # fsync, so more threads than cores pays off) and worker processes doing the CPU work
    # (de-identification, triage, features) beside them; 0 processes: all in the threads.
    workers: int = 4
    processes: int = 2
    # Address the DICOM receiver listens on: loopback by default; set the truck's LAN
    # address (the scanner's network) to receive from the scanner. The health/metrics
    # port always listens on loopback only.
    bind_address: str = "127.0.0.1"
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
        """The destination URL, credentials included (only redacted forms are stored or shown)."""
        if self.outbox.destination:
            return self.outbox.destination
        if self.outbox.destination_file:
            return read_private_file(Path(self.outbox.destination_file)).strip()
        return str(self.state_dir / "hq")


def read_private_file(path: Path) -> str:
    """The text of a file holding a secret; refused (ConfigError) unless it is a regular
    file of this user (or root) that nobody else may read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        info = os.fstat(fd)
        if info.st_uid not in (os.getuid(), 0):
            raise ConfigError(f"{path}: belongs to another user (it holds a secret)")
        if info.st_mode & 0o077:
            raise ConfigError(f"{path}: others may read it (mode {info.st_mode & 0o777:04o}; it holds a secret: chmod 600)")
        with os.fdopen(fd, "r", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


# Variables read where the compiled helpers are loaded (medsendx.native), before and apart
# from any Settings object: the loader checks their values but keeps them out of Settings.
PROCESS_VARIABLES = {
    ENV_PREFIX + "DEID_NATIVE": bool,  # 0: the de-identifier's Python element walk
    ENV_PREFIX + "TRIAGE_NATIVE": bool,  # 0: triage's numpy clustering
    ENV_PREFIX + "SCREEN_NATIVE": bool,  # 0: the pixel screen's numpy passes
    ENV_PREFIX + "NATIVE_CACHE": Path,  # where compiled helpers are cached
}

# Ranges checked after loading: key path -> (lowest, highest); None = unbounded.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "deid.max_date_shift_days": (1, 36500),
    "outbox.backoff_base_seconds": (0.001, None),
    "outbox.backoff_cap_seconds": (0.001, None),
    "outbox.connect_timeout_seconds": (0.001, None),
    "outbox.read_timeout_seconds": (0.001, None),
    "outbox.total_timeout_seconds": (0.001, None),
    "outbox.batch_max_objects": (1, None),
    "outbox.batch_max_bytes": (1, None),
    "outbox.dimse_associations": (1, 64),
    "s3.multipart_threshold_bytes": (1, None),
    "s3.multipart_part_bytes": (5 * 1024 * 1024, 5 * 1024 ** 3),
    "s3.part_attempts": (1, 100),
    "gateway.dicom_port": (0, 65535),
    "gateway.http_port": (0, 65535),
    "gateway.min_free_bytes": (0, None),
    "gateway.study_quiet_seconds": (0, None),
    "gateway.results_quiet_seconds": (0, None),
    "gateway.workers": (1, 256),
    "gateway.processes": (0, 256),
    "gateway.settle_seconds": (0, None),
    "gateway.queue_size": (1, None),
}


@dataclass(frozen=True)
class ConfigIssue:
    """One wrong setting: its key path (``outbox.batch_max_objects``, or the environment
    variable's name), where it came from and what is wrong, in our words."""

    key: str
    source: str  # the TOML file, "environment" or "command line"
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.key}: {self.message}"


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
            raise ConfigError(f"{value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{value!r} is not a boolean (use true or false)")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{value!r} is not a number")
        try:
            number = annotation(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{value!r} is not a number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ConfigError(f"{value!r} is not a finite number")
        return number
    if annotation is Path:
        return Path(os.path.expanduser(str(value)))
    if annotation is str:
        return str(value)
    if origin is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError("expected a list")
        return list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError("expected a table")
        return dict(value)
    return value


def _apply(target: Any, values: dict[str, Any], where: str, issues: list[ConfigIssue], prefix: str = "") -> None:
    """Set ``values`` on ``target``; every wrong key is added to ``issues`` (all of them,
    not just the first, so that ``config check`` can list each)."""
    hints = typing.get_type_hints(type(target))
    known = {f.name for f in dataclasses.fields(target)}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in known:
            issues.append(ConfigIssue(path, where, f"unknown setting {key!r} (known: {', '.join(sorted(known))})"))
            continue
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                issues.append(ConfigIssue(path, where, "expected a table of settings"))
                continue
            _apply(current, value, where, issues, prefix=f"{path}.")
            continue
        try:
            setattr(target, key, _coerce(value, hints[key], path))
        except ConfigError as exc:
            issues.append(ConfigIssue(path, where, str(exc)))


def _env_values(environ: dict[str, str], issues: list[ConfigIssue]) -> dict[str, Any]:
    """Turn MEDSENDX_A__B=v into {"a": {"b": "v"}} (process-level variables checked apart)."""
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        if key in PROCESS_VARIABLES:
            try:
                _coerce(value, PROCESS_VARIABLES[key], key)
            except ConfigError as exc:
                issues.append(ConfigIssue(key, "environment", str(exc)))
            continue
        parts = key[len(ENV_PREFIX):].lower().split("__")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[parts[-1]] = value
    return out


def _check_ranges(settings: Settings, issues: list[ConfigIssue]) -> None:
    for key, (low, high) in RANGES.items():
        section, _, name = key.rpartition(".")
        value = getattr(getattr(settings, section) if section else settings, name)
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            issues.append(ConfigIssue(key, "settings", f"{value!r} is out of range (must be {bounds})"))
    if settings.outbox.destination_file and not settings.outbox.destination:
        try:
            read_private_file(Path(settings.outbox.destination_file))
        except ConfigError as exc:
            issues.append(ConfigIssue("outbox.destination_file", "settings", str(exc)))
    gw = settings.gateway
    if bool(gw.tls_cert_file) != bool(gw.tls_key_file):
        issues.append(ConfigIssue("gateway.tls_key_file", "settings",
                                  "tls_cert_file and tls_key_file must be given together"))
    if gw.tls_require_client_cert and not (gw.tls_ca_file and gw.tls_cert_file):
        issues.append(ConfigIssue("gateway.tls_require_client_cert", "settings",
                                  "needs tls_ca_file (the scanners' CA) and a certificate and key"))


def validate(
    config_path: str | os.PathLike[str] | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[Settings | None, list[ConfigIssue]]:
    """Load the settings as :func:`load_settings` does and report every wrong key:
    ``(settings, [])`` when all is well, else ``(None, issues)`` with each key path,
    where it came from and why it is wrong."""
    environ = dict(os.environ if environ is None else environ)
    issues: list[ConfigIssue] = []
    settings = Settings()
    path = config_path or environ.get(ENV_PREFIX + "CONFIG")
    if path is None and Path(DEFAULT_CONFIG_NAME).is_file():
        path = DEFAULT_CONFIG_NAME
    if path is not None:
        path = Path(path)
        if not path.is_file():
            return None, [ConfigIssue("", str(path), "config file not found")]
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            return None, [ConfigIssue("", str(path), f"not valid TOML ({exc})")]
        except OSError as exc:
            return None, [ConfigIssue("", str(path), f"cannot be read ({exc.strerror or type(exc).__name__})")]
        _apply(settings, data, str(path), issues)
    _apply(settings, _env_values(environ, issues), "environment", issues)
    if overrides:
        _apply(settings, overrides, "command line", issues)
    if not issues:
        _check_ranges(settings, issues)
    return (None, issues) if issues else (settings, [])


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the settings from defaults, a TOML file, the environment and overrides.

    The TOML file is ``config_path``, else ``$MEDSENDX_CONFIG``, else ``./medsendx.toml``
    when it exists. ``overrides`` uses the same nested-dict shape as the TOML file.
    Raises :class:`ConfigError` naming the first wrong key (see :func:`validate` for all).
    """
    settings, issues = validate(config_path, environ, overrides)
    if settings is None:
        raise ConfigError(str(issues[0]))
    return settings
