"""No identifying value on the terminal: every command that reads original scans runs with
pydicom's value checks off, because their warnings quote the value they reject (a UID or
an ID that carries a name) on stderr. ``inspect`` and ``view`` count them instead."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

PLANTED = "QUILLFEATHER"  # a surname nobody else uses


@pytest.fixture
def nonconformant_original(ct_head: list[Path], tmp_path: Path) -> Path:
    """A real CT slice whose identifying values also break their VR, so pydicom warns."""
    ds = pydicom.dcmread(ct_head[0])
    ds.StudyInstanceUID = f"1.2.840.{PLANTED}"  # not a UID: letters
    ds.SeriesInstanceUID = f"1.2.840.{PLANTED}.2"
    ds.PatientName = f"{PLANTED}^JOHN^" + "X" * 70  # longer than PN allows
    ds.PatientID = f"{PLANTED}-" + "9" * 70  # longer than LO allows
    folder = tmp_path / "scans"
    folder.mkdir()
    ds.save_as(folder / "planted.dcm", enforce_file_format=True)
    return folder


@pytest.mark.parametrize(
    "command",
    [
        ["segment", "{scans}/planted.dcm", "--no-png"],
        ["segment", "{scans}/planted.dcm", "--out", "{tmp}/overlay.png", "--json"],
        ["mine", "{scans}", "--out", "{tmp}/report"],
        ["send", "{scans}", "--to", "{tmp}/hq"],
        ["anonymize", "{scans}", "{tmp}/deid"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_commands_never_print_an_identifying_value(cli, nonconformant_original: Path, tmp_path: Path, command: list[str]) -> None:
    args = [part.format(scans=nonconformant_original, tmp=tmp_path) for part in command]
    result = cli(*args, env={"MEDSENDX_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert PLANTED not in result.stdout and PLANTED not in result.stderr
    assert "UserWarning" not in result.stderr


def test_inspect_counts_the_checks_it_keeps(cli, nonconformant_original: Path) -> None:
    result = cli("inspect", nonconformant_original / "planted.dcm")
    assert result.returncode == 0, result.stderr
    assert PLANTED in result.stdout  # inspect shows the file's own identity: that is its job
    assert PLANTED not in result.stderr and "UserWarning" not in result.stderr
    assert "do not conform to their value representation" in result.stderr
