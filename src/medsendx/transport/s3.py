"""Deliver to S3 or an S3-compatible server: ``s3://bucket/prefix``.

* Key: ``<prefix>/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` (de-identified UIDs only), so
  a re-send overwrites the same key: one object at the peer.
* Every request asks for server-side encryption (``s3.server_side_encryption``) and carries
  a SHA-256 checksum of our bytes, which the server verifies before storing.
* Objects above ``s3.multipart_threshold_bytes`` go multipart. Each part is retried on its
  own (``s3.part_attempts``); after each part the UploadId and the finished parts are
  saved in the outbox row, so an upload interrupted by a dead link or a killed process
  resumes with the missing parts only. The saved state carries the SHA-256 of the payload:
  if the bytes to send ever differ, the old upload is aborted and a new one starts.
* Endpoint and credentials: ``[s3]`` settings, else the usual AWS environment/profile;
  the client comes from :func:`medsendx.s3client.s3_client` (TLS as ``[outbox]`` says).
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from medsendx.outbox import OutboxItem
from medsendx.s3client import s3_client
from medsendx.transcode import ANY_SYNTAX, WirePayload
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

MIN_PART_BYTES = 5 * 1024 * 1024


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _error_code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "error"))
    return type(exc).__name__


class S3Transport:
    def __init__(self, url: str, settings: "Settings") -> None:
        self.url = url
        parts = urlsplit(url)
        if not parts.netloc:
            raise TransportError("S3 destinations look like s3://bucket/prefix")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        s3 = settings.s3
        box = settings.outbox
        self.sse = s3.server_side_encryption
        self.threshold = max(1, s3.multipart_threshold_bytes)
        self.part_bytes = max(MIN_PART_BYTES, s3.multipart_part_bytes)
        self.part_attempts = max(1, s3.part_attempts)
        self.compress = box.compress
        self.max_batch_objects = max(1, box.batch_max_objects)
        self.timeouts = timeouts_from(settings)
        self.client = s3_client(
            settings,
            connect_timeout=self.timeouts.connect,
            read_timeout=self.timeouts.read,
            max_attempts=1,  # our own retry policy rules
        )

    def key_for(self, item: OutboxItem) -> str:
        name = f"{item.study_instance_uid}/{item.sop_instance_uid}.dcm"
        return f"{self.prefix}/{name}" if self.prefix else name

    def _encryption(self) -> dict[str, str]:
        return {"ServerSideEncryption": self.sse} if self.sse else {}

    def send(self, items: Sequence[OutboxItem], checkpoint: Checkpoint) -> list[DeliveryResult]:
        results = []
        for item, payload in iter_payloads(items, lambda _item: ANY_SYNTAX, self.compress):
            if isinstance(payload, DeliveryResult):
                results.append(payload)
                continue
            try:
                if len(payload.data) > self.threshold:
                    wire = self._multipart(item, payload, checkpoint)
                else:
                    wire = self._put(item, payload)
            except TransientBatchError as exc:
                results.append(DeliveryResult(item.id, False, False, exc.reason, wire_bytes=exc.wire_bytes))
                continue
            except (ClientError, BotoCoreError) as exc:
                results.append(DeliveryResult(item.id, False, False, f"S3 request failed ({_error_code(exc)})"))
                continue
            results.append(DeliveryResult(item.id, True, wire_bytes=wire, raw_bytes=payload.raw_size))
        return results

    def _put(self, item: OutboxItem, payload: WirePayload) -> int:
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.key_for(item),
            Body=payload.data,
            ContentType="application/dicom",
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=_b64_sha256(payload.data),
            **self._encryption(),
        )
        return len(payload.data)

    # --- multipart with resumption -------------------------------------------------------------
    def _multipart(self, item: OutboxItem, payload: WirePayload, checkpoint: Checkpoint) -> int:
        key = self.key_for(item)
        digest = hashlib.sha256(payload.data).hexdigest()
        state = self._resumable_state(item, key, digest)
        if state is None:
            created = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType="application/dicom", ChecksumAlgorithm="SHA256",
                **self._encryption(),
            )
            state = {"upload_id": created["UploadId"], "key": key, "sha256": digest,
                     "part_bytes": self.part_bytes, "parts": {}}
            checkpoint(item.id, state)
        part_bytes = int(state["part_bytes"])
        deadline = time.monotonic() + self.timeouts.total
        wire = 0
        count = (len(payload.data) + part_bytes - 1) // part_bytes
        for number in range(1, count + 1):
            if str(number) in state["parts"]:
                continue  # uploaded before the interruption
            if time.monotonic() > deadline:
                raise TransientBatchError("upload exceeded the total timeout", wire)
            body = payload.data[(number - 1) * part_bytes: number * part_bytes]
            checksum = _b64_sha256(body)
            for attempt in range(1, self.part_attempts + 1):
                try:
                    wire += len(body)
                    answer = self.client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=state["upload_id"], PartNumber=number, Body=body,
                        ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum,
                    )
                    break
                except (ClientError, BotoCoreError) as exc:
                    if _error_code(exc) == "NoSuchUpload":
                        checkpoint(item.id, None)  # the server dropped it: start over next time
                        raise TransientBatchError("multipart upload expired at the server", wire) from None
                    if attempt == self.part_attempts:
                        raise TransientBatchError(f"S3 part upload failed ({_error_code(exc)})", wire) from None
                    time.sleep(min(2.0, 0.2 * 2 ** attempt))
            state["parts"][str(number)] = {"ETag": answer["ETag"], "ChecksumSHA256": checksum}
            checkpoint(item.id, state)
        parts = [
            {"PartNumber": int(n), "ETag": p["ETag"], "ChecksumSHA256": p["ChecksumSHA256"]}
            for n, p in sorted(state["parts"].items(), key=lambda kv: int(kv[0]))
        ]
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=state["upload_id"], MultipartUpload={"Parts": parts},
            )
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchUpload", "InvalidPart", "InvalidPartOrder"):
                checkpoint(item.id, None)
            raise
        return wire

    def _resumable_state(self, item: OutboxItem, key: str, digest: str) -> dict[str, Any] | None:
        """The saved upload of this item, checked against the server, or None to start anew."""
        state = item.transfer_state
        if not state or state.get("key") != key:
            return None
        if state.get("sha256") != digest:
            self._abort(key, state.get("upload_id"))
            return None
        try:
            listed = self.client.list_parts(Bucket=self.bucket, Key=key, UploadId=state["upload_id"])
        except ClientError as exc:
            if _error_code(exc) == "NoSuchUpload":
                return None
            raise
        present = {str(p["PartNumber"]): p["ETag"] for p in listed.get("Parts", [])}
        # Keep only parts the server really holds with the ETag we recorded.
        state["parts"] = {n: p for n, p in state.get("parts", {}).items() if present.get(n) == p["ETag"]}
        return state

    def _abort(self, key: str, upload_id: str | None) -> None:
        if not upload_id:
            return
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError):
            pass  # an upload nobody completes expires under the bucket's lifecycle rules

    def close(self) -> None:
        self.client.close()
