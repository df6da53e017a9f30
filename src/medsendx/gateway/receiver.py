"""The DICOM receiver: a C-STORE SCP (pynetdicom) that stages every object durably.

The scanner is told success (0x0000) only after the object is fsynced into the 0700
staging folder; when free disk is below ``gateway.min_free_bytes`` it is told "out of
resources" (0xA700) and keeps the object, so a full disk never loses a scan. C-ECHO is
answered. Every storage SOP class pynetdicom knows is accepted, in every transfer
syntax (compressed ones included: the object is staged as received, never decoded here).
"""

from __future__ import annotations

import errno
import logging
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
        ae.require_calling_aet = list(gateway.allowed_calling_aets)
        for abstract_syntax, transfer_syntaxes in supported_contexts():
            ae.add_supported_context(abstract_syntax, transfer_syntaxes)
        self.ae = ae

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> "Receiver":
        handlers = [(evt.EVT_C_STORE, self._handle_store), (evt.EVT_C_ECHO, self._handle_echo)]
        self._server = self.ae.start_server(
            (self.settings.bind_address, self.port), block=False, evt_handlers=handlers
        )
        self.port = self._server.server_address[1]
        log_event(log, "receiver listening", ae_title=self.settings.ae_title, port=self.port)
        return self

    def stop(self) -> None:
        """Stop accepting associations; requests in flight finish first."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        log_event(log, "receiver stopped")

    # --- DIMSE handlers -------------------------------------------------------------------
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
