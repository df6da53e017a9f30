"""Triage results as DICOM (issue 14): SEG, TID 1500 SR and KOS shipped with each study.

The real GE head CT series and a mammography phantom (two images: one dense breast, one
cut off at the detector edge) go through ``medsendx send`` to a real Orthanc. Oracles that
do not come from the code under test: dciodvfy (validity), highdicom's own parsers (the
SEG's pixels per source image, the SR's measurement groups), the triage recomputed here
from the images Orthanc stored, the planted identity and the originals' UIDs (searched
for in the stored bytes), and Orthanc's DICOMweb listing of each study's series.
"""

from __future__ import annotations

import io
import re
import shutil
import time
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from delivery_samples import orthanc_objects
from medsendx.gateway.scanday import PATIENTS, plant_identity
from medsendx.triage import triage_dataset
from triage_synthetic import mammography_phantom, save

STATION = "TRUCK_07"  # <= 16 characters: StationName (SH) stays valid for dciodvfy
MG_PATIENT = PATIENTS[2]
SEG_CLASS, SR_CLASS, KOS_CLASS = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.59"


def plain(data: bytes) -> bytes:
    """A Deflated Explicit VR Little Endian file (our SEG) as Explicit VR Little Endian,
    re-encoded by pydicom: dicom3tools reads no deflated data, and a search for leaked
    identifiers in compressed bytes would find nothing whatever they hold."""
    ds = pydicom.dcmread(io.BytesIO(data))
    if ds.file_meta.TransferSyntaxUID != DeflatedExplicitVRLittleEndian:
        return data
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def dciodvfy_errors(data: bytes, tmp: Path) -> list[str]:
    path = tmp / f"check-{generate_uid()}.dcm"
    path.write_bytes(plain(data))
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def mammography_study(folder: Path) -> list[Path]:
    """Two MG images of one study and series with a planted identity: a dense breast
    (priority raised for density) and one cut off at the nipple-side edge (repeat now)."""
    study, series = generate_uid(), generate_uid()
    paths = []
    for number, (dense, cut) in enumerate([(0.6, False), (0.3, True)], start=1):
        ds, _ = mammography_phantom(dense, "MONOCHROME1", seed=number, cut_off=cut)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # MG for presentation
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series  # no Frame of Reference: as on real MG
        ds.PatientOrientation = ["P", "L"]
        ds.InstanceNumber, ds.SeriesNumber = number, 1
        ds.PatientName, ds.PatientID = MG_PATIENT.name, MG_PATIENT.patient_id
        ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber = MG_PATIENT.birth_date, "F", MG_PATIENT.accession
        ds.StudyDate, ds.StudyTime, ds.ContentDate, ds.ContentTime = "20260301", "101500", "20260301", "101700"
        ds.ReferringPhysicianName, ds.InstitutionName = MG_PATIENT.referring, MG_PATIENT.institution
        ds.StudyID, ds.ImageLaterality, ds.ViewPosition = "MG1", "L", "CC"
        paths.append(save(ds, folder / f"mg{number}.dcm"))
    return paths


def secrets(files: list[Path]) -> list[bytes]:
    values = {v.encode() for p in (PATIENTS[0], MG_PATIENT) for v in p.identifying_values()}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            if keyword in ds:
                values.add(str(ds[keyword].value).encode())
        values.add(b"20260301")  # the MG study's real date (dates are shifted by default)
    # nor the day they were built: shifted dates lie in the past, today is the real day
    import datetime

    for day in (datetime.date.today(), datetime.datetime.now(datetime.timezone.utc).date()):
        values.add(day.strftime("%Y%m%d").encode())
    return sorted(values)


@pytest.fixture
def inbox(tmp_path, ct_head) -> tuple[Path, list[Path]]:
    folder = tmp_path / "scans"
    folder.mkdir()
    files = [plant_identity(src, folder / f"ct{i:03d}.dcm", PATIENTS[0]) for i, src in enumerate(ct_head)]
    files += mammography_study(folder)
    return folder, files


