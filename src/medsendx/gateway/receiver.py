"""The DICOM receiver: a C-STORE SCP (pynetdicom) that stages every object durably.

The scanner is told success (0x0000) only after the object is fsynced into the 0700
staging folder; when free disk is below ``gateway.min_free_bytes`` it is told "out of
resources" (0xA700) and keeps the object, so a full disk never loses a scan. C-ECHO is
answered. Every storage SOP class pynetdicom knows is accepted, in every transfer
syntax (compressed ones included: the object is staged as received, never decoded here).

Who may push (secure by default): the receiver listens on ``gateway.bind_address``
(loopback unless told the scanner's network), answers only associations that call its own
AE title (``gateway.ae_title``) from a calling AE title in ``gateway.allowed_calling_aets``
(none allowed by default; ``gateway.accept_any_calling_aet`` lifts the check and logs a
warning at start), and with ``gateway.tls_cert_file``/``tls_key_file`` speaks only TLS
(``tls_ca_file`` + ``tls_require_client_cert``: only scanners with a certificate from that
CA). Refused associations get an A-ASSOCIATE-RJ with the standard reason and are logged.
"""

from __future__ import annotations

import errno
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, DEFAULT_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from medsendx.config import GatewaySettings
from medsendx.gateway.logs import get_logger, log_event
from medsendx.gateway.staging import Staging

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700

log = get_logger("medsendx.gateway.receiver")


def supported_contexts() -> list[tuple[str, list[str]]]:
    """(SOP class, transfer syntaxes) the receiver accepts as SCP. The receiver is built
    from this list and so is the conformance statement (``medsendx.conformance``)."""
    return [
        (str(Verification), list(DEFAULT_TRANSFER_SYNTAXES)),
        *((str(c.abstract_syntax), list(ALL_TRANSFER_SYNTAXES)) for c in AllStoragePresentationContexts),
    ]


@dataclass
class StoreOutcome:
    """What the receiver did with one C-STORE request (for metrics)."""

    status: int
    staged: Path | None
    size: int


