"""The settings object, DICOM reading/rendering, and the inspect/view commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from medsendx.config import ConfigError, load_settings
from medsendx.dicomio import DicomReadError, display_image, modality_pixels, read_dataset, stored_pixels


def test_settings_defaults_file_env_and_overrides(tmp_path: Path) -> None:
    defaults = load_settings(environ={})
    assert defaults.station_id == "REMOTE_MOBILE_CLINIC_01"
    assert defaults.deid.dates == "modified"
    cfg = tmp_path / "m.toml"
    cfg.write_text('station_id = "TRUCK_7"\n[deid]\ndates = "full"\nretain_uids = true\n')
    s = load_settings(cfg, environ={"MEDSENDX_DEID__RETAIN_UIDS": "false", "MEDSENDX_STATE_DIR": str(tmp_path)})
    assert s.station_id == "TRUCK_7"
    assert s.deid.dates == "full"
    assert s.deid.retain_uids is False  # environment beats the file
    assert s.state_dir == tmp_path
    assert s.secret_file == tmp_path / "secret.key"
    s = load_settings(cfg, overrides={"station_id": "CLI"}, environ={})
    assert s.station_id == "CLI"


@pytest.mark.parametrize(
    "toml, message",
    [
        ('[deid]\ndates = "sometimes"\n', "not one of"),
        ("bogus = 1\n", "unknown setting 'bogus'"),
        ("[deid]\nretain_uids = \"maybe\"\n", "not a boolean"),
        ("station_id = \n", "not valid TOML"),
    ],
)
def test_settings_errors_are_clear(tmp_path: Path, toml: str, message: str) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_settings(cfg, environ={})


def test_every_transfer_syntax_decodes_to_the_same_pixels(data_dir: Path) -> None:
    files = sorted((data_dir / "transfer-syntaxes").glob("*.dcm"))
    assert len(files) == 9
    reference = stored_pixels(read_dataset(files[0]))
    for path in files[1:]:
        ds = read_dataset(path)
        np.testing.assert_array_equal(stored_pixels(ds), reference, err_msg=str(ds.file_meta.TransferSyntaxUID))


def test_ct_pixels_are_in_hounsfield_units(ct_head: list[Path]) -> None:
    ds = read_dataset(ct_head[10])
    hu = modality_pixels(ds)
    tissue = hu[stored_pixels(ds) != ds.PixelPaddingValue]
    # air around the head is about -1000 HU; bone reaches well above +300 HU
    assert np.percentile(tissue, 5) < -900
    assert tissue.max() > 300
    ds.RescaleIntercept = -1024  # the modality LUT is applied, not assumed
    assert modality_pixels(ds).max() == pytest.approx(hu.max() - 1024)


def test_display_image_windows_and_inverts(ct_head: list[Path]) -> None:
    ds = read_dataset(ct_head[10])
    img = display_image(ds)
    assert img.dtype == np.uint8 and img.shape == (512, 512)
    assert img.min() == 0 and img.max() == 255
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = display_image(ds)
    np.testing.assert_array_equal(inverted, 255 - img)


@pytest.mark.parametrize("content, reason", [(b"hello, not dicom", "not a DICOM file"), (b"", "not a DICOM file")])
def test_read_refuses_non_dicom(tmp_path: Path, content: bytes, reason: str) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(content)
    with pytest.raises(DicomReadError, match=reason):
        read_dataset(bad)


def test_read_refuses_truncated(tmp_path: Path, ct_head: list[Path]) -> None:
    bad = tmp_path / "trunc.dcm"
    bad.write_bytes(ct_head[0].read_bytes()[:700])
    with pytest.raises(DicomReadError):
        ds = read_dataset(bad)
        stored_pixels(ds)


def test_inspect_cli_shows_metadata_and_renders_png(cli, ct_head: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "slice.png"
    result = cli("inspect", ct_head[0], "--png", out)
    assert result.returncode == 0, result.stderr
    assert "Explicit VR Little Endian" in result.stdout
    assert "CT" in result.stdout
    assert "512 x 512" in result.stdout
    image = np.asarray(Image.open(out))
    assert image.shape == (512, 512) and image.std() > 20


def test_inspect_cli_full_dump(cli, ct_head: list[Path]) -> None:
    result = cli("inspect", "--all", ct_head[0])
    assert result.returncode == 0
    assert "(0008,0060) Modality" in result.stdout


def test_inspect_cli_clear_error_for_non_dicom(cli, tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    result = cli("inspect", bad)
    assert result.returncode == 1
    assert "not a DICOM file" in result.stderr
    assert "Traceback" not in result.stderr


def test_view_cli_reports_deid_state(cli, data_dir: Path, tmp_path: Path) -> None:
    # the MR sample was de-identified upstream: the view must say so and list its codes
    result = cli("view", data_dir / "mr-brain-ge" / "00001.dcm")
    assert result.returncode == 0, result.stderr
    assert "marked de-identified" in result.stdout and "NOT" not in result.stdout
    assert "113100" in result.stdout
    raw = pydicom.dcmread(data_dir / "ct-head-ge" / "01.dcm")
    del raw.PatientIdentityRemoved
    raw.save_as(tmp_path / "raw.dcm")
    result = cli("view", tmp_path / "raw.dcm")
    assert "NOT marked de-identified" in result.stdout


def test_view_cli_counts_vr_warnings_without_quoting_values(cli, ct_head: list[Path], tmp_path: Path) -> None:
    # The default StationName (23 characters) is longer than SH allows: pydicom warns with
    # its own line when the value is read; view says so in one line of ours instead.
    out = tmp_path / "out"
    env = {"MEDSENDX_STATE_DIR": str(tmp_path / "state")}
    assert cli("anonymize", ct_head[0], out, env=env).returncode == 0
    result = cli("view", next(out.iterdir()), env=env)
    assert result.returncode == 0, result.stderr
    assert "REMOTE_MOBILE_CLINIC_01" in result.stdout
    assert "UserWarning" not in result.stderr and "exceeds the maximum length" not in result.stderr
    assert "1 value(s) do not conform to their value representation" in result.stderr
    clean = cli("view", ct_head[0], env=env)  # the original's values all conform
    assert "do not conform" not in clean.stderr
