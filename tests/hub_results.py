"""What a truck sends with each study (issue 14), built here with highdicom for the hub's
tests until the gateway builds them itself: a SEG of the tissue classes, a TID 1500
Measurement Report (class centres and shares, percent fibroglandular tissue, breast
composition, image-quality evaluations per flag, the workflow priority and its reasons in
a private coding scheme) and a Key Object Selection ("Of Interest", or "Quality Issue"
when a repeat is advised).

The values come from the truck's own triage records (``<state_dir>/triage/<uid>.json``),
so the hub is checked against what the truck computed, written by a library other than
the hub's reader.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import highdicom as hd
from highdicom.sr import CodedConcept

SCHEME = "99MEDSENDX"
PRIORITY = CodedConcept("PRIORITY", SCHEME, "Workflow priority (not a diagnosis)")
REASON = CodedConcept("REASON", SCHEME, "Priority reason")
IMAGE_QUALITY = CodedConcept("IMGQUAL", SCHEME, "Image quality")
PERCENT_FIBROGLANDULAR = CodedConcept("111046", "DCM", "Percent Fibroglandular Tissue")
BREAST_COMPOSITION = CodedConcept("111031", "DCM", "Breast composition")
COMPOSITIONS = [  # BI-RADS a-d by percent density (the hub only shows the meaning)
    (25, CodedConcept("129715009", "SCT", "Almost entirely fatty breast")),
    (50, CodedConcept("129716005", "SCT", "Scattered fibroglandular breast")),
    (75, CodedConcept("129717001", "SCT", "Heterogeneously dense breast")),
    (101, CodedConcept("129718009", "SCT", "Extremely dense breast")),
]
NO_UNITS = CodedConcept("1", "UCUM", "no units")
PERCENT = CodedConcept("%", "UCUM", "percent")
SEG_TYPES = {"air": codes.SCT.Air, "soft tissue": codes.SCT.SoftTissue, "bone": codes.SCT.Bone,
             "fatty": codes.SCT.AdiposeTissue, "dense": CodedConcept("81493000", "SCT", "Fibroglandular tissue")}
DEVICE = dict(manufacturer="MedSendX", manufacturer_model_name="MedSendX gateway", software_versions="0.1",
              device_serial_number="TEST")


def _observer() -> hd.sr.ObservationContext:
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(), name="MedSendX triage"),
    )
    return hd.sr.ObservationContext(observer_device_context=device)


def measurement_report(images: list[tuple[Dataset, dict]]) -> Dataset:
    """The TID 1500 report of one study: one measurement group per image."""
    groups = []
    for ds, record in images:
        measurements = [hd.sr.Measurement(name=PRIORITY, value=float(record["priority"]), unit=NO_UNITS)]
        for i, cls in enumerate(record["frames"][0]["classes"] if record.get("frames") else []):
            measurements.append(hd.sr.Measurement(name=CodedConcept(f"CENTRE{i}", SCHEME, f"{cls['label']} centre"),
                                                  value=float(cls["centre"]), unit=NO_UNITS))
            measurements.append(hd.sr.Measurement(name=CodedConcept(f"SHARE{i}", SCHEME, f"{cls['label']} share"),
                                                  value=100.0 * float(cls["fraction"]), unit=PERCENT))
        evaluations = []
        density = record.get("breast_density_percent")
        if density is not None:
            measurements.append(hd.sr.Measurement(name=PERCENT_FIBROGLANDULAR, value=float(density), unit=PERCENT))
            composition = next(c for limit, c in COMPOSITIONS if density < limit)
            evaluations.append(hd.sr.QualitativeEvaluation(BREAST_COMPOSITION, composition))
        for flag in record.get("flags", []):
            evaluations.append(hd.sr.QualitativeEvaluation(
                IMAGE_QUALITY, CodedConcept(flag["code"].upper()[:16], SCHEME, f"{flag['code']}: {flag['action']}")))
        for j, reason in enumerate(record.get("reasons", [])):
            evaluations.append(hd.sr.QualitativeEvaluation(REASON, CodedConcept(f"R{j}", SCHEME, reason[:64])))
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"image {ds.get('InstanceNumber', '')}"),
            measurements=measurements,
            qualitative_evaluations=evaluations,
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)],
        ))
    report = hd.sr.MeasurementReport(observation_context=_observer(),
                                     procedure_reported=CodedConcept("TRIAGE", SCHEME, "On-device triage"),
                                     imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(
        evidence=[ds for ds, _ in images], content=report, series_instance_uid=generate_uid(), series_number=901,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="MedSendX",
        series_description="MedSendX triage report",
    )


def key_objects(images: list[tuple[Dataset, dict]]) -> Dataset:
    top = max(r["priority"] for _, r in images)
    repeat = any(r.get("flags") for _, r in images)
    chosen = [ds for ds, r in images if r["priority"] == top]
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.QualityIssue if repeat else codes.DCM.OfInterest,
        referenced_objects=chosen,
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(), name="MedSendX triage")),
        description=f"MedSendX priority {top}",
    )
    return hd.ko.KeyObjectSelectionDocument(
        evidence=chosen, content=content, series_instance_uid=generate_uid(), series_number=902,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="MedSendX",
        series_description="MedSendX key images")


def segmentation(images: list[Dataset]) -> Dataset:
    """A BINARY SEG of the tissue classes (the truck's k-means), one frame per class and image."""
    from medsendx.triage import KMeansSegmenter, frame_input

    segmenter = KMeansSegmenter()
    label_maps, names = [], None
    for ds in images:
        seg = segmenter.segment(frame_input(ds))
        names = names or list(seg.names)
        labels = np.asarray(seg.labels)
        label_maps.append(np.where(labels >= 0, labels + 1, 0).astype(np.uint8))
    algorithm = hd.AlgorithmIdentificationSequence(name="MedSendX k-means", family=codes.DCM.ClusterAnalysis, version="1")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1, segment_label=name, segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=SEG_TYPES.get(name.lower(), codes.SCT.Tissue),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for i, name in enumerate(names or [])
    ]
    return hd.seg.Segmentation(
        source_images=images, pixel_array=np.stack(label_maps), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=903,
        sop_instance_uid=generate_uid(), instance_number=1, series_description="MedSendX tissue classes", **DEVICE)


def _type2_present(ds: Dataset) -> Dataset:
    """highdicom copies the patient/study modules from the evidence and wants their type 2
    attributes present; de-identification may have removed them (empty is what type 2 allows)."""
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def study_results(images: list[tuple[Dataset, dict]], with_seg: bool = True) -> list[Dataset]:
    images = [(_type2_present(ds), r) for ds, r in images]
    out = [measurement_report(images), key_objects(images)]
    if with_seg:
        out.append(segmentation([ds for ds, _ in images]))
    return out