class Receiver:
    """C-STORE/C-ECHO SCP. ``on_staged(path, size)`` is called after each durable stage;
    it may block (bounded pipeline queue), which slows the scanner down: backpressure."""

    def __init__(
        self,
        gateway: GatewaySettings,
        staging: Staging,
        on_staged: Callable[[Path, int], None],
        on_refused: Callable[[str], None] | None = None,
        port: int | None = None,
    ) -> None:
        self.settings = gateway
        self.staging = staging
        self.on_staged = on_staged
        self.on_refused = on_refused or (lambda reason: None)
        self.port = gateway.dicom_port if port is None else port
        self._server = None

        ae = AE(ae_title=gateway.ae_title)
        # Our side accepts large PDUs: fewer round trips for 0.5 MB CT slices.
        ae.maximum_pdu_size = 0
        # Calling and called AE titles are checked in _handle_requested (so that "nobody
        # allowed" can be expressed and every refusal is logged); pynetdicom's own checks
        # stay on as a second line.
        self.allowed = {aet.strip() for aet in gateway.allowed_calling_aets if aet.strip()}
        ae.require_calling_aet = sorted(self.allowed) if not gateway.accept_any_calling_aet else []
        ae.require_called_aet = True
        self.ssl_context = server_ssl_context(gateway)
        for abstract_syntax, transfer_syntaxes in supported_contexts():
            ae.add_supported_context(abstract_syntax, transfer_syntaxes)
        self.ae = ae

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> "Receiver":
        handlers = [(evt.EVT_C_STORE, self._handle_store), (evt.EVT_C_ECHO, self._handle_echo),
                    (evt.EVT_REQUESTED, self._handle_requested)]
        self._server = self.ae.start_server(
            (self.settings.bind_address, self.port), block=False, evt_handlers=handlers,
            ssl_context=self.ssl_context,
        )
        self.port = self._server.server_address[1]
        log_event(log, "receiver listening", ae_title=self.settings.ae_title, port=self.port,
                  bind_address=self.settings.bind_address, tls=self.ssl_context is not None,
                  client_certificates="required" if self.settings.tls_require_client_cert else "not required")
        if self.settings.accept_any_calling_aet:
            log_event(log, "receiver accepts ANY calling AE title (gateway.accept_any_calling_aet): "
                      "anyone who reaches the port can push objects", logging.WARNING)
        elif not self.allowed:
            log_event(log, "no calling AE title is allowed: every scanner is refused until "
                      "gateway.allowed_calling_aets lists it", logging.WARNING)
        if self.ssl_context is None and self.settings.bind_address not in ("127.0.0.1", "::1", "localhost"):
            log_event(log, "receiver listens beyond loopback without TLS (gateway.tls_cert_file)", logging.WARNING)
        return self

    def alive(self) -> bool:
        """Is the server still listening?"""
        return self._server is not None and self._server.socket.fileno() >= 0

    def stop(self) -> None:
        """Stop accepting associations; requests in flight finish first."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        log_event(log, "receiver stopped")

    # --- DIMSE handlers -------------------------------------------------------------------
    def _handle_requested(self, event: evt.Event) -> None:
        """Refuse an association that calls another AE title or comes from a calling AE
        title not allowed (A-ASSOCIATE-RJ, rejected-permanent, service-user)."""
        request = event.assoc.requestor.primitive
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        if called != self.settings.ae_title.strip():
            diagnostic, why = 0x07, "called AE title not recognised"
        elif not self.settings.accept_any_calling_aet and calling not in self.allowed:
            diagnostic, why = 0x03, "calling AE title not allowed"
        else:
            return
        # AE titles name devices, not patients: logged so that the crew can see who knocked.
        log_event(log, f"association refused: {why}", logging.WARNING, calling_ae_title=calling[:16],
                  called_ae_title=called[:16])
        event.assoc.acse.send_reject(0x01, 0x01, diagnostic)
        event.assoc.kill()  # as pynetdicom does after its own rejections: lets the PDU leave first

    def _handle_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    def _handle_store(self, event: evt.Event) -> int:
        outcome = self.store(event.encoded_dataset)
        return outcome.status

    def store(self, encode: Callable[[], bytes]) -> StoreOutcome:
        """Stage one object (``encode()`` gives its Part 10 bytes) and say what to answer."""
        free = self.staging.free_bytes()
        if free < self.settings.min_free_bytes:
            self.on_refused("disk nearly full")
            log_event(
                log, "store refused: disk nearly full", logging.WARNING,
                status=f"0x{STATUS_OUT_OF_RESOURCES:04X}", free_bytes=free,
            )
            return StoreOutcome(STATUS_OUT_OF_RESOURCES, None, 0)
        try:
            data = encode()
            staged = self.staging.stage_bytes(data)
        except OSError as exc:
            reason = "disk full" if exc.errno == errno.ENOSPC else "could not write the staging file"
            self.on_refused(reason)
            log_event(log, f"store refused: {reason}", logging.ERROR, status=f"0x{STATUS_OUT_OF_RESOURCES:04X}")
            return StoreOutcome(STATUS_OUT_OF_RESOURCES, None, 0)
        log_event(log, "object staged", staged=staged.name, bytes=len(data))
        self.on_staged(staged, len(data))
        return StoreOutcome(STATUS_SUCCESS, staged, len(data))


def server_ssl_context(gateway: GatewaySettings) -> ssl.SSLContext | None:
    """The receiver's TLS context (TLS 1.2 or newer), or None without a certificate."""
    if not gateway.tls_cert_file:
        return None
    from medsendx.config import read_private_file

    # The private key is a secret: refused (ConfigError) when others may read it.
    read_private_file(Path(gateway.tls_key_file or gateway.tls_cert_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(gateway.tls_cert_file, gateway.tls_key_file or None)
    if gateway.tls_ca_file:
        context.load_verify_locations(cafile=gateway.tls_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED if gateway.tls_require_client_cert else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context