@pytest.mark.slow
def test_send_delivers_valid_seg_sr_kos_in_each_study(cli, orthanc, state_dir, inbox, tmp_path) -> None:
    folder, files = inbox
    url = "dicomweb+" + orthanc.dicomweb_url
    run = cli("send", folder, "--to", url, env={"MEDSENDX_STATION_ID": STATION})
    assert run.returncode == 0, run.stderr
    assert re.search(r"triage results queued \(SEG / SR / KOS\)\s*│\s*3 / 2 / 2", run.stdout), run.stdout
    stored = orthanc_objects(orthanc)  # fails on an instance stored twice
    assert len(stored) == len(files) + 7  # CT: one SEG for the series; MG: one per image

    by_study: dict[str, list[pydicom.Dataset]] = {}
    for ds in stored.values():
        by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    assert len(by_study) == 2, "the results join their images' studies"
    leaks = secrets(files)
    for study_uid, objects in by_study.items():
        images = [d for d in objects if d.SOPClassUID not in (SEG_CLASS, SR_CLASS, KOS_CLASS)]
        segs = [d for d in objects if d.SOPClassUID == SEG_CLASS]
        assert len(segs) == (1 if images[0].Modality == "CT" else len(images))
        (sr,) = [d for d in objects if d.SOPClassUID == SR_CLASS]
        (kos,) = [d for d in objects if d.SOPClassUID == KOS_CLASS]
        # Orthanc's DICOMweb lists the three new series with readable descriptions
        series = httpx.get(f"{orthanc.dicomweb_url}/studies/{study_uid}/series", timeout=30).json()
        modalities = sorted(s["00080060"]["Value"][0] for s in series)
        assert modalities == sorted([images[0].Modality, "SEG", "SR", "KO"])
        for result in (*segs, sr, kos):
            data = orthanc.instance_file(_orthanc_id(orthanc, result.SOPInstanceUID))
            assert dciodvfy_errors(data, tmp_path) == [], result.SOPClassUID
            assert not [s for s in leaks if s in plain(data)], "an original identifier is in a result"
            for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate"):
                assert result.get(keyword) == images[0].get(keyword), keyword  # the pseudonymous identity
            assert result.PatientIdentityRemoved == "YES"
            assert result.StationName == STATION
            assert "MedSendX triage" in result.SeriesDescription
        _check_values(images, segs, sr, kos)

    # a second run builds the same results: nothing new reaches the PACS
    again = cli("send", folder, "--to", url, env={"MEDSENDX_STATION_ID": STATION})
    assert again.returncode == 0, again.stderr
    assert re.search(r"triage results queued \(SEG / SR / KOS\)\s*│\s*0 / 0 / 0", again.stdout)
    assert len(orthanc.instance_ids()) == len(files) + 7


def _orthanc_id(orthanc, sop_uid: str) -> str:
    found = httpx.post(f"{orthanc.url}/tools/lookup", content=sop_uid, timeout=30).json()
    return next(f["ID"] for f in found if f["Type"] == "Instance")


