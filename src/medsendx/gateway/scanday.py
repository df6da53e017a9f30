"""Synthetic patients for the demo, the tests and the benchmark.

Real scanner output (the bundled head CT) carries placeholder identities. To show (and
test) that nothing identifying leaves the truck, copies of it get realistic but invented
identities planted: names, IDs, birth dates, accession numbers, referring physicians,
institution. Every value here is made up; none belongs to a real person.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from medsendx.fsutil import atomic_write


@dataclass(frozen=True)
class SyntheticPatient:
    name: str  # DICOM PN: FAMILY^GIVEN
    patient_id: str
    birth_date: str  # YYYYMMDD
    sex: str
    accession: str
    referring: str
    institution: str = "ST ELSEWHERE MOBILE IMAGING"
    address: str = "12 HARBOUR ROAD, PORT MELLIN"

    def identifying_values(self) -> list[str]:
        """The planted strings that must never appear in anything that leaves the truck."""
        family, given = self.name.split("^")
        return [family, given, self.patient_id, self.birth_date, self.accession,
                self.referring.split("^")[0], self.address.split(",")[0]]


PATIENTS = [
    SyntheticPatient("KOWALCZYK^MARTA", "MRN7730412", "19560314", "F", "ACC20260001", "OYELARAN^TUNDE"),
    SyntheticPatient("DUBROVSKY^PAVEL", "MRN7730519", "19480922", "M", "ACC20260002", "MACALLISTER^FIONA"),
    SyntheticPatient("ABERNATHY^ROSALIND", "MRN7731187", "19710105", "F", "ACC20260003", "OYELARAN^TUNDE"),
]


def plant_identity(
    src: Path, dst: Path, patient: SyntheticPatient, *, new_uids_seed: str | None = None
) -> Path:
    """Copy ``src`` to ``dst`` with ``patient``'s identity planted in it.

    With ``new_uids_seed`` the Study/Series/SOP Instance UIDs are replaced by new ones derived
    from the seed (deterministic), so that copies of one series become distinct objects.
    """
    ds = pydicom.dcmread(src)
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.AccessionNumber = patient.accession
    ds.ReferringPhysicianName = patient.referring
    ds.InstitutionName = patient.institution
    ds.InstitutionAddress = patient.address
    ds.OtherPatientIDs = patient.patient_id.replace("MRN", "NHS")
    ds.PatientAddress = patient.address
    if new_uids_seed is not None:
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            if keyword in ds:
                setattr(ds, keyword, generate_uid(entropy_srcs=[new_uids_seed, str(ds[keyword].value)]))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return atomic_write(Path(dst), lambda fh: ds.save_as(fh, enforce_file_format=True))
