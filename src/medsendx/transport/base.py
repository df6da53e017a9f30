"""One small interface for every destination, chosen by URL.

A transport takes a batch of outbox items and reports, per item, whether the peer now holds
it (``ok``), refused it for good (``permanent``) or could not be reached (a transient fault,
retried later). It must be idempotent: delivering the same SOP Instance UID twice leaves one
copy at the peer, because after a crash the outbox re-sends whatever was in flight.

URLs::

    dicomweb+http://host:port/dicom-web     STOW-RS (dicomweb+https:// for TLS)
    dimse://AET@host:port                   C-STORE (dimse+tls:// for TLS)
    s3://bucket/prefix                      S3 or an S3-compatible server (settings.s3)
    file:///path  or  /path                 a folder (the embedded default)
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol, Sequence
from urllib.parse import urlsplit

from medsendx.fsutil import is_valid_uid
from medsendx.outbox import OutboxItem

if TYPE_CHECKING:
    from medsendx.config import Settings
    from medsendx.transcode import WirePayload


class TransportError(Exception):
    """The destination URL or settings are unusable (a configuration error)."""


class TransientBatchError(Exception):
    """A network fault for a whole request; ``wire_bytes`` went out before it struck."""

    def __init__(self, reason: str, wire_bytes: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wire_bytes = wire_bytes


@dataclass
class DeliveryResult:
    """What happened to one item of a batch."""

    item_id: int
    ok: bool
    permanent: bool = False  # only meaningful when not ok: the peer refused it for good
    reason: str = ""  # our own words (plus the peer's status code), never a value from the object
    wire_bytes: int = 0  # bytes put on the wire for this item in this attempt (payload share)
    raw_bytes: int = 0


# Persist a transport's resumption data for an item (an S3 UploadId and its parts).
Checkpoint = Callable[[int, "dict[str, Any] | None"], None]


class Transport(Protocol):
    """What the deliverer needs from a destination."""

    url: str
    max_batch_objects: int  # how many items :meth:`send` takes at once

    def send(self, items: Sequence[OutboxItem], checkpoint: Checkpoint) -> list[DeliveryResult]:
        """Deliver ``items``; one result per item, in any order. Raising an exception means
        a transient fault for the whole batch (connection refused, reset, timeout)."""
        ...

    def close(self) -> None: ...


@dataclass
class Timeouts:
    connect: float
    read: float
    total: float


def timeouts_from(settings: "Settings") -> Timeouts:
    box = settings.outbox
    return Timeouts(box.connect_timeout_seconds, box.read_timeout_seconds, box.total_timeout_seconds)


# Query parameters whose values are credentials (pre-signed URLs, API tokens).
_SECRET_QUERY_WORDS = ("token", "key", "secret", "password", "passwd", "pwd", "auth", "sig", "credential",
                       "session", "x-amz-", "jwt", "code")


def redact_url(url: str) -> str:
    """A URL safe to show, log and store: no user name or password (only a DIMSE URL's AE
    title, which is no secret, stays), and the values of query parameters that look like
    credentials replaced by ``REDACTED``. The outbox stores destinations in this form."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    if "@" in parts.netloc and parts.scheme.lower() in ("dimse", "dimse+tls") and parts.username:
        netloc = f"{parts.username}@{netloc}"  # the called AE title
    query = parts.query
    if query:
        pairs = []
        for pair in query.split("&"):
            name, eq, _value = pair.partition("=")
            secret = any(word in name.lower() for word in _SECRET_QUERY_WORDS)
            pairs.append(f"{name}=REDACTED" if secret and eq else pair)
        query = "&".join(pairs)
    return parts._replace(netloc=netloc, query=query, fragment="").geturl()


# Destinations with credentials, by their redacted form: the outbox keeps only the redacted
# URL, and the deliverer gets the full one back here (the secret lives in the settings
# and in this process's memory only). See :func:`remember_destination`.
_FULL_URLS: dict[str, str] = {}


def remember_destination(url: str) -> str:
    """Keep ``url`` (which may carry credentials) in memory and return the redacted form
    to store in the outbox and show; :func:`open_transport` maps it back."""
    key = redact_url(url)
    if key != url:
        _FULL_URLS[key] = url
    return key


def full_url(destination: str, settings: "Settings | None" = None) -> str:
    """The URL with its credentials for a stored (redacted) destination: remembered in
    this process, or the settings' destination when that redacts to the same form."""
    if destination in _FULL_URLS:
        return _FULL_URLS[destination]
    if settings is not None and (settings.outbox.destination or settings.outbox.destination_file):
        from medsendx.config import ConfigError

        try:
            configured = settings.destination
        except ConfigError:
            return destination
        if redact_url(configured) == destination:
            remember_destination(configured)
            return configured
    return destination


def open_transport(url: str, settings: "Settings") -> Transport:
    """The transport for a destination URL (see the module docstring for the forms)."""
    url = full_url(url, settings)  # a stored destination is redacted: its credentials are here
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("", "file"):
        from medsendx.transport.folder import FolderTransport

        return FolderTransport(url, settings)
    if scheme in ("dicomweb+http", "dicomweb+https"):
        from medsendx.transport.dicomweb import DicomWebTransport

        return DicomWebTransport(url, settings)
    if scheme in ("dimse", "dimse+tls"):
        from medsendx.transport.dimse import DimseTransport

        return DimseTransport(url, settings)
    if scheme == "s3":
        from medsendx.transport.s3 import S3Transport

        return S3Transport(url, settings)
    raise TransportError(
        f"unsupported destination scheme {scheme!r} (use dicomweb+http(s)://, dimse://, s3://, file:// or a path)"
    )


def payload_or_refusal(
    item: OutboxItem, accepted: "Iterable[str] | None", compress: bool
) -> "WirePayload | DeliveryResult":
    """The wire bytes for ``item``, or a permanent failure when its file cannot be sent
    at all (gone, or not DICOM); no peer would ever take it, so retrying is pointless."""
    from medsendx.transcode import prepare_for_wire

    if not (uid_is_safe(item.sop_instance_uid) and uid_is_safe(item.study_instance_uid)):
        return DeliveryResult(item.id, False, True, "UID is not a valid DICOM UID")
    try:
        return prepare_for_wire(item.path, accepted, compress=compress)
    except FileNotFoundError:
        return DeliveryResult(item.id, False, True, "queued file is missing")
    except Exception as exc:  # pydicom raises many types for damaged files
        return DeliveryResult(item.id, False, True, f"not a readable DICOM file ({type(exc).__name__})")


_PREPARE_POOL: "ThreadPoolExecutor | None" = None


def iter_payloads(
    items: Sequence[OutboxItem], accepted: "Callable[[OutboxItem], Iterable[str] | None]", compress: bool
) -> "Iterator[tuple[OutboxItem, WirePayload | DeliveryResult]]":
    """:func:`payload_or_refusal` for each item, in order, computed ahead in two worker
    threads: the codec works on the next objects while the link carries this one."""
    global _PREPARE_POOL
    if _PREPARE_POOL is None:
        _PREPARE_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="medsendx-wire")
    futures = [_PREPARE_POOL.submit(payload_or_refusal, item, accepted(item), compress) for item in items]
    try:
        for item, future in zip(items, futures):
            yield item, future.result()
    finally:
        for future in futures:
            future.cancel()


def uid_is_safe(uid: str) -> bool:
    """UIDs become file names and object keys: digits separated by single dots (so never
    ``.`` or ``..``), at most 64 characters."""
    return is_valid_uid(uid)