def _check_values(images: list[pydicom.Dataset], seg_datasets, sr_ds, kos_ds) -> None:
    """Values read back with highdicom equal the triage of the images Orthanc stored."""
    import highdicom as hd

    from medsendx.triage.dicom_results import read_triage_report

    records = {}
    labels = {}
    for image in images:
        maps: list = []
        records[str(image.SOPInstanceUID)] = triage_dataset(image, label_maps=maps).to_dict()
        labels[str(image.SOPInstanceUID)] = maps[0]
    modality = images[0].Modality

    # SEG: one binary mask per class and source image, equal to the recomputed labels
    segs = [hd.seg.Segmentation.from_dataset(d) for d in seg_datasets]
    covered = {}
    for seg in segs:
        assert seg.SegmentationType == "BINARY"
        names = [s.SegmentLabel for s in seg.SegmentSequence]
        assert names == (["Air", "Soft tissue", "Bone"] if modality == "CT" else ["Background", "Fatty", "Dense"])
        family = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmFamilyCodeSequence[0]
        assert (family.CodeValue, family.CodingSchemeDesignator) == ("123107", "DCM")  # Cluster Analysis
        assert all(s.SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator == "SCT" for s in seg.SegmentSequence)
        for ref in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence:
            covered[str(ref.ReferencedSOPInstanceUID)] = seg
    assert set(covered) == set(labels)
    for uid, label in labels.items():
        masks = covered[uid].get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1, 2, 3])
        for i in range(3):
            assert np.array_equal(masks[0, :, :, i].astype(bool), label == i), (uid, names[i])

    # SR: highdicom's own parse of the TID 1500 tree, then the documented reader
    sr = hd.sr.ComprehensiveSR.from_dataset(sr_ds)
    groups = sr.content.get_image_measurement_groups()
    priority_code = hd.sr.CodedConcept("PRIORITY", "99MEDSENDX", "Workflow priority (0-100)")
    seen = {}
    for group in groups:
        found = group.get_measurements(name=priority_code)
        if found:
            seen[group.source_images[0].referenced_sop_instance_uid] = int(found[0].value)
    assert seen == {uid: r["priority"] for uid, r in records.items()}
    assert any("private scheme 99MEDSENDX" in str(i.get("TextValue", "")) for i in sr_ds.ContentSequence)

    report = read_triage_report(sr_ds)
    assert report["priority"] == max(r["priority"] for r in records.values())
    assert report["patient_id"] == str(images[0].PatientID)
    assert report["station"] == STATION
    for image in report["images"]:
        record = records[image["sop_instance_uid"]]
        frame = record["frames"][0]
        assert image["priority"] == record["priority"]
        assert image["reasons"] == record["reasons"]
        assert sorted(image["flags"]) == sorted(f["code"] for f in record["flags"])
        assert [(c["label"], c["centre"], c["share_percent"]) for c in image["classes"]] == [
            (c["label"], pytest.approx(c["centre"], abs=1e-3), pytest.approx(100 * c["fraction"], abs=1e-3))
            for c in frame["classes"]]
        if modality == "MG":
            assert image["breast_density_percent"] == pytest.approx(record["breast_density_percent"], abs=1e-3)
    assert len(report["images"]) == len(images)

    # KOS: CT is routine ("Of Interest"); the cut-off mammogram asks for a repeat
    title = kos_ds.ConceptNameCodeSequence[0].CodeValue
    referenced = {item.ReferencedSOPInstanceUID for s in kos_ds.CurrentRequestedProcedureEvidenceSequence
                  for series in s.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    top = max(r["priority"] for r in records.values())
    assert referenced <= {uid for uid, r in records.items() if r["priority"] == top}
    description = next(str(i.TextValue) for i in kos_ds.ContentSequence if i.ValueType == "TEXT")
    assert description.startswith(f"Workflow priority {top}/100")
    if modality == "MG":
        assert title == "113010" and top >= 90 and report["flags"] == ["fov_truncated"]
        assert report["breast_density_percent"] is not None
    else:
        assert title == "113000" and len(referenced) == 8


def test_results_settings_turn_each_kind_off(cli, state_dir, inbox, tmp_path) -> None:
    folder, files = inbox
    hq = tmp_path / "hq"
    mg_only = tmp_path / "mg"
    mg_only.mkdir()
    for f in files[-2:]:
        shutil.copy(f, mg_only / f.name)
    run = cli("send", mg_only, "--to", hq, env={"MEDSENDX_TRIAGE__RESULTS_SEG": "false",
                                                 "MEDSENDX_TRIAGE__RESULTS_KOS": "false"})
    assert run.returncode == 0, run.stderr
    classes = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in hq.rglob("*.dcm"))
    assert classes.count(SR_CLASS) == 1 and SEG_CLASS not in classes and KOS_CLASS not in classes


