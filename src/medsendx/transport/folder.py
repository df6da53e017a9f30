"""Deliver to a folder (the embedded default, or a mounted share standing in for HQ).

Layout: ``<root>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``; names come from the
de-identified UIDs only. Each file is written atomically (temp file, fsync, rename), so a
reader at HQ never sees half a file and a re-send replaces the file with identical content:
one copy, whatever happens.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence
from urllib.parse import unquote, urlsplit

from medsendx.fsutil import atomic_write_bytes
from medsendx.outbox import OutboxItem
from medsendx.transcode import ANY_SYNTAX
from medsendx.transport.base import Checkpoint, DeliveryResult, TransportError, iter_payloads

if TYPE_CHECKING:
    from medsendx.config import Settings


def folder_from_url(url: str) -> Path:
    if url.startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise TransportError("file:// URLs must name a local path (file:///path)")
        return Path(unquote(parts.path))
    return Path(url)


class FolderTransport:
    max_batch_objects = 32

    def __init__(self, url: str, settings: "Settings") -> None:
        self.url = url
        self.root = folder_from_url(url)
        self.compress = settings.outbox.compress

    def target_path(self, item: OutboxItem) -> Path:
        return self.root / item.study_instance_uid / f"{item.sop_instance_uid}.dcm"

    def send(self, items: Sequence[OutboxItem], checkpoint: Checkpoint) -> list[DeliveryResult]:
        results = []
        for item, payload in iter_payloads(items, lambda _item: ANY_SYNTAX, self.compress):
            if isinstance(payload, DeliveryResult):
                results.append(payload)
                continue
            # OSError (disk full, share unmounted) propagates: a transient fault.
            atomic_write_bytes(self.target_path(item), payload.data)
            results.append(DeliveryResult(item.id, True, wire_bytes=len(payload.data), raw_bytes=payload.raw_size))
        return results

    def close(self) -> None:
        pass
