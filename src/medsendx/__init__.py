"""MedSendX: an edge DICOM gateway for mobile imaging units.

De-identifies scans at the source (DICOM PS3.15 Annex E), triages them on the device and
delivers them through a crash-safe outbox over a fragile link.
"""

__version__ = "0.1.0"
