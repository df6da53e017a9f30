"""Deliver by DICOMweb STOW-RS (PS3.18 10.5) with httpx.

Several instances go in one ``multipart/related`` request (bounded in count and bytes, so a
reset on a 4G link loses at most one small request), the file meta telling each part's
transfer syntax. The server's answer is parsed per instance: ReferencedSOPSequence = stored,
FailedSOPSequence = refused for good (with the server's failure reason code). Re-sending an
instance replaces it at the server (STOW stores by SOP Instance UID), so delivery is
idempotent.

Pixel data go JPEG-LS lossless when ``outbox.compress`` is on (Orthanc and the major
DICOMweb servers store it as received); a server that answers 415, or fails an instance with
reason 0xC122 (transfer syntax not supported), gets the uncompressed file instead.
"""

from __future__ import annotations

import ssl
import time
import uuid
from typing import TYPE_CHECKING, Any, Iterator, Sequence
from urllib.parse import urlsplit

import httpx

from medsendx.outbox import OutboxItem
from medsendx.transcode import UNCOMPRESSED_SYNTAXES, WirePayload, prepare_for_wire
from medsendx.transport.base import (
    Checkpoint,
    DeliveryResult,
    TransientBatchError,
    iter_payloads,
    timeouts_from,
)

if TYPE_CHECKING:
    from medsendx.config import Settings

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122


