"""Synthetic DICOM objects with planted identifiers, for the de-identification tests."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medsendx.config import load_settings, Settings

PLANT = "PLANTED"  # every planted identifying value contains this marker
PIXELS = bytes(range(256)) * 32  # 8192 bytes = 64 x 64 x 16-bit


def settings_for(state_dir: Path, **deid) -> Settings:
    return load_settings(overrides={"state_dir": str(state_dir), "deid": deid}, environ={})


def code_item(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def planted_ct(
    *,
    patient: str = "PLANTED^ALICE",
    patient_id: str = "PLANTEDID001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_class: str = CTImageStorage,
    image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
) -> Dataset:
    """A small CT image with identifiers planted everywhere the profile must reach."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = image_type.split("\\")
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.StudyDate = "20240315"
    ds.SeriesDate = "20240315"
    ds.AcquisitionDate = "20240315"
    ds.ContentDate = "20240315"
    ds.StudyTime = "101500"
    ds.ContentTime = "101502"
    ds.AcquisitionDateTime = "20240316093000.5"
    ds.InstanceCreationDate = "20240317"
    ds.Modality = "CT"
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    ds.ManufacturerModelName = "HiSpeed"
    ds.AccessionNumber = "PLANTEDACC77"
    ds.InstitutionName = "PLANTED GENERAL HOSPITAL"
    ds.InstitutionAddress = "1 PLANTED STREET"
    ds.ReferringPhysicianName = "PLANTEDDOC^REFERRER"
    ds.OperatorsName = "PLANTEDOP^TECH"
    ds.StationName = "PLANTEDSTN"
    ds.DeviceSerialNumber = "PLANTEDSER99"
    ds.StudyDescription = f"HEAD {patient.split('^')[-1]} 12345678"
    ds.SeriesDescription = "PLANTED SERIES NOTE"
    ds.StudyID = "PLANTEDSTUDY"
    ds.PatientName = patient
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.PatientAge = "054Y"
    ds.PatientWeight = "61"
    ds.PatientAddress = "PLANTED ROAD 5"
    ds.OtherPatientIDs = "PLANTEDOTHERID"
    ds.SliceThickness = "5"
    ds.KVP = "120"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.InstanceNumber = "1"
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 64
    ds.Columns = 64
    ds.PixelSpacing = [0.5, 0.5]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.PixelData = PIXELS
    # Nested three sequences deep, in sequences the profile keeps.
    inner = Dataset()
    inner.PersonName = "PLANTEDNESTED^PERSON"  # table: D
    inner.OtherPatientIDs = "PLANTEDNESTEDID"  # table: X
    inner.ReferencedSOPInstanceUID = ds.SOPInstanceUID  # table: U
    inner.StudyDate = "20240315"
    inner.add_new(0x00109999, "PN", "PLANTEDUNKNOWN^NESTED")  # unknown public PN
    inner.add_new(0x00090010, "LO", "PLANTEDNESTEDVENDOR")
    inner.add_new(0x00091001, "LO", "PLANTEDNESTEDPRIVATE")
    inner.CodeValue = "T-A0100"
    inner.CodingSchemeDesignator = "SRT"
    inner.CodeMeaning = "Brain"
    middle = Dataset()
    middle.DerivationCodeSequence = Sequence([inner])
    middle.CodeValue = "G-A101"
    middle.CodingSchemeDesignator = "SRT"
    middle.CodeMeaning = "Left"
    outer = Dataset()
    outer.AnatomicRegionModifierSequence = Sequence([middle])
    outer.CodeValue = "T-A0100"
    outer.CodingSchemeDesignator = "SRT"
    outer.CodeMeaning = "Brain"
    ds.AnatomicRegionSequence = Sequence([outer])
    # Private block, repeating groups, attributes our table does not know.
    ds.add_new(0x00090010, "LO", "PLANTEDVENDOR")
    ds.add_new(0x00091001, "LO", "PLANTEDPRIVATEVALUE")
    ds.add_new(0x00431039, "IS", "1000")  # no creator: still private, still removed
    ds.add_new(0x50000010, "US", 2)  # curve: number of points
    ds.add_new(0x50003000, "OB", b"PLANTEDCURVE")
    ds.add_new(0x60000010, "US", 64)  # overlay rows
    ds.add_new(0x60000011, "US", 64)
    ds.add_new(0x60000022, "LO", "PLANTEDOVERLAYDESC")
    ds.add_new(0x60003000, "OW", b"PLANTEDOVERLAY!!")
    ds.add_new(0x60004000, "LT", "PLANTEDOVERLAYCOMMENT")
    ds.add_new(0x00109998, "PN", "PLANTEDNEWATTR^PN")  # a PN attribute from a future edition
    ds.add_new(0x00189998, "LT", "PLANTEDNEWTEXT")  # unknown free text
    ds.add_new(0x00189997, "DA", "20240315")  # unknown date
    ds.add_new(0x00189996, "DS", "3.5")  # unknown number: kept
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "PLANTEDAE"
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
