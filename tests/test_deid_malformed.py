"""Malformed input from the fuzz campaign (issue 13): damaged values, deep nesting, bad
VRs, unknown transfer syntaxes, deflate bombs, names built from values, library messages,
"clean" actions. Each test plants a name first and then damages the file, so that a
damaged value that leaves would carry the name out."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pydicom
import pytest

from deid_helpers import PLANT, planted_ct, settings_for
from malformed import insert_raw, nested_sequence, set_transfer_syntax, set_value, set_vr, swallow_next, to_bytes
from medsendx.deid import Deidentifier, _native, codec
from medsendx.deid.audit import read_audit
from medsendx.deid.engine import dict_vr
from medsendx.quarantine import list_quarantine

HAS_CC = bool(shutil.which("cc") or shutil.which("gcc"))


def run(tmp_path: Path, data: bytes, name: str = "in.dcm", **deid):
    """De-identify ``data``; the outcome, the output folder and the Deidentifier."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / name
    src.write_bytes(data)
    d = Deidentifier(settings_for(tmp_path / "state", **deid), pixel_cleaner=None)
    return d.deidentify_file(src, tmp_path / "out"), tmp_path / "out", d


def assert_refused(outcome, out: Path, d: Deidentifier, words: tuple[str, ...]) -> None:
    assert outcome.status in ("error", "quarantined") and outcome.output is None
    assert not out.exists() or list(out.iterdir()) == []
    assert len(list_quarantine(d.settings.quarantine_dir)) == 1
    assert PLANT not in outcome.reason and "\n" not in outcome.reason
    assert all(word in outcome.reason for word in words), outcome.reason
    assert PLANT not in d.settings.audit_log.read_text()


def good() -> bytes:
    return to_bytes(planted_ct())


# ---------------------------------------------------------------- damaged kept values


def test_a_kept_element_that_swallowed_the_patient_name_is_quarantined(tmp_path: Path) -> None:
    """ManufacturerModelName (kept) with its length byte corrupted to cover the element
    after it. (On the old code: written, exit 0, the planted value inside.)"""
    ds = planted_ct(patient="PLANTED^SWALLOWED")
    ds.ManufacturerModelName = "HiSpeed"
    ds.add_new(0x00081091, "LO", "PLANTED^SWALLOWED")  # right after (0008,1090): swallowed
    data = swallow_next(to_bytes(ds), 0x00081090)
    assert b"PLANTED^SWALLOWED" in data
    outcome, out, d = run(tmp_path, data)
    assert_refused(outcome, out, d, ("(0008,1090)", "LO", "control bytes"))


@pytest.mark.parametrize(
    "tag, vr, value, reason",
    [
        (0x00080070, "LO", b"GE\x00" + PLANT.encode(), "control bytes"),  # NUL inside
        (0x00081090, "LO", b"A" * 300, "far longer"),  # LO allows 64
        (0x00080005, "CS", b"ISO\x00IR 100", "control bytes"),  # NULs in SpecificCharacterSet
        (0x00280008, "IS", b"1e309 ", "not a finite number"),  # NumberOfFrames
        (0x00280008, "IS", b"nan ", "not a finite number"),
        (0x00181150, "IS", b"1.5 ", "not a finite number"),  # ExposureTime, not whole
    ],
)
def test_kept_values_that_cannot_be_of_their_vr_are_quarantined(tmp_path: Path, tag: int, vr: str, value: bytes, reason: str) -> None:
    outcome, out, d = run(tmp_path, set_value(good(), tag, vr, value))
    assert_refused(outcome, out, d, (f"({tag >> 16:04X},{tag & 0xFFFF:04X})", reason))


