"""De-identification engine: every action and option on synthetic objects with planted
identifiers (top level, three sequences deep, private blocks, repeating groups, attributes
the table does not know), plus bad input, quarantine, the audit log and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from datetime import date
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedCTImageStorage, SecondaryCaptureImageStorage, generate_uid

from deid_helpers import PIXELS, PLANT, planted_ct, settings_for, write
from medsendx.deid import Deidentifier, QuarantineRequired, Profile, clean_text
from medsendx.deid.audit import read_audit
from medsendx.deid.profile import COMBINED_ACTIONS, SIMPLE_ACTIONS, load_table, resolve_combined
from medsendx.deid.uids import shift_date, shift_datetime
from medsendx.quarantine import list_quarantine


def run(tmp_path: Path, ds: Dataset, **deid) -> tuple[Dataset, bytes, Deidentifier]:
    """De-identify ``ds`` through the file path; return the output dataset and bytes."""
    deidentifier = Deidentifier(settings_for(tmp_path / "state", **deid))
    src = write(ds, tmp_path / "in" / f"{generate_uid()}.dcm")
    outcome = deidentifier.deidentify_file(src, tmp_path / "out")
    assert outcome.status == "ok", outcome.reason
    data = outcome.output.read_bytes()
    return pydicom.dcmread(outcome.output), data, deidentifier


def days_between(a: str, b: str) -> int:
    return (date(int(a[:4]), int(a[4:6]), int(a[6:8])) - date(int(b[:4]), int(b[4:6]), int(b[6:8]))).days


# ---------------------------------------------------------------- the table itself


def test_vendored_table_matches_the_standard_copy_and_every_action_is_known():
    rows = load_table()
    assert len(rows) == 656
    assert {r["basicProfile"] for r in rows} <= SIMPLE_ACTIONS | COMBINED_ACTIONS
    assert {"X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"} <= {r["basicProfile"] for r in rows}
    shared = Path(__file__).resolve().parents[2] / "shared" / "standard" / "ps3.15-table-e1-1.json"
    if shared.is_file():
        assert json.loads(shared.read_text()) == rows


def test_profile_compiles_table_rows_with_options():
    basic = Profile(settings_for(Path("/nonexistent"), dates="remove").deid).actions
    assert basic[0x00080050] == "Z"  # Accession Number
    assert basic[0x00101040] == "X"  # Patient's Address
    assert basic[0x0020000D] == "U"  # Study Instance UID
    assert basic[0x00080080] == "X/Z/D"  # Institution Name
    assert basic[0x00080020] == "Z"  # Study Date
    options = Profile(
        settings_for(Path("/x"), dates="modified", retain_institution_identity=True, retain_uids=True).deid
    ).actions
    assert options[0x00080020] == "SHIFT"
    assert options[0x00080080] == "K"
    assert options[0x0020000D] == "K"
    full = Profile(settings_for(Path("/x"), dates="full").deid).actions
    assert full[0x00080020] == "K"


@pytest.mark.parametrize(
    "action,iod_type,expected",
    [
        ("X/Z", 3, "X"), ("X/Z", 2, "Z"), ("X/D", 3, "X"), ("X/D", 1, "D"), ("X/D", 2, "D"),
        ("Z/D", 2, "Z"), ("Z/D", 1, "D"), ("Z/D", 3, "Z"), ("X/Z/D", 3, "X"), ("X/Z/D", 2, "Z"),
        ("X/Z/D", 1, "D"), ("X/Z/U*", 3, "X"), ("X/Z/U*", 2, "Z"), ("X/Z/U*", 1, "U"),
    ],
)
def test_combined_actions_pick_the_strictest_valid_choice(action, iod_type, expected):
    assert resolve_combined(action, iod_type) == expected


# ---------------------------------------------------------------- planted identifiers


def test_no_planted_identifier_survives_anywhere_in_the_output_bytes(tmp_path):
    ds = planted_ct()
    original_uids = [ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID]
    out, data, _ = run(tmp_path, ds)
    assert PLANT.encode() not in data
    for uid in original_uids:
        assert uid.encode() not in data
    assert b"19700101" not in data  # birth date emptied
    assert out.StudyDate != "20240315"  # shifted (a shifted date may equal another original one)
    assert out.PixelData == PIXELS  # pixel data byte for byte


def test_actions_at_top_level(tmp_path):
    out, _, _ = run(tmp_path, planted_ct(), dates="remove")
    assert "PatientAddress" not in out and "OtherPatientIDs" not in out  # X
    assert out.AccessionNumber == "" and out.ReferringPhysicianName == ""  # Z
    assert out.StudyDate == "" and "PatientBirthDate" in out and out.PatientBirthDate == ""  # Z
    assert "InstitutionName" not in out and "OperatorsName" not in out  # X/Z/D, Type 3 in CT
    assert "SeriesDate" not in out and "InstanceCreationDate" not in out  # X/D, Type 3
    assert "AcquisitionDate" not in out  # X/Z, Type 3
    assert out.ContentDate == ""  # Z/D, Type 2 in CT
    assert out.SOPInstanceUID.startswith("2.25.") and len(out.SOPInstanceUID) <= 64  # U
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in out.file_meta
    assert out.Manufacturer == "GE MEDICAL SYSTEMS" and out.KVP == 120  # kept
    assert out.ConvolutionKernel == "STANDARD"  # unlisted but on the safe list


def test_actions_three_sequences_deep(tmp_path):
    ds = planted_ct()
    sop = ds.SOPInstanceUID
    out, _, _ = run(tmp_path, ds)
    inner = out.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0].DerivationCodeSequence[0]
    assert inner.PersonName == "ANONYMOUS"  # D
    assert "OtherPatientIDs" not in inner  # X
    assert inner.ReferencedSOPInstanceUID == out.SOPInstanceUID != sop  # U, consistent
    assert 0x00109999 not in inner  # unknown PN
    assert not any(tag.is_private for tag in inner.keys())
    assert inner.CodeMeaning == "Brain"  # coded values stay


def test_enhanced_and_derived_objects_keep_what_their_iod_requires(tmp_path):
    ds = planted_ct(sop_class=EnhancedCTImageStorage)
    out, _, _ = run(tmp_path, ds, dates="remove")
    assert out.ContentDate == "19000101"  # Z/D: Type 1 in enhanced IODs -> D
    assert out.DeviceSerialNumber == "ANONYMIZED"  # X/Z/D: Type 1 in Enhanced General Equipment
    assert out.AcquisitionDateTime == "19000101000000.000000"

    derived = planted_ct(image_type="DERIVED\\SECONDARY\\AXIAL")
    source = Dataset()
    source.ReferencedSOPClassUID = derived.SOPClassUID
    source.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7"
    derived.SourceImageSequence = [source]
    out, data, deid = run(tmp_path / "d", derived)
    assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == deid.mapper.uid("1.2.3.4.5.6.7")  # X/Z/U* -> U
    assert b"1.2.3.4.5.6.7" not in data

    original = planted_ct()
    original.SourceImageSequence = [source]
    out, _, _ = run(tmp_path / "o", original)
    assert "SourceImageSequence" not in out  # Type 3 for an original image -> X


def test_private_blocks_repeating_groups_and_unknown_attributes_are_removed(tmp_path):
    out, _, _ = run(tmp_path, planted_ct())
    assert not any(tag.is_private for tag in out.keys())
    assert not any(0x5000 <= tag.group <= 0x50FF or 0x6000 <= tag.group <= 0x60FF for tag in out.keys())
    assert 0x00109998 not in out  # an unknown (future edition) PN attribute
    assert 0x00189998 not in out  # unknown free text
    assert out[0x00189996].value == 3.5  # unknown number: kept


# ---------------------------------------------------------------- options


def test_modified_dates_shift_per_patient_and_keep_intervals(tmp_path):
    a1, _, deid = run(tmp_path, planted_ct(patient_id="PLANTEDA"))
    a2, _, _ = run(tmp_path, planted_ct(patient_id="PLANTEDA"))
    shift = days_between(a1.StudyDate, "20240315")
    assert -365 <= shift <= -1
    assert a2.StudyDate == a1.StudyDate  # same patient, same offset
    assert days_between(a1.InstanceCreationDate, a1.StudyDate) == 2  # intervals survive
    assert a1.AcquisitionDateTime[:8] == shift_date("20240316", shift) and a1.AcquisitionDateTime[8:] == "093000.5"
    assert a1.StudyTime == "101500"  # times of day stay
    assert a1.LongitudinalTemporalInformationModified == "MODIFIED"
    inner = a1.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0].DerivationCodeSequence[0]
    assert inner.StudyDate == a1.StudyDate  # nested dates shifted alike
    offsets = {deid.mapper.date_offset_days(f"id:|P{i}") for i in range(50)}
    assert len(offsets) > 10  # patients do not share one offset


def test_full_dates_keep_dates(tmp_path):
    out, _, _ = run(tmp_path, planted_ct(), dates="full")
    assert out.StudyDate == "20240315" and out.AcquisitionDateTime == "20240316093000.5"
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    codes = [c.CodeValue for c in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113106"]


def test_retain_options_keep_their_attributes_and_are_recorded(tmp_path):
    ds = planted_ct()
    uids = (ds.StudyInstanceUID, ds.SOPInstanceUID)
    out, _, _ = run(
        tmp_path,
        ds,
        retain_patient_characteristics=True,
        retain_device_identity=True,
        retain_institution_identity=True,
        retain_uids=True,
    )
    assert out.PatientSex == "F" and out.PatientAge == "054Y" and out.PatientWeight == 61
    assert out.DeviceSerialNumber == "PLANTEDSER99"
    assert out.InstitutionName == "PLANTED GENERAL HOSPITAL"
    assert (out.StudyInstanceUID, out.SOPInstanceUID) == uids
    assert out.PatientName == "ANONYMIZED" and out.PatientID != "PLANTEDID001"  # never retained
    codes = {c.CodeValue for c in out.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113107", "113108", "113109", "113110", "113112"}
    assert out.PatientIdentityRemoved == "YES"


def test_clean_descriptors_removes_identifying_words(tmp_path):
    out, data, _ = run(tmp_path, planted_ct(patient="PLANTED^ALICE"), clean_descriptors=True)
    assert out.StudyDescription == "HEAD"  # patient's name and the long number removed
    assert out.SeriesDescription == "SERIES NOTE"  # "PLANTED" is part of the institution name
    assert "113105" in {c.CodeValue for c in out.DeidentificationMethodCodeSequence}
    assert clean_text("CT of John Smith 2024-03-15 ID 12345678", {"JOHN", "SMITH"}) == "CT of 2024-03-15 ID"


def test_retain_safe_private_keeps_only_the_allow_list(tmp_path):
    ds = planted_ct()
    del ds[0x00431039]
    ds.add_new(0x00430010, "LO", "GEMS_PARM_01")
    ds.add_new(0x00431039, "IS", ["1000", "8", "0", "0"])  # b-value: on the allow-list
    ds.add_new(0x00431040, "LO", "PLANTEDGEPRIVATE")  # same block, not on the list
    out, data, _ = run(tmp_path, ds, retain_safe_private=True)
    private = {tag for tag in out.keys() if tag.is_private}
    assert private == {0x00430010, 0x00431039}
    assert PLANT.encode() not in data
    assert "113111" in {c.CodeValue for c in out.DeidentificationMethodCodeSequence}


# ---------------------------------------------------------------- UIDs and pseudonyms


def test_uids_and_pseudonyms_are_keyed_deterministic_and_consistent(tmp_path):
    study, series = generate_uid(), generate_uid()
    first = planted_ct(study_uid=study, series_uid=series)
    second = planted_ct(study_uid=study, series_uid=series)
    other = planted_ct(patient="PLANTED^BOB", patient_id="PLANTEDID002")
    o1, _, deid = run(tmp_path, first)
    o2, _, _ = run(tmp_path, second)
    o3, _, _ = run(tmp_path, other)
    assert o1.SeriesInstanceUID == o2.SeriesInstanceUID and o1.StudyInstanceUID == o2.StudyInstanceUID
    assert o1.SOPInstanceUID != o2.SOPInstanceUID
    assert o1.PatientID == o2.PatientID != o3.PatientID
    assert o1.PatientID == deid.mapper.patient_pseudonym("id:|PLANTEDID001")
    # A re-run gives byte-identical output.
    again = Deidentifier(settings_for(tmp_path / "state")).deidentify_file(
        write(first, tmp_path / "again.dcm"), tmp_path / "out2"
    )
    assert again.output.read_bytes() == (tmp_path / "out" / f"{o1.SOPInstanceUID}.dcm").read_bytes()
    # Another secret gives other UIDs.
    o4, _, _ = run(tmp_path / "other-site", planted_ct(study_uid=study, series_uid=series))
    assert o4.StudyInstanceUID != o1.StudyInstanceUID
    pseudonyms = {deid.mapper.patient_pseudonym(f"id:|{i}") for i in range(20000)}
    assert len(pseudonyms) == 20000
    assert all(len(deid.mapper.uid(str(i))) <= 64 for i in range(1000))


def test_secret_is_created_once_with_mode_0600(tmp_path):
    settings = settings_for(tmp_path / "state")
    Deidentifier(settings)
    secret = settings.secret_file
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    content = secret.read_bytes()
    Deidentifier(settings)
    assert secret.read_bytes() == content
    settings.secret_path = tmp_path / "fleet" / "shared.key"
    Deidentifier(settings)
    assert settings.secret_file.is_file()


def test_patient_name_placeholder_and_station_id(tmp_path):
    out, _, _ = run(tmp_path, planted_ct(), patient_name="WITHHELD")
    assert out.PatientName == "WITHHELD"
    # the provenance tag names the unit exactly, so that fleet analytics never merges two
    # units that share a suffix (see the README on ids longer than SH's 16 characters)
    assert out.StationName == "REMOTE_MOBILE_CLINIC_01"


def test_existing_deidentification_records_are_replaced(tmp_path):
    ds = planted_ct()
    ds.PatientIdentityRemoved = "NO"
    ds.DeidentificationMethod = "PLANTED OLD TOOL"
    ds.DeidentificationMethodCodeSequence = [planted_code := Dataset()]
    planted_code.CodeValue = "113101"
    planted_code.CodingSchemeDesignator = "DCM"
    planted_code.CodeMeaning = "PLANTED"
    out, data, _ = run(tmp_path, ds)
    assert out.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert PLANT.encode() not in data


def test_shift_helpers_refuse_what_they_cannot_shift():
    assert shift_date("20240301", -1) == "20240229"
    assert shift_date("2024", -1) == "" and shift_date("garbage!", -3) == ""
    assert shift_datetime("20240301120000+0100", -1) == "20240229120000+0100"
    assert shift_datetime("2024", -1) == ""


# ---------------------------------------------------------------- pixel risk


def screen_capture(**attrs) -> Dataset:
    ds = planted_ct(sop_class=SecondaryCaptureImageStorage)
    ds.Modality = "OT"
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


@pytest.mark.parametrize(
    "attrs,reason",
    [
        ({"BurnedInAnnotation": "YES"}, "burned-in annotation"),
        ({}, "screen-capture"),
        ({"BurnedInAnnotation": "NO", "RecognizableVisualFeatures": "YES"}, "recognizable visual features"),
    ],
)
def test_objects_with_identifying_pixels_are_quarantined(tmp_path, attrs, reason):
    deid = Deidentifier(settings_for(tmp_path / "state"), pixel_cleaner=None)  # no cleaner: quarantine
    src = write(screen_capture(**attrs), tmp_path / "in.dcm")
    outcome = deid.deidentify_file(src, tmp_path / "out")
    assert outcome.status == "quarantined" and reason in outcome.reason
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    records = list_quarantine(deid.settings.quarantine_dir)
    assert len(records) == 1 and reason in records[0]["reason"] and PLANT not in json.dumps(records)


def test_screen_capture_declared_clean_passes(tmp_path):
    out, data, _ = run(tmp_path, screen_capture(BurnedInAnnotation="NO"))
    assert out.BurnedInAnnotation == "NO" and PLANT.encode() not in data


class BlankingCleaner:
    """A minimal real cleaner for the hook contract: blanks every pixel (lossless)."""

    def __init__(self, clean: bool = True) -> None:
        self.clean = clean
        self.words: set[str] = set()

    def __call__(self, ds: Dataset, words: set[str]):
        from types import SimpleNamespace

        self.words = words
        if self.clean:
            ds.PixelData = bytes(len(ds.PixelData))
        return SimpleNamespace(clean=self.clean, reason="" if self.clean else "text could not be removed", regions=[], changed=self.clean)


def test_pixel_cleaner_hook(tmp_path):
    settings = settings_for(tmp_path / "state")
    cleaner = BlankingCleaner()
    deid = Deidentifier(settings, pixel_cleaner=cleaner)
    outcome = deid.deidentify_file(write(screen_capture(BurnedInAnnotation="YES"), tmp_path / "a.dcm"), tmp_path / "out")
    assert outcome.status == "ok"
    out = pydicom.dcmread(outcome.output)
    assert out.BurnedInAnnotation == "NO" and out.PixelData == bytes(len(PIXELS))
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence][:2] == ["113100", "113101"]
    assert "ALICE" in cleaner.words and "PLANTEDID001" in cleaner.words
    failing = Deidentifier(settings, pixel_cleaner=BlankingCleaner(clean=False))
    outcome = failing.deidentify_file(write(screen_capture(), tmp_path / "b.dcm"), tmp_path / "out")
    assert outcome.status == "quarantined" and outcome.reason == "text could not be removed"
    faces = deid.deidentify_file(write(screen_capture(RecognizableVisualFeatures="YES"), tmp_path / "c.dcm"), tmp_path / "out")
    assert faces.status == "quarantined"  # no text cleaner can remove a face


def test_deidentify_dataset_in_place_raises_for_quarantine(tmp_path):
    deid = Deidentifier(settings_for(tmp_path / "state"), pixel_cleaner=None)
    ds = planted_ct()
    report = deid.deidentify(ds)
    assert ds.SOPInstanceUID == report.sop_instance_uid and report.counts["U"] >= 4
    with pytest.raises(QuarantineRequired):
        deid.deidentify(screen_capture(BurnedInAnnotation="YES"))


# ---------------------------------------------------------------- bad input


def bad_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True)
    good = write(planted_ct(), folder / "good.dcm").read_bytes()
    files = {
        "not DICOM": b"PLANTED this is a text file, not an image\n" * 10,
        "truncated header": good[:400],
        "truncated pixels": good[:-3000],
        "no file meta": good[132 + int.from_bytes(good[140:144], "little") + 12 :],
        "bad VR": good.replace(b"\x10\x00\x10\x00PN", b"\x10\x00\x10\x00\x01\x02", 1),
    }
    paths = {}
    for name, data in files.items():
        path = folder / f"{name.replace(' ', '_')}.dcm"
        path.write_bytes(data)
        paths[name] = path
    paths["good"] = folder / "good.dcm"
    return paths


def test_bad_input_is_quarantined_with_a_reason_and_never_written(tmp_path):
    deid = Deidentifier(settings_for(tmp_path / "state"))
    paths = bad_inputs(tmp_path / "in")
    outcomes = {name: deid.deidentify_file(path, tmp_path / "out") for name, path in paths.items()}
    assert outcomes["good"].status == "ok"
    for name, outcome in outcomes.items():
        if name == "good":
            continue
        assert outcome.status == "error", name
        assert outcome.reason and "\n" not in outcome.reason and PLANT not in outcome.reason
    assert list((tmp_path / "out").iterdir()) == [outcomes["good"].output]
    assert len(list_quarantine(deid.settings.quarantine_dir)) == 5
    audit = read_audit(deid.settings.audit_log)
    assert [a["status"] for a in audit].count("error") == 5
    assert all(len(a["input_sha256"]) == 64 for a in audit)
    assert PLANT not in deid.settings.audit_log.read_text()


def _unprivileged(function):
    """Run ``function()`` in a forked child that, when we are root (as in CI), first drops
    to the unprivileged user ``nobody`` (root may write anywhere: a permission test run as
    root would prove nothing, and skipping it under root meant it never ran in CI).
    Returns what the function returned (pickled back through a pipe)."""
    import pickle

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            with os.fdopen(write_end, "wb") as pipe:
                pickle.dump(function(), pipe)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the unprivileged child failed"
    return pickle.loads(data)


def test_unwritable_output_is_an_error_not_a_crash(tmp_path):
    # A world-usable folder for the unprivileged child (pytest's tmp_path is root's, 0700).
    work = Path(tempfile.mkdtemp(prefix="medsendx-unpriv-"))
    try:
        os.chmod(work, 0o777)
        (work / "state").mkdir(mode=0o777)
        os.chmod(work / "state", 0o777)
        source = write(planted_ct(), work / "a.dcm")
        os.chmod(source, 0o644)
        locked = work / "locked"
        locked.mkdir()
        os.chmod(locked, 0o555)  # nobody (and the owner when not root) cannot create "out"
        deid = Deidentifier(settings_for(work / "state"), pixel_cleaner=None)  # (reads the secret here)
        os.chmod(work / "state", 0o777)  # the child writes the quarantine and the audit log

        def attempt():
            outcome = deid.deidentify_file(source, locked / "out")
            return outcome.status, outcome.reason, os.geteuid()

        status, reason, uid = _unprivileged(attempt)
        assert uid != 0
        assert status == "error" and "cannot write the output" in reason
        assert not (locked / "out").exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_output_that_is_a_file_is_an_error_not_a_crash(tmp_path):
    deid = Deidentifier(settings_for(tmp_path / "state"))
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should be")
    outcome = deid.deidentify_file(write(planted_ct(), tmp_path / "a.dcm"), blocker)
    assert outcome.status == "error" and "cannot write the output" in outcome.reason
    assert len(list_quarantine(deid.settings.quarantine_dir)) == 1


def test_audit_log_records_each_object(tmp_path):
    _, _, deid = run(tmp_path, planted_ct())
    (record,) = read_audit(deid.settings.audit_log)
    assert record["status"] == "ok" and record["output_sop_instance_uid"].startswith("2.25.")
    assert record["options"]["dates"] == "modified" and record["actions"]["U"] >= 4
    assert {"time", "input_sha256", "profile"} <= set(record)


# ---------------------------------------------------------------- CLI


def test_cli_anonymizes_a_folder_and_reports_failures(tmp_path, cli, state_dir):
    paths = bad_inputs(tmp_path / "in")
    nested = write(planted_ct(), tmp_path / "in" / "deeper" / "more" / "x.dcm")
    result = cli("anonymize", tmp_path / "in", tmp_path / "out", "--workers", "2", "--dates", "full")
    assert result.returncode == 1, result.stderr
    assert "2 de-identified, 0 quarantined, 5 failed" in result.stdout
    assert PLANT not in result.stdout + result.stderr
    outputs = sorted((tmp_path / "out").iterdir())
    assert len(outputs) == 2 and all(p.name.startswith("2.25.") for p in outputs)
    assert pydicom.dcmread(outputs[0]).StudyDate == "20240315"
    assert nested.exists() and paths["good"].exists()  # inputs are left alone

    ok = cli("anonymize", paths["good"], tmp_path / "single")
    assert ok.returncode == 0 and "1 de-identified" in ok.stdout
    missing = cli("anonymize", tmp_path / "no-such-folder", tmp_path / "o")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert any("does not exist" in r["reason"] for r in list_quarantine(state_dir / "quarantine"))


def test_cli_help_explains_the_options(cli):
    result = cli("anonymize", "--help")
    assert result.returncode == 0
    for flag in ("--dates", "--retain-uids", "--clean-descriptors", "--retain-safe-private", "--workers"):
        assert flag in result.stdout


def test_batch_commit_writes_the_same_files_and_leaves_no_temp_files(tmp_path):
    deid = Deidentifier(settings_for(tmp_path / "state"))
    sources = [write(planted_ct(), tmp_path / "in" / f"{i}.dcm") for i in range(5)]
    (tmp_path / "in" / "junk.dcm").write_bytes(b"not dicom")
    sources.insert(2, tmp_path / "in" / "junk.dcm")
    outcomes = list(deid.deidentify_files(sources, tmp_path / "batch", batch=2))
    assert [o.source for o in outcomes] == sources  # input order
    assert [o.status for o in outcomes].count("ok") == 5 and outcomes[2].status == "error"
    single = [deid.deidentify_file(src, tmp_path / "single") for src in sources]
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == sorted(p.name for p in (tmp_path / "single").iterdir())
    for outcome in single:
        if outcome.status == "ok":
            assert outcome.output.read_bytes() == (tmp_path / "batch" / outcome.output.name).read_bytes()


def test_dataset_without_file_meta_is_deidentified_in_place(tmp_path):
    """A dataset as a DICOM network peer delivers it: no file meta, implicit VR."""
    deid = Deidentifier(settings_for(tmp_path / "state"))
    ds = planted_ct()
    del ds.file_meta
    pixels = ds.PixelData
    deid.deidentify(ds)
    assert ds.PatientName == "ANONYMIZED" and ds.PixelData == pixels
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert not any(PLANT in str(elem.value) for elem in ds.iterall() if elem.VR != "OW")


def test_deidentification_method_lists_profile_and_options_in_valid_values(tmp_path):
    out, _, _ = run(tmp_path, planted_ct(), clean_descriptors=True, retain_uids=True)
    values = list(out.DeidentificationMethod)
    assert values[0] == "MedSendX PS3.15 Basic Profile"
    assert "Clean Descriptors" in values and "Retain UIDs" in values
    assert all(len(v) <= 64 for v in values)
