"""Where the hub reads studies from: the HQ PACS over DICOMweb, or a folder of DICOM files
(what ``medsendx demo`` and the folder transport write).

Both answer the same three questions: which studies are there (with a signature that
changes when a study gains objects), which series and instances a study holds, and the
dataset of one instance. Only standard DICOMweb is used: QIDO-RS for the lists, WADO-RS
(``multipart/related; type="application/dicom"``) for instances.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pydicom
from pydicom.dataset import Dataset

# QIDO-RS attribute tags (hex) the hub asks for
STUDY_UID, STUDY_DATE, STUDY_TIME = "0020000D", "00080020", "00080030"
MODALITIES_IN_STUDY, STUDY_INSTANCES = "00080061", "00201208"
SERIES_UID, MODALITY, STATION, SERIES_INSTANCES = "0020000E", "00080060", "00081010", "00201209"
SOP_UID, SOP_CLASS = "00080018", "00080016"
QIDO_PAGE = 1000
RESCAN_SECONDS = 2.0  # a folder walk is reused this long (a refresh asks per study)


class SourceError(RuntimeError):
    """The PACS or folder cannot be read (our words; never a value from an object)."""


@dataclass
class SeriesInfo:
    series_uid: str
    modality: str
    station: str
    instances: int
    sop_uids: list[str] = field(default_factory=list)  # filled for derived series (SR/KO/SEG)


@dataclass
class StudyInfo:
    study_uid: str
    signature: str  # changes when objects are added to the study
    study_date: str = ""
    study_time: str = ""
    modalities: list[str] = field(default_factory=list)


class Source(Protocol):
    def studies(self) -> dict[str, StudyInfo]: ...
    def series(self, study_uid: str, with_instances_of: tuple[str, ...] = ()) -> list[SeriesInfo]: ...
    def instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset: ...
    def describe(self) -> str: ...


def _value(item: dict[str, Any], tag: str, default: str = "") -> Any:
    entry = item.get(tag) or {}
    values = entry.get("Value") or []
    return values[0] if values else default


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    return list((item.get(tag) or {}).get("Value") or [])


_UID = re.compile(r"^[0-9.]{1,64}$")


def check_uid(uid: str) -> str:
    """UIDs reach URLs and SQL: accept only what a UID may contain."""
    if not _UID.match(uid or ""):
        raise ValueError("not a DICOM UID")
    return uid


def parse_multipart(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a ``multipart/related`` body (WADO-RS answer)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type, re.I)
    if not match:
        return [body]
    boundary = b"--" + match.group(1).encode()
    parts = []
    for chunk in body.split(boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        parts.append(payload)
    return parts


class DicomWebSource:
    """The HQ PACS over DICOMweb (QIDO-RS + WADO-RS), with httpx."""

    def __init__(self, url: str, *, verify: bool = True, timeout: float = 30.0) -> None:
        for prefix in ("dicomweb+",):
            if url.startswith(prefix):
                url = url[len(prefix):]
        self.root = url.rstrip("/")
        self._local = threading.local()
        self._verify, self._timeout = verify, timeout

    @property
    def client(self):
        import httpx

        client = getattr(self._local, "client", None)
        if client is None:  # one connection pool per thread (the poller, request handlers)
            client = httpx.Client(verify=self._verify, timeout=self._timeout)
            self._local.client = client
        return client

    def describe(self) -> str:
        return "DICOMweb"

    def _qido(self, path: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        import httpx

        try:
            response = self.client.get(f"{self.root}{path}", params=params, headers={"Accept": "application/dicom+json"})
        except httpx.HTTPError as exc:
            raise SourceError(f"the PACS did not answer ({type(exc).__name__})") from None
        if response.status_code == 204 or not response.content:
            return []
        if response.status_code >= 400:
            raise SourceError(f"the PACS answered HTTP {response.status_code} to a query")
        return response.json()

    def studies(self) -> dict[str, StudyInfo]:
        out: dict[str, StudyInfo] = {}
        offset = 0
        fields = [("includefield", t) for t in (STUDY_DATE, STUDY_TIME, MODALITIES_IN_STUDY, STUDY_INSTANCES)]
        while True:
            page = self._qido("/studies", fields + [("limit", str(QIDO_PAGE)), ("offset", str(offset))])
            for item in page:
                uid = str(_value(item, STUDY_UID))
                if not _UID.match(uid):
                    continue
                modalities = sorted(str(m) for m in _values(item, MODALITIES_IN_STUDY))
                count = _value(item, STUDY_INSTANCES, 0)
                out[uid] = StudyInfo(uid, f"{count}/{'+'.join(modalities)}", str(_value(item, STUDY_DATE)),
                                     str(_value(item, STUDY_TIME)), modalities)
            if len(page) < QIDO_PAGE:
                return out
            offset += len(page)

    def series(self, study_uid: str, with_instances_of: tuple[str, ...] = ()) -> list[SeriesInfo]:
        check_uid(study_uid)
        fields = [("includefield", t) for t in (STATION, SERIES_INSTANCES)]
        out = []
        for item in self._qido(f"/studies/{study_uid}/series", fields):
            info = SeriesInfo(str(_value(item, SERIES_UID)), str(_value(item, MODALITY)), str(_value(item, STATION)),
                              int(_value(item, SERIES_INSTANCES, 0) or 0))
            if not _UID.match(info.series_uid):
                continue
            if info.modality in with_instances_of:
                instances = self._qido(f"/studies/{study_uid}/series/{info.series_uid}/instances", [])
                info.sop_uids = [str(_value(i, SOP_UID)) for i in instances if _UID.match(str(_value(i, SOP_UID)))]
            out.append(info)
        return out

    def instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        import httpx

        for uid in (study_uid, series_uid, sop_uid):
            check_uid(uid)
        url = f"{self.root}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
        try:
            response = self.client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        except httpx.HTTPError as exc:
            raise SourceError(f"the PACS did not answer ({type(exc).__name__})") from None
        if response.status_code >= 400:
            raise SourceError(f"the PACS answered HTTP {response.status_code} to an instance request")
        parts = parse_multipart(response.headers.get("content-type", ""), response.content)
        if not parts:
            raise SourceError("the PACS sent no instance")
        return pydicom.dcmread(io.BytesIO(parts[0]))


class FolderSource:
    """A folder of DICOM files (any depth), e.g. the demo's HQ folder. Headers are read
    once per file (kept by path, size and modification time)."""

    HEADER_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality",
                   "StationName", "StudyDate", "StudyTime"]

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._headers: dict[str, tuple[tuple[int, int], dict[str, str]]] = {}
        self._lock = threading.Lock()
        self._last: tuple[float, list[tuple[str, dict[str, str]]]] | None = None

    def describe(self) -> str:
        return "folder"

    def _scan(self) -> list[tuple[str, dict[str, str]]]:
        if not self.folder.is_dir():
            raise SourceError("the studies folder does not exist")
        seen: list[tuple[str, dict[str, str]]] = []
        with self._lock:
            # one walk serves the study list and the per-study questions that follow it
            if self._last is not None and time.monotonic() - self._last[0] < RESCAN_SECONDS:
                return self._last[1]
            present = set()
            for path in self.folder.rglob("*"):
                if not path.is_file() or path.name.startswith("."):
                    continue
                try:
                    st = path.stat()
                except OSError:
                    continue
                key = str(path)
                present.add(key)
                stamp = (st.st_size, st.st_mtime_ns)
                cached = self._headers.get(key)
                if cached is None or cached[0] != stamp:
                    try:
                        ds = pydicom.dcmread(key, stop_before_pixels=True, specific_tags=self.HEADER_TAGS)
                        header = {t: str(ds.get(t, "")) for t in self.HEADER_TAGS}
                        header["mtime"] = str(st.st_mtime)
                    except Exception:
                        header = {}
                    self._headers[key] = (stamp, header)
                header = self._headers[key][1]
                if header and _UID.match(header.get("StudyInstanceUID", "")):
                    seen.append((key, header))
            for gone in set(self._headers) - present:
                del self._headers[gone]
            self._last = (time.monotonic(), seen)
        return seen

    def studies(self) -> dict[str, StudyInfo]:
        grouped: dict[str, list[dict[str, str]]] = {}
        for _path, header in self._scan():
            grouped.setdefault(header["StudyInstanceUID"], []).append(header)
        out = {}
        for uid, headers in grouped.items():
            modalities = sorted({h["Modality"] for h in headers if h["Modality"]})
            out[uid] = StudyInfo(uid, f"{len(headers)}/{'+'.join(modalities)}", headers[0]["StudyDate"],
                                 headers[0]["StudyTime"], modalities)
        return out

    def series(self, study_uid: str, with_instances_of: tuple[str, ...] = ()) -> list[SeriesInfo]:
        found: dict[str, SeriesInfo] = {}
        for _path, h in self._scan():
            if h["StudyInstanceUID"] != study_uid:
                continue
            info = found.setdefault(h["SeriesInstanceUID"], SeriesInfo(h["SeriesInstanceUID"], h["Modality"], h["StationName"], 0))
            info.instances += 1
            if h["Modality"] in with_instances_of:
                info.sop_uids.append(h["SOPInstanceUID"])
        return list(found.values())

    def instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        for path, h in self._scan():
            if h["SOPInstanceUID"] == sop_uid and h["StudyInstanceUID"] == study_uid:
                return pydicom.dcmread(path)
        raise SourceError("no such instance in the studies folder")


def open_source(location: str, verify_tls: bool = True) -> Source:
    """``dicomweb+http(s)://...`` or ``http(s)://...``: DICOMweb; anything else: a folder."""
    if location.startswith(("dicomweb+", "http://", "https://")):
        return DicomWebSource(location, verify=verify_tls)
    return FolderSource(location)
