"""Real servers for the tests: Orthanc (PACS, DICOMweb + C-STORE) and moto_server (S3).

Each starts as a subprocess on free loopback ports with its storage in a temp folder and
is stopped at the end of the test session. Nothing here is a mock: the tests talk to the
same programs a hospital or a fleet operator runs.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dcmtk(tool: str) -> str:
    """Path of a dcmtk program. pynetdicom installs Python apps of the same names
    (storescu, storescp) earlier on PATH, so look in the system folders first."""
    for folder in ("/usr/bin", "/usr/local/bin"):
        candidate = Path(folder) / tool
        if candidate.exists():
            return str(candidate)
    found = shutil.which(tool)
    if not found:
        raise RuntimeError(f"dcmtk tool {tool!r} not installed (apt-get install dcmtk)")
    return found


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {url} did not come up within {timeout}s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Orthanc:
    """A running Orthanc: ``url`` for REST, ``dicomweb_url`` for STOW/WADO, ``dicom_port``."""

    workdir: Path
    aet: str = "ORTHANC"
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self) -> "Orthanc":
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "medsendx-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "DicomCheckCalledAet": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "UnknownSopClassAccepted": True,
            "StorageCompression": False,
            "OverwriteInstances": True,
            "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        }
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=1))
        log = open(self.workdir / "orthanc.log", "wb")
        self.proc = subprocess.Popen(["Orthanc", str(config_path)], stdout=log, stderr=subprocess.STDOUT)
        _wait_http(f"{self.url}/system", self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    # --- what the tests ask of the PACS -------------------------------------------------
    def reset(self) -> None:
        """Delete every stored patient, so each test starts from an empty PACS."""
        for patient in httpx.get(f"{self.url}/patients").json():
            httpx.delete(f"{self.url}/patients/{patient}")

    def instance_ids(self) -> list[str]:
        return httpx.get(f"{self.url}/instances").json()

    def instance_file(self, orthanc_id: str) -> bytes:
        return httpx.get(f"{self.url}/instances/{orthanc_id}/file", timeout=30).content

    def sop_instance_uids(self) -> list[str]:
        """Every stored SOP Instance UID (one entry per stored instance)."""
        uids = []
        for orthanc_id in self.instance_ids():
            tags = httpx.get(f"{self.url}/instances/{orthanc_id}/simplified-tags").json()
            uids.append(tags["SOPInstanceUID"])
        return uids

    def statistics(self) -> dict:
        return httpx.get(f"{self.url}/statistics").json()


@dataclass
class S3Server:
    """A running moto_server (S3-compatible) on loopback."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "S3Server":
        exe = shutil.which("moto_server")
        if exe is None:
            raise RuntimeError("moto_server not installed (pip install 'moto[server]')")
        self.proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_http(f"{self.endpoint_url}/moto-api/", self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def env(self) -> dict[str, str]:
        """Environment for a medsendx subprocess that should use this server."""
        return {
            "MEDSENDX_S3__ENDPOINT_URL": self.endpoint_url,
            "MEDSENDX_S3__ACCESS_KEY_ID": self.access_key,
            "MEDSENDX_S3__SECRET_ACCESS_KEY": self.secret_key,
            "MEDSENDX_S3__REGION": self.region,
        }