def test_segment_writes_dicom_results_for_a_series(cli, state_dir, tmp_path, ct_head) -> None:
    deid = tmp_path / "deid"  # what the help text says: de-identified files for anything that leaves
    env = {"MEDSENDX_STATION_ID": STATION}
    assert cli("anonymize", ct_head[0].parent, deid, env=env).returncode == 0
    out = tmp_path / "results"
    run = cli("segment", deid, "--no-png", "--dicom", out, env=env)
    assert run.returncode == 0, run.stderr
    written = sorted(out.glob("*.dcm"))
    assert len(written) == 3
    for path in written:
        assert dciodvfy_errors(path.read_bytes(), tmp_path) == []
    again = tmp_path / "again"
    assert cli("segment", deid, "--no-png", "--dicom", again, env=env).returncode == 0
    assert sorted(p.name for p in again.glob("*.dcm")) == [p.name for p in written], "same input, same UIDs"


@pytest.mark.slow
def test_gateway_killed_while_holding_a_study_sends_its_results_once(orthanc, tmp_path, ct_head) -> None:
    """The gateway's kill test with study hold: killed (SIGKILL) three times while the
    scanner sends, then the scanner sends again; the PACS ends with every slice and ONE
    SEG, SR and KOS for the study, the report covering every slice."""
    import random

    from servers import dcmtk
    from test_gateway_service import GatewayProcess, push, wait_for

    from medsendx.triage.dicom_results import read_triage_report

    folder = tmp_path / "scanner"
    folder.mkdir()
    series = [plant_identity(src, folder / f"{i:03d}.dcm", PATIENTS[0]) for i, src in enumerate(ct_head)]
    rng = random.Random(14)
    state = tmp_path / "state"
    destination = f"dicomweb+{orthanc.dicomweb_url}"
    # Quiet for 20 s: longer than a round plus a restart ever takes, so the study is released
    # once, after the last push. (With 4 s, a restart slower than the remaining quiet time
    # released a partial study, whose later slices then made a second SEG and SR with other
    # UIDs: seen in 2 of 3 runs on a loaded machine. That partial-release case is a known
    # limit, noted on issue 14; this test is about kills, not about it.)
    options = {"extra_args": ["--study-quiet-seconds", "20"], "env": {"MEDSENDX_STATION_ID": STATION}}
    for _ in range(3):
        gateway = GatewayProcess(state, destination, **options).start()
        scanner = subprocess.Popen(
            [dcmtk("storescu"), "-aet", "CT_VAN", "-aec", "MEDSENDX", "127.0.0.1", str(gateway.dicom_port),
             *map(str, series)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 2.5))
        gateway.kill()
        scanner.wait(timeout=60)
    gateway = GatewayProcess(state, destination, **options).start()
    try:
        assert push(gateway.dicom_port, series).returncode == 0
        wait_for(lambda: len(orthanc.instance_ids()) == 28 + 3 and gateway.metrics()["queued"] == 0
                 and gateway.metrics()["held"] == 0, timeout=180, what="the study and its results delivered")
        figures = gateway.metrics()
    finally:
        assert gateway.terminate() == 0
    stored = orthanc_objects(orthanc)  # fails on an instance stored twice
    classes = sorted(str(ds.SOPClassUID) for ds in stored.values())
    assert classes.count(SEG_CLASS) == classes.count(SR_CLASS) == classes.count(KOS_CLASS) == 1
    (sr,) = [ds for ds in stored.values() if ds.SOPClassUID == SR_CLASS]
    images = {uid for uid, ds in stored.items() if ds.Modality == "CT"}
    assert {i["sop_instance_uid"] for i in read_triage_report(sr)["images"]} == images
    assert figures["results_sr_total"] <= 1 and figures["sent_total"] == 31