@pytest.mark.parametrize("vr", ["UL", "SL"])
def test_a_vr_swapped_to_a_4_byte_type_with_an_odd_length_is_quarantined(tmp_path: Path, vr: str) -> None:
    """SliceThickness "5 " (2 bytes) with its VR bytes turned into UL/SL: pydicom cannot
    decode such an output."""
    outcome, out, d = run(tmp_path, set_vr(good(), 0x00180050, vr))
    assert_refused(outcome, out, d, ("(0018,0050)", vr, "multiple of 4"))


def test_mild_non_conformance_is_kept_as_before(tmp_path: Path) -> None:
    """An over-long SH, trailing spaces, NUL padding, an integral IS written "2.0": what
    real scanners write; the object leaves with those values unchanged."""
    data = set_value(good(), 0x00181210, "SH", b"STANDARD_PLUS_EXTRA_LONG ")  # ConvolutionKernel, 25 > 16
    data = set_value(data, 0x00080070, "LO", b"GE MEDICAL SYSTEMS\x00\x00")
    data = set_value(data, 0x00200013, "IS", b"2.0 ")
    outcome, out, d = run(tmp_path, data)
    assert outcome.status == "ok", outcome.reason
    written = pydicom.dcmread(outcome.output)
    assert written.ConvolutionKernel == "STANDARD_PLUS_EXTRA_LONG"
    assert written[0x00200013].value == 2


# ---------------------------------------------------------------- nesting depth


def nested_file(levels: int, undefined: bool) -> bytes:
    return insert_raw(good(), 0x00189321, nested_sequence(levels, undefined=undefined))


def verdicts(tmp_path: Path, data: bytes, native: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.setattr(_native, "available", lambda: native and _native._library() is not None)
    outcome, _, _ = run(tmp_path, data)
    return outcome.status, outcome.reason


LIMIT = codec.MAX_DEPTH


@pytest.mark.parametrize("undefined", [True, False], ids=["undefined-length", "defined-length"])
@pytest.mark.parametrize("levels", [1, LIMIT - 1, LIMIT, LIMIT + 1, 250, 40_000])
def test_both_walks_give_the_same_verdict_at_every_depth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, levels: int, undefined: bool) -> None:
    data = nested_file(levels, undefined)
    python = verdicts(tmp_path / "py", data, False, monkeypatch)
    expected = ("ok", "") if levels <= LIMIT else ("error", codec.TOO_DEEP)
    assert python == expected
    if HAS_CC:
        assert verdicts(tmp_path / "c", data, True, monkeypatch) == expected
    # ... and the walks themselves agree on the elements or the error
    part = codec.read_part10(data)

    def walk(parse):
        try:
            return parse(part.body, part.body_start, len(part.body), part.encoding, dict_vr)
        except codec.FormatError as exc:
            return str(exc)

    if HAS_CC:
        assert walk(codec.parse_dataset) == walk(codec.parse_dataset_python)


def test_forty_thousand_nested_sequences_end_in_quarantine_not_a_crash(tmp_path: Path, cli, state_dir: Path) -> None:
    """(The old compiled walk died with SIGSEGV here: no audit line, no quarantine entry,
    and the other files of the folder were never processed.)"""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a-deep.dcm").write_bytes(nested_file(40_000, True))
    (folder / "b-good.dcm").write_bytes(good())
    result = cli("anonymize", folder, tmp_path / "out")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and codec.TOO_DEEP in result.stderr
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 1
    assert [r["status"] for r in read_audit(state_dir / "audit.jsonl")] == ["error", "ok"]
    assert len(list_quarantine(state_dir / "quarantine")) == 1


# ---------------------------------------------------------------- transfer syntaxes


def test_an_unknown_transfer_syntax_is_quarantined_not_guessed(tmp_path: Path) -> None:
    outcome, out, d = run(tmp_path, set_transfer_syntax(good(), "1.2.840.10008.1.2.1.12345"))
    assert_refused(outcome, out, d, ("unknown transfer syntax",))