def _sequence(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = body.get(tag) or {}
    return list(element.get("Value") or [])


def _first(entry: dict[str, Any], tag: str) -> Any:
    values = (entry.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def parse_stow_response(body: dict[str, Any]) -> tuple[set[str], dict[str, int | None]]:
    """(stored SOP Instance UIDs, {refused SOP Instance UID: failure reason code})."""
    stored = {str(_first(e, REFERENCED_SOP_INSTANCE_UID)) for e in _sequence(body, REFERENCED_SOP_SEQUENCE)}
    failed: dict[str, int | None] = {}
    for entry in _sequence(body, FAILED_SOP_SEQUENCE):
        uid = _first(entry, REFERENCED_SOP_INSTANCE_UID)
        if uid:
            reason = _first(entry, FAILURE_REASON)
            failed[str(uid)] = int(reason) if reason is not None else None
    stored.discard("None")
    return stored, failed


class DicomWebTransport:
    def __init__(self, url: str, settings: "Settings") -> None:
        self.url = url
        parts = urlsplit(url)
        scheme = parts.scheme.split("+", 1)[1]
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        self.base_url = f"{scheme}://{netloc}{parts.path.rstrip('/')}"
        auth = httpx.BasicAuth(parts.username, parts.password or "") if parts.username else None
        box = settings.outbox
        self.timeouts = timeouts_from(settings)
        self.compress = box.compress
        self.max_batch_objects = max(1, box.batch_max_objects)
        self.max_batch_bytes = max(1, box.batch_max_bytes)
        verify: bool | ssl.SSLContext = box.verify_tls
        if box.verify_tls and box.ca_file:
            verify = ssl.create_default_context(cafile=box.ca_file)
        self.client = httpx.Client(
            auth=auth,
            verify=verify,
            timeout=httpx.Timeout(
                connect=self.timeouts.connect,
                read=self.timeouts.read,
                write=self.timeouts.read,
                pool=self.timeouts.connect,
            ),
            headers={"Accept": "application/dicom+json", "User-Agent": "medsendx"},
        )

    # --- the request ---------------------------------------------------------------------------
    @staticmethod
    def _accepted(compress: bool) -> tuple[str, ...] | None:
        return None if compress else UNCOMPRESSED_SYNTAXES

    def _payload(self, item: OutboxItem, compress: bool) -> WirePayload:
        return prepare_for_wire(item.path, self._accepted(compress), compress=compress)

    def _post(self, payloads: list[WirePayload]) -> tuple[httpx.Response, int]:
        """POST one multipart request; returns (response, bytes of body sent)."""
        boundary = uuid.uuid4().hex
        deadline = time.monotonic() + self.timeouts.total
        sent = 0

        heads = [
            # No transfer-syntax parameter on the part: the file meta says it, and Orthanc
            # (1.10, DICOMweb plugin) silently skips parts whose type carries one.
            f"--{boundary}\r\nContent-Type: application/dicom\r\nContent-Length: {len(p.data)}\r\n\r\n".encode()
            for p in payloads
        ]
        tail = f"--{boundary}--\r\n".encode()
        length = sum(len(h) + len(p.data) + 2 for h, p in zip(heads, payloads)) + len(tail)

        def body() -> Iterator[bytes]:
            # Streamed in slices so that the total timeout is checked while the link crawls.
            nonlocal sent
            pieces = [c for h, p in zip(heads, payloads) for c in (h, p.data, b"\r\n")] + [tail]
            for chunk in pieces:
                for start in range(0, len(chunk), 64 * 1024):
                    if time.monotonic() > deadline:
                        raise TransientBatchError("request exceeded the total timeout", sent)
                    piece = chunk[start:start + 64 * 1024]
                    sent += len(piece)
                    yield piece

        # An explicit length: some servers (Orthanc among them) do not take chunked uploads.
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Content-Length": str(length),
        }
        try:
            response = self.client.post(f"{self.base_url}/studies", content=body(), headers=headers)
        except httpx.TimeoutException:
            raise TransientBatchError("peer timed out", sent) from None
        except httpx.HTTPError as exc:
            raise TransientBatchError(f"connection failed ({type(exc).__name__})", sent) from None
        if time.monotonic() > deadline:
            raise TransientBatchError("request exceeded the total timeout", sent)
        return response, sent

    def send(self, items: Sequence[OutboxItem], checkpoint: Checkpoint) -> list[DeliveryResult]:
        results: list[DeliveryResult] = []
        chunk: list[tuple[OutboxItem, WirePayload]] = []
        chunk_bytes = 0
        accepted = self._accepted(self.compress)
        for item, payload in iter_payloads(items, lambda _item: accepted, self.compress):
            if isinstance(payload, DeliveryResult):
                results.append(payload)
                continue
            if chunk and chunk_bytes + len(payload.data) > self.max_batch_bytes:
                results.extend(self._send_chunk(chunk))
                chunk, chunk_bytes = [], 0
            chunk.append((item, payload))
            chunk_bytes += len(payload.data)
        if chunk:
            results.extend(self._send_chunk(chunk))
        return results

    def _send_chunk(self, ready: list[tuple[OutboxItem, WirePayload]]) -> list[DeliveryResult]:
        """One STOW-RS request; a network fault becomes a transient result per item."""
        try:
            return self._send_ready(ready)
        except TransientBatchError as exc:
            total = sum(len(p.data) for _, p in ready) or 1
            return [
                DeliveryResult(item.id, False, False, exc.reason, wire_bytes=exc.wire_bytes * len(p.data) // total,
                               raw_bytes=p.raw_size)
                for item, p in ready
            ]

    def _send_ready(self, ready: list[tuple[OutboxItem, WirePayload]]) -> list[DeliveryResult]:
        response, _sent = self._post([payload for _, payload in ready])
        status = response.status_code
        if status == 415 and any(p.transcoded for _, p in ready):
            # The server does not take our compressed syntax: send plain from now on.
            self.compress = False
            return self._send_ready([(item, self._payload(item, False)) for item, _ in ready])
        if status >= 500 or status in (401, 403, 404, 408, 429):
            raise TransientBatchError(f"peer answered HTTP {status}", _sent)
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = {}
        stored, failed = parse_stow_response(body if isinstance(body, dict) else {})
        results: list[DeliveryResult] = []
        unclear: list[OutboxItem] = []
        plain_again: list[OutboxItem] = []
        for item, payload in ready:
            uid = item.sop_instance_uid
            size = len(payload.data)
            if uid in stored:
                results.append(DeliveryResult(item.id, True, wire_bytes=size, raw_bytes=payload.raw_size))
            elif uid in failed:
                code = failed[uid]
                if code == TRANSFER_SYNTAX_NOT_SUPPORTED and payload.transcoded:
                    plain_again.append(item)
                    continue
                code_text = f"0x{code:04X}" if code is not None else "no code"
                results.append(DeliveryResult(
                    item.id, False, True, f"peer refused the object (STOW-RS failure reason {code_text})",
                    wire_bytes=size, raw_bytes=payload.raw_size,
                ))
            elif status < 400:
                results.append(DeliveryResult(
                    item.id, False, False, f"peer answered HTTP {status} without a result for the object",
                    wire_bytes=size, raw_bytes=payload.raw_size,
                ))
            else:
                unclear.append(item)
        if unclear and len(ready) == 1:
            item, payload = ready[0]
            results.append(DeliveryResult(
                item.id, False, True, f"peer refused the object (HTTP {status})",
                wire_bytes=len(payload.data), raw_bytes=payload.raw_size,
            ))
        elif unclear:
            # A 4xx for the request without saying which object: ask about each one alone.
            for item in unclear:
                results.extend(self._send_chunk([(item, self._payload(item, self.compress))]))
        if plain_again:
            results.extend(self._send_chunk([(item, self._payload(item, False)) for item in plain_again]))
        return results

    def close(self) -> None:
        self.client.close()