def test_seg_for_a_peer_without_deflate_is_inflated_and_the_same(cli, state_dir, tmp_path, ct_head) -> None:
    """The SEG travels deflated (Deflated Explicit VR Little Endian, lossless, a tenth of its
    size); a peer that takes only uncompressed syntaxes gets it inflated, the same pixels."""
    import highdicom as hd
    from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless

    from medsendx.transcode import prepare_for_wire

    deid, out, few = tmp_path / "deid", tmp_path / "results", tmp_path / "few"
    few.mkdir()
    for src in ct_head[:3]:
        shutil.copy(src, few / src.name)
    env = {"MEDSENDX_STATION_ID": STATION}
    assert cli("anonymize", few, deid, env=env).returncode == 0
    assert cli("segment", deid, "--no-png", "--dicom", out, env=env).returncode == 0
    (path,) = [p for p in out.glob("*.dcm") if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SEG"]
    original = hd.seg.Segmentation.from_dataset(pydicom.dcmread(path))
    assert original.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert path.stat().st_size * 4 < len(plain(path.read_bytes())), "deflate made it smaller"
    sources = [r.ReferencedSOPInstanceUID for r in original.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    # a DIMSE peer that takes it as it is gets the file unchanged
    payload = prepare_for_wire(path, [JPEGLSLossless, JPEG2000Lossless, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian])
    assert payload.data == path.read_bytes() and not payload.transcoded
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        payload = prepare_for_wire(path, [syntax])
        assert payload.transfer_syntax == syntax
        assert dciodvfy_errors(payload.data, tmp_path) == []
        sent = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(payload.data)))
        assert np.array_equal(sent.get_pixels_by_source_instance(sources, segment_numbers=[1, 2, 3]),
                              original.get_pixels_by_source_instance(sources, segment_numbers=[1, 2, 3]))


def _triaged(paths: list[Path]) -> list:
    from medsendx.triage import dicom_results as R

    objects = []
    for path in paths:
        ds = pydicom.dcmread(path)
        maps: list = []
        record = triage_dataset(ds, label_maps=maps)
        objects.append(R.TriagedObject(R.header_of(ds), record.to_dict(), np.stack(maps).astype(np.int8)))
    return objects