def deflated(data: bytes, extra: bytes = b"") -> bytes:
    """``data`` as Deflated Explicit VR Little Endian, with ``extra`` appended to the dataset."""
    part = codec.read_part10(data)
    body = part.body[part.body_start :] + extra
    head = set_transfer_syntax(data[: part.body_start], codec.DEFLATED_UIDS[0])
    return head + codec.deflate(body)


def test_a_deflated_file_inflates_only_up_to_the_cap(tmp_path: Path) -> None:
    ok, _, _ = run(tmp_path / "ok", deflated(good()))
    assert ok.status == "ok", ok.reason
    bomb_size = 100 << 20  # 100 MB of zeros in a private element: ~100 KB deflated
    bomb = deflated(good(), struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, bomb_size) + bytes(bomb_size))
    assert codec.inflate_limit(len(bomb)) < bomb_size
    outcome, out, d = run(tmp_path / "bomb", bomb)
    assert_refused(outcome, out, d, ("inflates beyond",))


# ---------------------------------------------------------------- names from values


@pytest.mark.parametrize("uid", ["../../escaped", "..", "1.2.3/../../4", "1.2." + "3" * 70, "1.2\\3.4"])
def test_retained_uids_that_are_not_uids_never_become_file_names(tmp_path: Path, uid: str) -> None:
    ds = planted_ct()
    data = set_value(to_bytes(ds), 0x00080018, "UI", uid.encode() + b"\0" * (len(uid) % 2))
    outcome, out, d = run(tmp_path / "run", data, retain_uids=True)
    assert outcome.status == "quarantined" and "SOP Instance UID is not a valid UID" in outcome.reason
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing written beside
    assert not out.exists() or list(out.iterdir()) == []
    study = set_value(to_bytes(ds), 0x0020000D, "UI", b"..")
    outcome, _, _ = run(tmp_path / "study", study, retain_uids=True)
    assert outcome.status == "quarantined" and "Study Instance UID" in outcome.reason


def test_spool_and_transport_names_accept_only_uids(tmp_path: Path) -> None:
    from medsendx.outbox import Outbox
    from medsendx.transport.base import uid_is_safe

    assert uid_is_safe("1.2.840.10008.1") and not any(uid_is_safe(u) for u in ("..", ".", "1..2", "../1", "1.2.", ""))
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    with pytest.raises(ValueError):
        outbox._spool_name("../../x", "file:///tmp/hq")


# ---------------------------------------------------------------- library messages


def test_quarantine_reasons_never_quote_library_messages(tmp_path: Path) -> None:
    """pydicom's pixel decoder quotes the value it refuses ("Unknown (0028,0004)
    'Photometric Interpretation' value 'PLANTED...'"); the reason must be ours."""
    ds = planted_ct(sop_class="1.2.840.10008.5.1.4.1.1.7")  # Secondary Capture: pixels are checked
    data = set_value(to_bytes(ds), 0x00280004, "CS", b"PLANTEDPHOTO")
    src = tmp_path / "sc.dcm"
    src.write_bytes(data)
    d = Deidentifier(settings_for(tmp_path / "state"))  # the real pixel cleaner
    outcome = d.deidentify_file(src, tmp_path / "out")
    assert outcome.status == "quarantined"
    assert PLANT not in outcome.reason and "PHOTO" not in outcome.reason
    for record in list_quarantine(d.settings.quarantine_dir):
        assert PLANT not in json.dumps(record)
    assert PLANT not in d.settings.audit_log.read_text()


# ---------------------------------------------------------------- clean (C) actions


