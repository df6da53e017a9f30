"""Real sample DICOM files shipped with MedSendX (see README.md beside this file)."""

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent
CT_HEAD = SAMPLE_DIR / "ct-head-ge"


def ct_head_files() -> list[Path]:
    """The bundled head CT slices, in slice order."""
    return sorted(CT_HEAD.glob("*.dcm"))