def _pydicom_bytes(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def test_fast_results_are_byte_for_byte_what_highdicom_and_pydicom_make(tmp_path, ct_head) -> None:
    """The report's groups are made once per frame shape and filled in, and the big
    sequences encoded by medsendx.triage.fast_encode: the bytes equal highdicom making
    every group and pydicom writing every element (CT: one shape; MG: density,
    composition and a quality flag, a shape per image); the KOS equals highdicom's
    document made around the whole content."""
    from medsendx.triage import dicom_results as R

    ct = _triaged(ct_head[:5])
    mg = _triaged(mammography_study(tmp_path))
    for objects in (ct, mg):
        fast = R.encode(R.build_report(objects))
        assert fast == _pydicom_bytes(R.build_report(objects, fast=False))
        assert R.read_triage_report(pydicom.dcmread(io.BytesIO(fast)))["images"]
        kos = R.build_key_objects(objects)
        # the document made around a skeleton of the content, then given all of it
        assert R.encode(kos) == R.encode(R.build_key_objects(objects, fast=False))
        slow = pydicom.dcmread(io.BytesIO(R.encode(kos)))
        for segment in R.build_segmentations(objects, compress=False) + [kos]:
            # the reference: pydicom parses every element back to values and writes them
            data = R.encode(segment)
            again = pydicom.dcmread(io.BytesIO(data))
            for _ in again.iterall():
                pass
            again.set_original_encoding(None, None)
            assert _pydicom_bytes(again) == data
        assert slow.SOPInstanceUID == kos.SOPInstanceUID


def _variant(obj, labels: np.ndarray, classes: int | None = None):
    """``obj`` with other label maps (and its record cut to the first ``classes``), and
    a De-identification Method where the sample has an empty one (the de-identifier
    fills it: dciodvfy asks for a value when Patient Identity Removed is YES)."""
    import copy

    from medsendx.triage import dicom_results as R

    record = copy.deepcopy(obj.record)
    if classes is not None:
        for frame in record["frames"]:
            frame["classes"] = frame["classes"][:classes]
    header = copy.deepcopy(obj.header)
    if "DeidentificationMethod" in header and not header.DeidentificationMethod:
        header.DeidentificationMethod = "test sample"
    return R.TriagedObject(header, record, labels.astype(np.int8))


def test_templated_seg_is_byte_for_byte_what_highdicom_makes(tmp_path, data_dir, ct_head, caplog) -> None:
    """The SEG's per-frame items made from one item highdicom made, and its pixels packed
    here (dicom_results._templated_segmentation), equal highdicom making every frame, byte
    for byte after encoding: the CT series (gantry tilt), the MR series, a blank plane
    (left out: the dimension indices close up), a class missing from some planes, a gap
    in the series (irregular spacing) and one class of the phantom's series (then highdicom
    says "3D")."""
    import logging

    import highdicom as hd

    from medsendx.triage import dicom_results as R

    ct = _triaged(ct_head)
    mr = _triaged(sorted((data_dir / "mr-brain-ge").glob("*.dcm")))
    blank = []
    for i, obj in enumerate(ct[:10]):
        labels = obj.labels.copy()
        if i == 3:
            labels[:] = -1  # no pixel in any segment
        if i in (0, 5, 6):
            labels[labels == 2] = 1  # no bone
        blank.append(_variant(obj, labels))
    phantom = _triaged([f for f in sorted((data_dir / "ct-phantom-philips").glob("*.dcm"))
                        if "PixelData" in pydicom.dcmread(f)])  # one of its objects is no image
    one_class = [_variant(o, np.where(o.labels == 0, 0, -1), classes=1) for o in phantom]
    cases = {"ct": ct, "mr": mr, "blank": blank, "gap": ct[:5] + ct[6:12], "one class": one_class}
    built = {}
    for name, objects in cases.items():
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="medsendx.triage.results"):
            fast = R.build_segmentations(objects)
        assert not [r for r in caplog.records if "one by one" in r.getMessage()], name  # the template made it
        data = [R.encode(seg) for seg in fast]
        assert data == [R.encode(seg) for seg in R.build_segmentations(objects, fast=False)], name
        built[name] = pydicom.dcmread(io.BytesIO(data[0]))
    assert built["one class"].DimensionOrganizationType == "3D"
    assert "DimensionOrganizationType" not in built["ct"]
    assert int(built["blank"].NumberOfFrames) == 3 * 9 - 3
    for name in ("blank", "one class"):
        assert dciodvfy_errors(R.encode(built[name]), tmp_path) == [], name
    seg = hd.seg.Segmentation.from_dataset(built["blank"])
    for i, obj in enumerate(blank):
        if i == 3:
            continue
        masks = seg.get_pixels_by_source_instance([obj.sop_instance_uid], segment_numbers=[1, 2, 3])
        for k in range(3):
            assert np.array_equal(masks[0, :, :, k].astype(bool), obj.labels[0] == k), (i, k)
    # outside its scope (one image) highdicom makes the frames, and says so
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="medsendx.triage.results"):
        R.build_segmentations(ct[:1])
    assert [r for r in caplog.records if "one by one" in r.getMessage()]


