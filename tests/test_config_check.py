"""``medsendx config check``: good and bad settings files and environments, as a user runs it.

The oracles are planted: each bad file has one known wrong key, and the output must name
exactly that key; planted secrets must appear nowhere in the output."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from conftest import run_cli

SECRET = "s3cr3t-Planted-9431"
URL_PASSWORD = "pw-Planted-7720"


def check(tmp_path: Path, text: str | None, env: dict[str, str] | None = None):
    args = ["config", "check"]
    if text is not None:
        path = tmp_path / "medsendx.toml"
        path.write_text(text)
        args.append(str(path))
    return run_cli(*args, env={"MEDSENDX_STATE_DIR": str(tmp_path / "state"), **(env or {})}, cwd=tmp_path)


GOOD = f"""
station_id = "TRUCK_07"
[gateway]
ae_title = "TRUCK07"
dicom_port = 104
allowed_calling_aets = ["CT_SCANNER"]
[outbox]
destination = "dicomweb+https://gateway:{URL_PASSWORD}@pacs.example.org/dicom-web"
[s3]
endpoint_url = "https://s3.example.org"
access_key_id = "AKIAPLANTED0001"
secret_access_key = "{SECRET}"
[pixels.fixed_regions]
"GE MEDICAL SYSTEMS/LightSpeed" = [[0, 0, 512, 40]]
"""


def test_good_file_prints_effective_settings_with_secrets_redacted(tmp_path: Path):
    result = check(tmp_path, GOOD, env={"MEDSENDX_GATEWAY__WORKERS": "6"})
    assert result.returncode == 0, result.stderr
    assert "settings OK" in result.stderr
    out = result.stdout + result.stderr
    for planted in (SECRET, URL_PASSWORD, "AKIAPLANTED0001"):
        assert planted not in out
    effective = tomllib.loads(result.stdout)  # the dump is valid TOML, readable back
    assert effective["gateway"]["dicom_port"] == 104
    assert effective["gateway"]["workers"] == 6  # the environment is applied on top of the file
    assert effective["s3"]["secret_access_key"] == "<redacted>"
    assert effective["outbox"]["destination"] == "dicomweb+https://pacs.example.org/dicom-web"
    assert effective["pixels"]["fixed_regions"] == {"GE MEDICAL SYSTEMS/LightSpeed": [[0, 0, 512, 40]]}
    assert "workers = 6  # from the environment" in result.stdout


def test_no_file_checks_defaults_and_environment(tmp_path: Path):
    result = check(tmp_path, None)
    assert result.returncode == 0, result.stderr
    assert "file: none" in result.stdout


@pytest.mark.parametrize(
    ("text", "env", "key", "why"),
    [
        ("[gateway]\ndicom_port = 70000\n", {}, "gateway.dicom_port", "out of range"),
        ("[gateway]\ndicom_port = \"eleven\"\n", {}, "gateway.dicom_port", "not a number"),
        ("[gateway]\nae_title = \"A_TITLE_LONGER_THAN_16\"\n", {}, "gateway.ae_title", "at most 16 characters"),
        ("[gateway]\nallowed_calling_aets = [\"OK\", \"BAD\\\\AE\"]\n", {}, "gateway.allowed_calling_aets[1]", "no backslash"),
        ("[gateway]\nbind_address = \"everywhere\"\n", {}, "gateway.bind_address", "not an IP address"),
        ("[gateway]\ndicom_prot = 104\n", {}, "gateway.dicom_prot", "unknown setting 'dicom_prot'"),
        ("[gateway]\nworkers = 0\n", {}, "gateway.workers", "out of range"),
        ("[outbox]\ndestination = \"dimse://pacs.example:104\"\n", {}, "outbox.destination", "dimse://AET@host:port"),
        ("[outbox]\ndestination = \"ftp://pacs.example/\"\n", {}, "outbox.destination", "unsupported scheme 'ftp'"),
        ("[outbox]\nbackoff_base_seconds = 5.0\nbackoff_cap_seconds = 1.0\n", {}, "outbox.backoff_cap_seconds", "at least"),
        ("[s3]\nmultipart_part_bytes = 1024\n", {}, "s3.multipart_part_bytes", "out of range"),
        (f"[s3]\nsecret_access_key = \"{SECRET}\"\n", {}, "s3.secret_access_key", "set together"),
        ("[deid]\ndates = \"shifted\"\n", {}, "deid.dates", "is not one of"),
        ("[pixels.fixed_regions]\n\"GE/X\" = [[10, 0, 5, 40]]\n", {}, "pixels.fixed_regions.GE/X[0]", "x0 < x1"),
        ("station_id = \"T\"\n[gateway]\n", {"MEDSENDX_GATEWAY__HTTP_PORT": "70000"}, "gateway.http_port", "out of range"),
        ("", {"MEDSENDX_OUTBOX__VERIFY_TLS": "maybe"}, "environment: outbox.verify_tls", "not a boolean"),
        ("[gateway\n", {}, "not valid TOML", ""),
    ],
)
def test_bad_setting_is_named_with_the_reason(tmp_path: Path, text: str, env: dict, key: str, why: str):
    result = check(tmp_path, text, env=env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr  # exactly the planted problem, nothing else
    assert key in errors[0] and why in errors[0], errors[0]
    assert SECRET not in result.stdout + result.stderr


def test_several_problems_are_all_reported(tmp_path: Path):
    result = check(tmp_path, "[gateway]\ndicom_port = 9042\nhttp_port = 9042\nae_title = \"A_TITLE_LONGER_THAN_16\"\n")
    assert result.returncode == 1
    assert "gateway.http_port: must differ from gateway.dicom_port" in result.stderr
    assert "gateway.ae_title: an AE title has at most 16 characters" in result.stderr
    assert "2 problem(s) found" in result.stderr


def test_several_loader_problems_are_all_reported(tmp_path: Path):
    result = check(tmp_path, "[gateway]\nqueue_size = 0\nworkers = 0\n")
    assert result.returncode == 1
    assert "gateway.queue_size: 0 is out of range" in result.stderr
    assert "gateway.workers: 0 is out of range" in result.stderr
    assert "2 problem(s) found" in result.stderr


def test_missing_file_is_an_error(tmp_path: Path):
    result = run_cli("config", "check", str(tmp_path / "absent.toml"))
    assert result.returncode == 1
    assert "config file not found" in result.stderr
