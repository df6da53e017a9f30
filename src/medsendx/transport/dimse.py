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

Speed: files go on the wire as they are encoded (pynetdicom's chunked mode, no decode and
re-encode), with TCP_NODELAY as dcmtk sets it, and a batch is shared by
``outbox.dimse_associations`` associations (2 by default): a PACS handles one object per
association at a time, so a second association keeps it busy while the first waits for
its response. Extra associations open beside the first, never before it, so a peer that
serves one association at a time costs nothing.

``dimse+tls://`` wraps the association in TLS (verification on unless
``outbox.verify_tls`` is false; ``outbox.ca_file`` adds a CA bundle).
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterator, Sequence
from urllib.parse import unquote, urlsplit

import pydicom
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE, _config, evt
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
    uid_is_safe,
)

if TYPE_CHECKING:
    from medsendx.config import Settings

# Send files as they are encoded: by default pynetdicom decodes a file given by path and
# re-encodes it, which costs more CPU than the whole C-STORE exchange. Our contexts offer
# each syntax on its own, so the exact match chunked mode needs is always there.
_config.STORE_SEND_CHUNKED_DATASET = True

MAX_CONTEXTS = 128  # the DICOM limit on presentation contexts per association
WARNING_STATUSES = {0xB000, 0xB006, 0xB007}


class AssociationRejected(TransientBatchError):
    """The peer answered the association request with a rejection (not a network fault)."""


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


def _sop_class_and_syntax(path) -> tuple[str, str]:
    """SOP Class UID and transfer syntax from the file meta group (no data set parsing);
    de-identified files always carry one, others fall back to reading the header."""
    meta = read_file_meta_info(path)
    if "MediaStorageSOPClassUID" in meta and "TransferSyntaxUID" in meta:
        return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)


def _wake_waiter_when_closed(event) -> None:
    """When the connection is gone (state machine back to idle, Sta1), wake a C-STORE
    waiting for its response. pynetdicom pauses the association's own loop during
    ``send_c_store``, so after a reset it would otherwise wait the whole DIMSE timeout
    (a minute by default) for a response that cannot come."""
    if event.next_state == "Sta1":
        event.assoc.dimse.msg_queue.put((None, None))


def _connected(assoc) -> bool:
    """Established and still connected: ``is_established`` lags a reset until the
    association's loop runs, and a C-STORE started in between would wait for nothing."""
    return bool(assoc.is_established) and assoc.dul.state_machine.current_state == "Sta6"


def _no_delay(assoc) -> None:
    """Turn Nagle's algorithm off, as dcmtk does. pynetdicom writes one P-DATA PDU per
    send(); with Nagle on, the last part of each object waits for the peer's delayed ACK
    (~40 ms on Linux), which costs more than the transfer itself on a fast link."""
    raw = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if raw is not None:
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not a TCP socket: nothing to tune


def _in_order(
    items: Sequence[OutboxItem],
    goes_as_is: "Callable[[OutboxItem], bool]",
    accepted: "Callable[[OutboxItem], set[str]]",
    compress: bool,
) -> "Iterator[tuple[OutboxItem, WirePayload | DeliveryResult | None]]":
    """``items`` in order, each with its prepared payload, or None when it goes as it is
    (only the others are read and transcoded, ahead, by :func:`iter_payloads`)."""
    direct = {
        item.id for item in items
        if uid_is_safe(item.sop_instance_uid) and uid_is_safe(item.study_instance_uid) and goes_as_is(item)
    }
    prepared = iter_payloads([i for i in items if i.id not in direct], accepted, compress)
    try:
        for item in items:
            yield (item, None) if item.id in direct else next(prepared)
    finally:
        prepared.close()


def proposed_syntaxes(own: set[str], compress: bool) -> list[str]:
    """Transfer syntaxes proposed for one SOP class, one presentation context each, in
    order of preference (the conformance statement is generated from this)."""
    syntaxes: list[str] = list(LOSSLESS_WIRE_SYNTAXES) if compress else []
    syntaxes += sorted(set(own) - set(syntaxes) - set(UNCOMPRESSED_SYNTAXES))
    return syntaxes + list(UNCOMPRESSED_SYNTAXES)


