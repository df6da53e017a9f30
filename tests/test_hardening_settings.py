"""Issue 13: settings that lie, files with secrets (site key, native-code cache)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT, run_cli
from medsendx.config import ConfigError, load_settings, validate

NOBODY = 65534  # a uid that is not ours (the tests run as root in CI)


def _documented_variables() -> set[str]:
    text = (PROJECT_ROOT / "README.md").read_text()
    return set(re.findall(r"\bMEDSENDX_[A-Z0-9_]*[A-Z0-9]\b", text))


# One valid value for every MEDSENDX_ variable the README documents. A variable documented
# without an entry here fails the first test, so every new one gets tested too.
SAMPLES = {
    "MEDSENDX_CONFIG": None,  # the settings file itself (tested through --config elsewhere)
    "MEDSENDX_DATA_DIR": "{tmp}/data",
    "MEDSENDX_STATION_ID": "TRUCK_7",
    "MEDSENDX_STATE_DIR": "{tmp}/state",
    "MEDSENDX_SECRET_PATH": "{tmp}/site.key",
    "MEDSENDX_DEID__DATES": "full",
    "MEDSENDX_DEID__RETAIN_DEVICE_IDENTITY": "true",
    "MEDSENDX_PIXELS__POLICY": "quarantine",
    "MEDSENDX_PIXELS__OCR_EVERY_OBJECT": "true",
    "MEDSENDX_OUTBOX__CA_FILE": "{tmp}/ca.pem",
    "MEDSENDX_OUTBOX__DESTINATION": "dicomweb+https://pacs.example/dicom-web",
    "MEDSENDX_PIXELS__ALLOWED_MARKERS": "L,R,CC,MLO",
    "MEDSENDX_PIXELS__SCREEN_EVERY_OBJECT": "true",
    "MEDSENDX_TRIAGE__RESULTS_SEG": "false",
    "MEDSENDX_TRIAGE__RESULTS_SR": "false",
    "MEDSENDX_TRIAGE__RESULTS_KOS": "false",
    "MEDSENDX_HUB__HOST": "127.0.0.1",
    "MEDSENDX_DEID_NATIVE": "0",
    "MEDSENDX_TRIAGE_NATIVE": "0",
    "MEDSENDX_SCREEN_NATIVE": "0",
    "MEDSENDX_NATIVE_CACHE": "{tmp}/native",
    "MEDSENDX_GATEWAY__BIND_ADDRESS": "192.168.7.2",
    "MEDSENDX_GATEWAY__RESULTS_QUIET_SECONDS": "45",
    "MEDSENDX_GATEWAY__ALLOWED_CALLING_AETS": "CT_SCANNER,MG_UNIT",
    "MEDSENDX_GATEWAY__ACCEPT_ANY_CALLING_AET": "false",
    "MEDSENDX_OUTBOX__DESTINATION_FILE": "{tmp}/destination",
}


def _private(path: Path, text: str) -> None:
    path.write_text(text)
    os.chmod(path, 0o600)


def test_every_documented_variable_has_a_sample() -> None:
    documented = _documented_variables() - {"MEDSENDX_"}
    assert documented, "README names no MEDSENDX_ variable"
    assert documented <= set(SAMPLES), f"documented but untested: {sorted(documented - set(SAMPLES))}"


@pytest.mark.parametrize("name", sorted(k for k, v in SAMPLES.items() if v is not None))
def test_each_documented_variable_is_accepted(name: str, tmp_path: Path) -> None:
    value = SAMPLES[name].format(tmp=tmp_path)
    if name == "MEDSENDX_OUTBOX__DESTINATION_FILE":
        _private(Path(value), "dicomweb+https://truck7:s3cret@pacs.example/dicom-web\n")
    settings, issues = validate(None, environ={name: value})
    assert issues == [] and settings is not None


def test_documented_variables_all_at_once_through_the_cli(tmp_path: Path) -> None:
    """Every documented variable set together: a command that loads settings still runs
    (today MEDSENDX_DEID_NATIVE and friends make every command exit 2)."""
    env = {k: v.format(tmp=tmp_path) for k, v in SAMPLES.items() if v is not None}
    _private(Path(env["MEDSENDX_OUTBOX__DESTINATION_FILE"]), "dicomweb+https://truck7:s3cret@pacs.example/dicom-web\n")
    done = run_cli("status", "--json", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert '"station": "TRUCK_7"' in done.stdout


def test_native_switches_are_checked_not_ignored() -> None:
    settings, issues = validate(None, environ={"MEDSENDX_DEID_NATIVE": "maybe"})
    assert settings is None
    assert [(i.key, i.source) for i in issues] == [("MEDSENDX_DEID_NATIVE", "environment")]


def test_validate_reports_every_wrong_key_with_its_path(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text('bogus = 1\n[outbox]\nbatch_max_objects = "many"\n[gateway]\nnope = 2\n')
    settings, issues = validate(cfg, environ={"MEDSENDX_DEID__DATES": "sometimes"})
    assert settings is None
    keys = {(i.key, i.source) for i in issues}
    assert keys == {("bogus", str(cfg)), ("outbox.batch_max_objects", str(cfg)), ("gateway.nope", str(cfg)),
                    ("deid.dates", "environment")}
    assert all(i.message for i in issues)


@pytest.mark.parametrize(
    "env, key",
    [
        ({"MEDSENDX_GATEWAY__DICOM_PORT": "70000"}, "gateway.dicom_port"),
        ({"MEDSENDX_OUTBOX__BATCH_MAX_OBJECTS": "0"}, "outbox.batch_max_objects"),
        ({"MEDSENDX_GATEWAY__WORKERS": "-1"}, "gateway.workers"),
        ({"MEDSENDX_GATEWAY__RESULTS_QUIET_SECONDS": "-5"}, "gateway.results_quiet_seconds"),
        ({"MEDSENDX_OUTBOX__BACKOFF_CAP_SECONDS": "nan"}, "outbox.backoff_cap_seconds"),
        ({"MEDSENDX_GATEWAY__TLS_CERT_FILE": "c.pem"}, "gateway.tls_key_file"),
    ],
)
def test_ranges_are_checked(env: dict[str, str], key: str) -> None:
    settings, issues = validate(None, environ=env)
    assert settings is None and [i.key for i in issues] == [key]
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_settings(environ=env)


# --- the site key --------------------------------------------------------------------------------
def _key(tmp_path: Path, mode: int) -> Path:
    key = tmp_path / "site.key"
    key.write_text("ab" * 32 + "\n")
    os.chmod(key, mode)
    return key


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_site_key_others_can_read_is_refused(tmp_path: Path, ct_head: list[Path], mode: int) -> None:
    key = _key(tmp_path, mode)
    out = tmp_path / "out"
    done = run_cli("anonymize", ct_head[0], out, env={"MEDSENDX_SECRET_PATH": str(key),
                                                     "MEDSENDX_STATE_DIR": str(tmp_path / "state")})
    assert done.returncode == 1
    assert "others may read it" in " ".join(done.stderr.split())  # rich wraps lines
    assert not list(out.glob("*.dcm")) if out.exists() else True


def test_a_site_key_of_another_user_is_refused(tmp_path: Path) -> None:
    from medsendx.deid.uids import SecretError, load_or_create_secret

    key = _key(tmp_path, 0o600)
    assert load_or_create_secret(key)  # ours, 0600: fine
    if os.getuid() != 0:
        pytest.skip("needs root to give the key to another user")  # CI runs as root
    os.chown(key, NOBODY, NOBODY)
    with pytest.raises(SecretError, match="another user"):
        load_or_create_secret(key)


# --- the native-code cache ----------------------------------------------------------------------
SOURCE = "int answer(void) { return 42; }\n"


def _load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path):
    from medsendx import native

    monkeypatch.setenv("MEDSENDX_NATIVE_CACHE", str(cache))
    src = tmp_path / "_answer.c"
    src.write_text(SOURCE)
    return native, src


def test_native_cache_is_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache" / "medsendx"
    native, src = _load(tmp_path, monkeypatch, cache)
    lib = native.load_compiled(src, ["-O1", "-fPIC", "-shared"])
    assert lib.answer() == 42
    assert cache.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o022 == 0 for p in cache.iterdir())


def test_native_library_planted_by_someone_else_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    native, src = _load(tmp_path, monkeypatch, cache)
    flags = ["-O1", "-fPIC", "-shared"]
    lib = native.load_compiled(src, flags)
    (target,) = cache.glob("answer-*.so")
    # Plant a different library under the cached name, writable by everyone: it must not load.
    other = tmp_path / "_other.c"
    other.write_text("int answer(void) { return 666; }\n")
    native._compile(other, target, flags, ())
    os.chmod(target, 0o777)
    del lib
    fresh = tmp_path / "again"
    fresh.mkdir()
    (fresh / "_answer.c").write_text(SOURCE)  # same source and flags: same cache name
    import ctypes

    reloaded = native.load_compiled(fresh / "_answer.c", flags)
    assert reloaded.answer() == 42
    assert target.stat().st_mode & 0o022 == 0
    assert isinstance(reloaded, ctypes.CDLL)


def test_native_cache_folder_others_may_write_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    os.chmod(cache, 0o777)
    native, src = _load(tmp_path, monkeypatch, cache)
    with pytest.raises(OSError):
        native.load_compiled(src, ["-O1", "-fPIC", "-shared"])
