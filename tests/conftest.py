"""Fixtures shared by every test: the real sample data, real servers, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from servers import Orthanc, S3Server

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SRC = PROJECT_ROOT / "src"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real DICOM files of ``../shared/data`` (or ``$MEDSENDX_DATA_DIR``)."""
    path = Path(os.environ.get("MEDSENDX_DATA_DIR", PROJECT_ROOT / ".." / "shared" / "data")).resolve()
    if not (path / "ct-head-ge").is_dir():
        pytest.fail(f"sample data not found at {path}; set MEDSENDX_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def ct_head(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "ct-head-ge").glob("*.dcm"))


@pytest.fixture(scope="session")
def orthanc_server(tmp_path_factory: pytest.TempPathFactory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


@pytest.fixture
def orthanc(orthanc_server: Orthanc) -> Orthanc:
    """A running Orthanc, emptied before the test."""
    orthanc_server.reset()
    return orthanc_server


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated MedSendX state folder, also exported to CLI subprocesses."""
    state = tmp_path / "state"
    monkeypatch.setenv("MEDSENDX_STATE_DIR", str(state))
    return state


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra or {})
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run ``medsendx ARGS`` as a user would, in a subprocess; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "medsendx", *map(str, args)],
        capture_output=True,
        text=True,
        env=cli_env(env),
        timeout=timeout,
        **kwargs,
    )


@pytest.fixture
def cli():
    return run_cli