def test_a_multi_frame_object_gets_a_seg_frame_per_source_frame(tmp_path, caplog) -> None:
    """A real enhanced CT (pydicom-data's eCT_Supplemental: two frames, a position per
    frame) gets a SEG of its own: a frame per class and source frame, each referencing its
    frame's number, read back by highdicom frame by frame equal to the triage's labels,
    dciodvfy clean, and byte for byte what highdicom makes frame by frame. Multi-frame
    objects highdicom cannot place get none, and the report still covers them: an
    enhanced MR without functional groups (emri_small) and an ultrasound without a frame
    of reference (OBXXXX1A_2frame)."""
    import logging

    import highdicom as hd
    from pydicom.data import get_testdata_file

    from medsendx.triage import dicom_results as R

    (ct,) = _triaged([Path(get_testdata_file("eCT_Supplemental.dcm", download=False))])
    assert ct.labels.shape[0] == int(ct.header.NumberOfFrames) == 2
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="medsendx.triage.results"):
        (seg,) = R.build_segmentations([ct])
    assert not [r for r in caplog.records if "one by one" in r.getMessage()]  # templated
    data = R.encode(seg)
    assert data == R.encode(R.build_segmentations([ct], fast=False)[0])
    assert dciodvfy_errors(data, tmp_path) == []
    back = pydicom.dcmread(io.BytesIO(data))
    refs = [(int(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber),
             int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber))
            for f in back.PerFrameFunctionalGroupsSequence]
    present = {(frame + 1, k + 1) for frame in range(2) for k in range(3) if (ct.labels[frame] == k).any()}
    assert sorted(refs) == sorted(present) and len(refs) == int(back.NumberOfFrames)
    read = hd.seg.Segmentation.from_dataset(back)
    masks = read.get_pixels_by_source_frame(ct.sop_instance_uid, source_frame_numbers=[1, 2], segment_numbers=[1, 2, 3])
    for frame in range(2):
        for k in range(3):
            assert np.array_equal(masks[frame, :, :, k].astype(bool), ct.labels[frame] == k), (frame, k)

    for name in ("emri_small.dcm", "OBXXXX1A_2frame.dcm"):
        objects = _triaged([Path(get_testdata_file(name, download=False))])
        assert objects[0].labels.shape[0] > 1
        assert R.build_segmentations(objects) == []
        report = R.read_triage_report(R.build_report(objects))
        assert [i["frame"] for i in report["images"]] == list(range(1, objects[0].labels.shape[0] + 1))


def test_fast_encoder_writes_what_pydicom_writes() -> None:
    """Values at the edges of fast_encode's scope: empty, multi-valued, odd lengths
    (padding), numbers, tags, nested and empty sequences; and its refusals."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from medsendx.triage import fast_encode

    item = Dataset()
    item.ImagePositionPatient = [-125.5, "0.25", 1e-7]
    item.PixelSpacing = ["0.48828125", "0.48828125"]
    item.ReferencedSOPInstanceUID = "1.2.3"  # odd: padded with NUL
    item.CodeMeaning = "odd"  # padded with a space
    item.ReferencedFrameNumber = [1, 2, 30]
    item.InStackPositionNumber = 7
    item.FloatingPointValue = -1.5
    item.DimensionIndexPointer = 0x00209157
    item.SegmentNumber = 3
    item.StackID = ""
    item.ContentSequence = Sequence([])
    nested = Dataset()
    nested.CodeValue, nested.CodingSchemeDesignator = "121071", "DCM"
    item.ConceptNameCodeSequence = [nested, Dataset()]
    # undefined lengths, as read from a file: written so again, with their delimiters
    delimited = Dataset()
    delimited.is_undefined_length_sequence_item = True
    delimited.ReferencedFrameNumber = 2
    item.ReferencedImageSequence = [delimited, Dataset()]
    item["ReferencedImageSequence"].is_undefined_length = True
    item.SourceImageSequence = Sequence([])
    item["SourceImageSequence"].is_undefined_length = True
    root = Dataset()
    root.ReferencedSeriesSequence = [item, Dataset()]
    root.set_original_encoding(False, True)
    expected = _pydicom_bytes_of_dataset(root)
    tag = b"\x08\x00\x15\x11SQ\x00\x00"
    assert expected.startswith(tag)
    assert b"\xfe\xff\x0d\xe0" in expected and b"\xfe\xff\xdd\xe0" in expected  # both delimiters
    assert fast_encode.encode_items(root.ReferencedSeriesSequence) == expected[len(tag) + 4:]
    # a plan of the same items, its variable element given another value
    plan = fast_encode.ItemsPlan(root.ReferencedSeriesSequence, [delimited["ReferencedFrameNumber"]])
    assert plan.encode() == expected[len(tag) + 4:]
    assert plan.encode([17]) == expected[len(tag) + 4:].replace(b"IS\x02\x002 ", b"IS\x02\x0017")
    item.PatientName = "Müller"  # non-ASCII: left to pydicom
    with pytest.raises(fast_encode.Unsupported):
        fast_encode.encode_items([item])


def _pydicom_bytes_of_dataset(ds: pydicom.Dataset) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()

def test_a_study_released_in_parts_supersedes_its_earlier_results(cli, state_dir, tmp_path, ct_head) -> None:
    """The gateway's hold expired, then more images of the study came: the second release
    covers every image, its SR names the first as predecessor, SR and KOS are numbered by
    release, and the hub's worklist shows the latest (not the higher of two priorities)."""
    from medsendx.hub.source import FolderSource
    from medsendx.hub.worklist import build_row
    from medsendx.triage.dicom_results import encode, read_triage_report

    hq, first, second = tmp_path / "hq", tmp_path / "first", tmp_path / "second"
    for folder, part in ((first, ct_head[:3]), (second, ct_head[3:7])):
        folder.mkdir()
        for src in part:
            plant_identity(src, folder / src.name, PATIENTS[0])
    env = {"MEDSENDX_STATION_ID": STATION}
    for folder in (first, second):
        run = cli("send", folder, "--to", hq, env=env)
        assert run.returncode == 0, run.stderr
    stored = [pydicom.dcmread(p) for p in hq.rglob("*.dcm")]
    srs = sorted((d for d in stored if d.SOPClassUID == SR_CLASS), key=lambda d: int(d.InstanceNumber))
    kos = sorted((d for d in stored if d.SOPClassUID == KOS_CLASS), key=lambda d: int(d.InstanceNumber))
    assert [int(d.InstanceNumber) for d in srs] == [1, 2] and [int(d.InstanceNumber) for d in kos] == [1, 2]
    old, new = (read_triage_report(d) for d in srs)
    assert len(old["images"]) == 3 and len(new["images"]) == 7
    assert old["predecessors"] == [] and new["predecessors"] == [str(srs[0].SOPInstanceUID)]
    ref = srs[1].PredecessorDocumentsSequence[0]
    assert ref.StudyInstanceUID == srs[0].StudyInstanceUID and ref.ReferencedSeriesSequence[0].SeriesInstanceUID == srs[0].SeriesInstanceUID
    assert dciodvfy_errors(encode(srs[1]), tmp_path) == []
    # the same release built again (a re-run) keeps its number and predecessors: nothing new
    assert cli("send", second, "--to", hq, env=env).returncode == 0
    assert len(list(hq.rglob("*.dcm"))) == len(stored)

    source = FolderSource(hq)
    (info,) = source.studies().values()
    row = build_row(source, info)
    assert row["detail"]["report"]["sop_uid"] == str(srs[1].SOPInstanceUID)
    assert [k["sop_uid"] for k in row["detail"]["key_objects"]] == [str(kos[1].SOPInstanceUID)]