def _accepted_syntaxes(assoc) -> dict[str, set[str]]:
    """SOP class -> transfer syntaxes the peer accepted on this association."""
    accepted: dict[str, set[str]] = {}
    for context in assoc.accepted_contexts:
        accepted.setdefault(str(context.abstract_syntax), set()).add(str(context.transfer_syntax[0]))
    return accepted


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
        self.associations = max(1, settings.outbox.dimse_associations)
        self._extra_lanes_refused = False  # set once the peer would not take a second association
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
            syntaxes = proposed_syntaxes(own_syntaxes[sop_class], self.compress)
            contexts += [build_context(sop_class, [ts]) for ts in syntaxes]
        return contexts[:MAX_CONTEXTS]

    def send(self, items: Sequence[OutboxItem], checkpoint: Checkpoint) -> list[DeliveryResult]:
        results: list[DeliveryResult] = []
        sop_classes: dict[int, str] = {}
        syntaxes: dict[int, str] = {}
        own: dict[str, set[str]] = {}
        for item in items:
            try:
                sop_class, syntax = _sop_class_and_syntax(item.path)
            except FileNotFoundError:
                results.append(DeliveryResult(item.id, False, True, "queued file is missing"))
                continue
            except Exception as exc:
                results.append(DeliveryResult(item.id, False, True, f"not a readable DICOM file ({type(exc).__name__})"))
                continue
            sop_classes[item.id] = sop_class
            syntaxes[item.id] = syntax
            own.setdefault(sop_class, set()).add(syntax)
        todo = [i for i in items if i.id in sop_classes]
        if not todo:
            return results
        contexts = self._contexts(sorted(own), own)
        deadline = time.monotonic() + self.timeouts.total
        first = self._associate(contexts)  # raises TransientBatchError when the peer is unreachable
        accepted = _accepted_syntaxes(first)

        def accepted_for(item: OutboxItem) -> set[str]:
            return accepted.get(sop_classes[item.id], set())

        def goes_as_is(item: OutboxItem) -> bool:
            """The peer takes the file's own encoding and we would not transcode it:
            stream the spooled file, without reading it here first."""
            own_syntax = syntaxes[item.id]
            return own_syntax in accepted_for(item) and (not self.compress or own_syntax in LOSSLESS_WIRE_SYNTAXES)

        # One queue of payloads (prepared ahead, in priority order) shared by the lanes:
        # whichever association is free takes the next object.
        payloads = _in_order(todo, goes_as_is, accepted_for, self.compress)
        take = threading.Lock()

        def next_payload() -> "tuple[OutboxItem, WirePayload | DeliveryResult | None] | None":
            with take:
                return next(payloads, None)

        def run_lane(assoc) -> None:
            try:
                while _connected(assoc) and time.monotonic() <= deadline:
                    got = next_payload()
                    if got is None:
                        return
                    item, payload = got
                    results.append(self._store(assoc, item, payload, accepted_for(item)))
            finally:
                _end(assoc)

        def extra_lane() -> None:
            # Opened beside the first lane, never before it: a peer that serves one
            # association at a time (storescp, small PACS) answers this one only after the
            # first is released, and then it finds the queue empty and ends.
            try:
                assoc = self._associate(contexts)
            except AssociationRejected:
                self._extra_lanes_refused = True  # e.g. a limit per calling AE: do not ask again
                return
            except TransientBatchError:
                return  # a flaky link or a busy peer: try again with the next batch
            if _accepted_syntaxes(assoc) != accepted:  # only equal lanes can share one queue
                self._extra_lanes_refused = True
                _end(assoc)
                return
            run_lane(assoc)

        extra = 0 if self._extra_lanes_refused else min(self.associations, len(todo)) - 1
        helpers = [threading.Thread(target=extra_lane, name="medsendx-cstore", daemon=True) for _ in range(extra)]
        for thread in helpers:
            thread.start()
        try:
            run_lane(first)
        finally:
            for thread in helpers:
                thread.join()
            with take:
                payloads.close()
        done = {r.item_id for r in results}
        reason = "association exceeded the total timeout" if time.monotonic() > deadline else "association ended early"
        results += [DeliveryResult(i.id, False, False, reason) for i in todo if i.id not in done]
        return results

    def _associate(self, contexts: list):
        ae = AE(ae_title=self.calling_aet)
        ae.connection_timeout = self.timeouts.connect
        ae.acse_timeout = self.timeouts.read
        ae.dimse_timeout = self.timeouts.read
        ae.network_timeout = self.timeouts.read
        # We receive only small C-STORE responses; what we send is cut to the peer's limit.
        ae.maximum_pdu_size = 0
        assoc = ae.associate(
            self.host, self.port, contexts=contexts, ae_title=self.called_aet, max_pdu=0, tls_args=self.tls_args,
            evt_handlers=[(evt.EVT_FSM_TRANSITION, _wake_waiter_when_closed)],
        )
        if not assoc.is_established:
            if assoc.is_rejected:
                raise AssociationRejected("peer rejected the association")
            # pynetdicom swallows the TLS error; find out again so the reason says what to fix.
            raise TransientBatchError(self._tls_failure() or "could not associate with the peer")
        _no_delay(assoc)
        return assoc

    def _tls_failure(self) -> str | None:
        """Why a TLS handshake with the peer fails, in our words; None when it succeeds,
        the link is plain TCP or the peer cannot be reached at all."""
        if self.tls_args is None:
            return None
        context, hostname = self.tls_args
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeouts.connect) as raw:
                with context.wrap_socket(raw, server_hostname=hostname):
                    return None
        except ssl.SSLCertVerificationError as exc:
            if exc.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
                return "TLS: the peer's certificate is not issued for this host name"
            return "TLS: the peer's certificate is not trusted (outbox.ca_file must name the CA that signed it)"
        except ssl.SSLError:
            return "TLS handshake with the peer failed (is it a TLS port?)"
        except OSError:
            return None

    def _store(
        self, assoc, item: OutboxItem, payload: "WirePayload | DeliveryResult | None", accepted: set[str]
    ) -> DeliveryResult:
        """C-STORE one object; ``payload`` None means the spooled file goes as it is."""
        if not accepted:
            return DeliveryResult(item.id, False, True, "peer accepts no transfer syntax for this SOP class")
        if isinstance(payload, DeliveryResult):
            return payload
        if payload is not None and payload.transfer_syntax not in {UID(s) for s in accepted}:
            return DeliveryResult(item.id, False, True, "no accepted transfer syntax can carry the object")
        as_is = payload is None or not payload.transcoded
        size = item.size if payload is None else len(payload.data)
        raw_size = item.size if payload is None else payload.raw_size
        # pynetdicom streams a file's encoded data set as it is (chunked mode, set above):
        # the spooled file itself when it goes unchanged, else the transcoded bytes written
        # next to it (the temp name follows the spool's convention for leftovers).
        wire_file = item.path if as_is else item.path.parent / f".tmp-{os.getpid()}-wire-{item.id}.dcm"
        try:
            if not as_is:
                assert payload is not None
                wire_file.write_bytes(payload.data)
            try:
                status = assoc.send_c_store(wire_file)
            except AttributeError:  # raised before sending: the file meta lacks a UID that
                # chunked mode reads from there, so let pynetdicom decode the data set instead
                status = assoc.send_c_store(pydicom.dcmread(wire_file))
        except Exception as exc:  # a dropped connection surfaces in several ways
            return DeliveryResult(item.id, False, False, f"C-STORE failed ({type(exc).__name__})", wire_bytes=size)
        finally:
            if not as_is:
                wire_file.unlink(missing_ok=True)
        if not status or "Status" not in status:
            return DeliveryResult(item.id, False, False, "no C-STORE response (connection lost or timed out)", wire_bytes=size)
        code = int(status.Status)
        stored, permanent = store_status_outcome(code)
        if stored:
            return DeliveryResult(item.id, True, wire_bytes=size, raw_bytes=raw_size)
        return DeliveryResult(
            item.id, False, permanent, f"peer refused the object (C-STORE status 0x{code:04X})", wire_bytes=size,
            raw_bytes=raw_size,
        )

    def close(self) -> None:
        pass
