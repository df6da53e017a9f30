"""Deliver by DICOM C-STORE (pynetdicom) to ``dimse://AET@host:port``.

For each SOP class in a batch we offer one presentation context per transfer syntax:
JPEG-LS Lossless, JPEG 2000 Lossless, the object's own syntax, Explicit and Implicit VR
Little Endian. The peer accepts the ones it can store; each object then goes in the best
accepted syntax (compressed when ``outbox.compress`` is on and the peer took a lossless
codec, else as it is, else uncompressed).

Status handling (PS3.4 Annex B): success and warnings (0xB000, 0xB006, 0xB007) = stored;
0xA7xx (out of resources) and a dropped association = transient, retried; other failures
(0xA9xx data set does not match the SOP class, 0xCxxx cannot understand, 0x0122 SOP class
not supported...) = refused for good. Re-sending a SOP Instance UID replaces the stored
instance at a PACS, so delivery is idempotent.

``dimse+tls://`` wraps the association in TLS (verification on unless
``outbox.verify_tls`` is false; ``outbox.ca_file`` adds a CA bundle).
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from typing import TYPE_CHECKING, Sequence
from urllib.parse import unquote, urlsplit

import pydicom
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.presentation import build_context

from medsendx.outbox import OutboxItem
from medsendx.transcode import LOSSLESS_WIRE_SYNTAXES, UNCOMPRESSED_SYNTAXES, WirePayload
from medsendx.transport.base import (
    Checkpoint,
    DeliveryResult,
    TransientBatchError,
    TransportError,
    iter_payloads,
    timeouts_from,
)

if TYPE_CHECKING:
    from medsendx.config import Settings

MAX_CONTEXTS = 128  # the DICOM limit on presentation contexts per association
WARNING_STATUSES = {0xB000, 0xB006, 0xB007}


def store_status_outcome(status: int) -> tuple[bool, bool]:
    """(stored, permanent refusal) for a C-STORE status code."""
    if status == 0x0000 or status in WARNING_STATUSES or (status & 0xF000) == 0xB000:
        return True, False
    if (status & 0xFF00) == 0xA700:
        return False, False  # out of resources: the PACS disk may have room later
    return False, True


def _end(assoc) -> None:
    """Release the association, and always shut its socket: after a reset or a timeout
    pynetdicom's (non-daemon) reader thread may sit in recv() on a half-open connection,
    which would keep the peer waiting and this process from exiting."""
    try:
        if assoc.is_established:
            assoc.release()
    finally:
        raw = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        if raw is not None:
            try:
                raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed: the clean case


class DimseTransport:
    def __init__(self, url: str, settings: "Settings") -> None:
        self.url = url
        parts = urlsplit(url)
        if not parts.username or not parts.hostname or not parts.port:
            raise TransportError("DIMSE destinations look like dimse://AET@host:port")
        self.called_aet = unquote(parts.username)
        self.host = parts.hostname
        self.port = parts.port
        self.calling_aet = settings.gateway.ae_title
        self.compress = settings.outbox.compress
        self.max_batch_objects = max(1, settings.outbox.batch_max_objects) * 4  # cheap per object
        self.timeouts = timeouts_from(settings)
        self.tls_args: tuple[ssl.SSLContext, str] | None = None
        if parts.scheme.lower() == "dimse+tls":
            context = ssl.create_default_context(cafile=settings.outbox.ca_file or None)
            if not settings.outbox.verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self.tls_args = (context, self.host)

    def _contexts(self, sop_classes: list[str], own_syntaxes: dict[str, set[str]]) -> list:
        contexts = []
        for sop_class in sop_classes:
            syntaxes: list[str] = []
            if self.compress:
                syntaxes += list(LOSSLESS_WIRE_SYNTAXES)
            syntaxes += sorted(own_syntaxes[sop_class] - set(syntaxes) - set(UNCOMPRESSED_SYNTAXES))
            syntaxes += list(UNCOMPRESSED_SYNTAXES)
            contexts += [build_context(sop_class, [ts]) for ts in syntaxes]
        return contexts[:MAX_CONTEXTS]

    def send(self, items: Sequence[OutboxItem], checkpoint: Checkpoint) -> list[DeliveryResult]:
        results: list[DeliveryResult] = []
        headers: dict[int, pydicom.Dataset] = {}
        for item in items:
            try:
                headers[item.id] = pydicom.dcmread(item.path, stop_before_pixels=True)
                headers[item.id].SOPClassUID  # noqa: B018 - must be present to choose a context
            except FileNotFoundError:
                results.append(DeliveryResult(item.id, False, True, "queued file is missing"))
            except Exception as exc:
                results.append(DeliveryResult(item.id, False, True, f"not a readable DICOM file ({type(exc).__name__})"))
        todo = [i for i in items if i.id in headers]
        if not todo:
            return results
        own: dict[str, set[str]] = {}
        for item in todo:
            ds = headers[item.id]
            own.setdefault(str(ds.SOPClassUID), set()).add(str(ds.file_meta.TransferSyntaxUID))
        ae = AE(ae_title=self.calling_aet)
        ae.connection_timeout = self.timeouts.connect
        ae.acse_timeout = self.timeouts.read
        ae.dimse_timeout = self.timeouts.read
        ae.network_timeout = self.timeouts.read
        ae.maximum_pdu_size = 0  # take whatever PDU size the peer offers to send
        deadline = time.monotonic() + self.timeouts.total
        assoc = ae.associate(
            self.host, self.port, contexts=self._contexts(sorted(own), own), ae_title=self.called_aet,
            max_pdu=0, tls_args=self.tls_args,
        )
        if not assoc.is_established:
            if assoc.is_rejected:
                raise TransientBatchError("peer rejected the association")
            raise TransientBatchError("could not associate with the peer")
        try:
            accepted: dict[str, set[str]] = {}
            for context in assoc.accepted_contexts:
                accepted.setdefault(str(context.abstract_syntax), set()).add(str(context.transfer_syntax[0]))

            def accepted_for(item: OutboxItem) -> set[str]:
                return accepted.get(str(headers[item.id].SOPClassUID), set())

            for position, (item, payload) in enumerate(iter_payloads(todo, accepted_for, self.compress)):
                if not assoc.is_established or time.monotonic() > deadline:
                    reason = "association ended early" if not assoc.is_established else "association exceeded the total timeout"
                    results += [DeliveryResult(i.id, False, False, reason) for i in todo[position:]]
                    break
                results.append(self._store(assoc, item, payload, accepted_for(item)))
        finally:
            _end(assoc)
        return results

    def _store(self, assoc, item: OutboxItem, payload: WirePayload | DeliveryResult, accepted: set[str]) -> DeliveryResult:
        if not accepted:
            return DeliveryResult(item.id, False, True, "peer accepts no transfer syntax for this SOP class")
        if isinstance(payload, DeliveryResult):
            return payload
        if payload.transfer_syntax not in {UID(s) for s in accepted}:
            return DeliveryResult(item.id, False, True, "no accepted transfer syntax can carry the object")
        size = len(payload.data)
        # pynetdicom sends a file's encoded dataset as it is (no decode / re-encode) when
        # given a path; the temp name follows the spool's convention for leftovers.
        wire_file = item.path.parent / f".tmp-{os.getpid()}-wire-{item.id}.dcm"
        try:
            wire_file.write_bytes(payload.data)
            status = assoc.send_c_store(wire_file)
        except Exception as exc:  # a dropped connection surfaces in several ways
            return DeliveryResult(item.id, False, False, f"C-STORE failed ({type(exc).__name__})", wire_bytes=size)
        finally:
            wire_file.unlink(missing_ok=True)
        if not status or "Status" not in status:
            return DeliveryResult(item.id, False, False, "no C-STORE response (connection lost or timed out)", wire_bytes=size)
        code = int(status.Status)
        stored, permanent = store_status_outcome(code)
        if stored:
            return DeliveryResult(item.id, True, wire_bytes=size, raw_bytes=payload.raw_size)
        return DeliveryResult(
            item.id, False, permanent, f"peer refused the object (C-STORE status 0x{code:04X})", wire_bytes=size,
            raw_bytes=payload.raw_size,
        )

    def close(self) -> None:
        pass