def test_clean_actions_keep_only_values_of_the_exact_form(tmp_path: Path) -> None:
    """Modified dates (the default): a time of day, a UTC offset and a date-time's time
    part stay only in their exact forms; a free-text canary in any of them is removed."""
    ds = planted_ct()
    ds.TimezoneOffsetFromUTC = "PLANTED CANARY"
    ds.StudyTime = "PLANTEDTIME"
    ds.AcquisitionDateTime = "20240316PLANTED"
    ds.InstanceCreationTime = "101500.25"
    ds.SeriesTime = "1015\\PLANTED"
    outcome, _, _ = run(tmp_path / "canary", to_bytes(ds))
    assert outcome.status == "ok", outcome.reason
    raw = outcome.output.read_bytes()
    assert PLANT.encode() not in raw
    out = pydicom.dcmread(outcome.output)
    assert out.get("TimezoneOffsetFromUTC", "") == "" and out.get("StudyTime", "") == ""
    assert out.get("AcquisitionDateTime", "") == "" and out.InstanceCreationTime == "101500.25"
    assert out.SeriesTime == "1015"

    ds = planted_ct()
    ds.TimezoneOffsetFromUTC = "+0130"
    ds.AcquisitionDateTime = "20240316093000.5-0500"
    outcome, _, _ = run(tmp_path / "valid", to_bytes(ds))
    out = pydicom.dcmread(outcome.output)
    assert out.TimezoneOffsetFromUTC == "+0130"
    assert str(out.AcquisitionDateTime).endswith("093000.5-0500") and not str(out.AcquisitionDateTime).startswith("20240316")


def test_a_cleaned_coded_string_stays_only_as_a_code(tmp_path: Path) -> None:
    """ReasonForTheAttributeModification (CS, C under Clean Descriptors): a code stays, free
    text (which word cleaning would let through unless it names the patient) goes."""
    ds = planted_ct()
    ds.ReasonForTheAttributeModification = "free text canary"
    outcome, _, _ = run(tmp_path / "text", to_bytes(ds), clean_descriptors=True)
    assert outcome.status == "ok", outcome.reason
    assert b"canary" not in outcome.output.read_bytes()
    ds.ReasonForTheAttributeModification = "COERCE"
    outcome, _, _ = run(tmp_path / "code", to_bytes(ds), clean_descriptors=True)
    assert pydicom.dcmread(outcome.output).ReasonForTheAttributeModification == "COERCE"


# ---------------------------------------------------------------- the console


def damaged_for_commands(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    base = good()
    files = {
        "nan": set_value(base, 0x00280008, "IS", b"nan "),
        "markup": set_value(set_value(base, 0x00080080, "LO", b"[/i] x"), 0x00081030, "LO", b"[/i]"),
        "badvr": set_vr(base, 0x00080060, "QQ"),
        "slope": set_value(base, 0x00281053, "DS", b"abc "),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.dcm"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize("command", ["inspect", "view", "segment"])
def test_damaged_files_give_one_line_of_ours_never_a_traceback(tmp_path: Path, cli, state_dir: Path, command: str) -> None:
    for name, path in damaged_for_commands(tmp_path / "in").items():
        args = [command, path] + (["--no-png"] if command == "segment" else [])
        result = cli(*args)
        assert "Traceback" not in result.stderr + result.stdout, f"{command} {name}"
        assert "internal error" not in result.stderr, f"{command} {name}"
        if result.returncode:
            assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, (command, name, result.stderr)
        if command in ("inspect", "view") and name == "markup":
            assert result.returncode == 0 and "[/i]" in result.stdout


def test_file_names_are_printed_literally_with_control_characters_escaped(tmp_path: Path, cli, state_dir: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    markup, escape = folder / "[red]x[bold].dcm", folder / "esc\x1b[31mred.dcm"
    for path in (markup, escape):
        path.write_bytes(b"not a dicom file")
    for args in (["inspect", markup], ["inspect", escape], ["segment", escape, "--no-png"]):
        result = cli(*args)
        assert result.returncode == 1 and "\x1b" not in result.stderr
        assert ("[red]x[bold].dcm" if args[1] == markup else "esc\\x1b[31mred.dcm") in result.stderr
    result = cli("anonymize", folder, tmp_path / "out")
    assert "[red]x[bold].dcm" in result.stderr and "esc\\x1b[31mred.dcm" in result.stderr
    assert "\x1b[31m" not in result.stderr