def test_deflated_seg_reaches_orthanc_over_dimse(cli, orthanc, state_dir, tmp_path, ct_head) -> None:
    """C-STORE proposes the SEG's own syntax (Deflated Explicit VR Little Endian) beside the
    others; Orthanc takes it and gives back the same masks."""
    import highdicom as hd

    few = tmp_path / "few"
    few.mkdir()
    for src in ct_head[:3]:
        plant_identity(src, few / src.name, PATIENTS[0])
    url = f"dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    run = cli("send", few, "--to", url, env={"MEDSENDX_STATION_ID": STATION})
    assert run.returncode == 0, run.stderr
    stored = orthanc_objects(orthanc)
    (seg,) = [d for d in stored.values() if d.SOPClassUID == SEG_CLASS]
    images = [d for d in stored.values() if d.Modality == "CT"]
    assert len(images) == 3
    data = orthanc.instance_file(_orthanc_id(orthanc, seg.SOPInstanceUID))
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert dciodvfy_errors(data, tmp_path) == []
    masks = hd.seg.Segmentation.from_dataset(seg)
    for image in images:
        maps: list = []
        triage_dataset(image, label_maps=maps)
        got = masks.get_pixels_by_source_instance([str(image.SOPInstanceUID)], segment_numbers=[1, 2, 3])
        for i in range(3):
            assert np.array_equal(got[0, :, :, i].astype(bool), maps[0] == i)
