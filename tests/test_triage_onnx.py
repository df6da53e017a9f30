"""The learned segmenter (ONNX Runtime on the CPU) behind the Segmenter interface.

No medical model ships in a package here, so the tests build small real ONNX networks
with the ``onnx`` package: a fixed-threshold network whose labels are known in advance
(the oracle is numpy applying the same thresholds), one that breaks the output contract,
and a file that is not a model at all.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from medsendx.config import Settings
from medsendx.dicomio import read_dataset
from medsendx.triage import KMeansSegmenter, frame_input, segmenter_for, triage_dataset
from medsendx.triage.onnx_segmenter import FallbackSegmenter, load_segmenter

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

AIR_MAX_HU, BONE_MIN_HU = -400.0, 350.0  # the thresholds the test network encodes
CT_CLASSES = {
    "modalities": ["CT"],
    "classes": [
        {"name": "Air"}, {"name": "Soft tissue"}, {"name": "Bone"},
    ],
}


def _save(graph, folder: Path, name: str, classes: dict | None = CT_CLASSES) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime >= 1.17
    onnx.checker.check_model(model)
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    if classes is not None:
        path.with_suffix(".json").write_text(json.dumps(classes))
    return path


def threshold_model(folder: Path) -> Path:
    """labels = (x > AIR_MAX_HU) + (x > BONE_MIN_HU): 0 air, 1 soft tissue, 2 bone."""
    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 1, "rows", "cols"])
    y = helper.make_tensor_value_info("labels", TensorProto.INT64, [1, 1, "rows", "cols"])
    t1 = helper.make_tensor("t1", TensorProto.FLOAT, [], [AIR_MAX_HU])
    t2 = helper.make_tensor("t2", TensorProto.FLOAT, [], [BONE_MIN_HU])
    nodes = [
        helper.make_node("Greater", ["pixels", "t1"], ["above_air"]),
        helper.make_node("Greater", ["pixels", "t2"], ["above_soft"]),
        helper.make_node("Cast", ["above_air"], ["a"], to=TensorProto.INT64),
        helper.make_node("Cast", ["above_soft"], ["b"], to=TensorProto.INT64),
        helper.make_node("Add", ["a", "b"], ["labels"]),
    ]
    return _save(helper.make_graph(nodes, "thresholds", [x], [y], initializer=[t1, t2]), folder, "thresholds")


def out_of_contract_model(folder: Path) -> Path:
    """Returns the pixels as 'labels': values far outside the three classes."""
    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 1, "rows", "cols"])
    y = helper.make_tensor_value_info("labels", TensorProto.INT64, [1, 1, "rows", "cols"])
    node = helper.make_node("Cast", ["pixels"], ["labels"], to=TensorProto.INT64)
    return _save(helper.make_graph([node], "bad", [x], [y]), folder, "bad")


def test_threshold_network_gives_the_labels_its_thresholds_encode(tmp_path, ct_head) -> None:
    segmenter = load_segmenter(threshold_model(tmp_path))
    assert isinstance(segmenter, FallbackSegmenter)
    for path in ct_head[::9]:
        frame = frame_input(read_dataset(path))
        seg = segmenter.segment(frame)
        values, valid = frame.values, frame.valid
        expected = np.where(valid, (values > AIR_MAX_HU).astype(int) + (values > BONE_MIN_HU), -1)
        assert np.array_equal(seg.labels, expected)
        assert seg.names == ["Air", "Soft tissue", "Bone"] and seg.method == "onnx:thresholds.onnx"
        for i in range(3):
            member = values[valid & (expected == i)]
            assert seg.counts[i] == member.size
            assert seg.centres[i] == pytest.approx(float(member.mean()))


def test_settings_model_path_drives_triage_and_the_seg_names_ai(tmp_path, ct_head) -> None:
    from medsendx.triage import dicom_results as R

    settings = Settings(state_dir=tmp_path / "state")
    settings.triage.model_path = str(threshold_model(tmp_path))
    ds = read_dataset(ct_head[3])
    maps: list = []
    record = triage_dataset(ds, segmenter_for(settings), maps)
    assert record.method == "onnx:thresholds.onnx"
    assert [c.label for c in record.frames[0].classes] == ["Air", "Soft tissue", "Bone"]
    seg = R.build_segmentation([R.TriagedObject(R.header_of(ds), record.to_dict(), np.stack(maps))])
    family = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmFamilyCodeSequence[0]
    assert family.CodeValue == "123110"  # Artificial Intelligence, not Cluster Analysis


def test_a_file_that_is_not_a_model_falls_back_to_kmeans_with_a_reason(tmp_path, ct_head, caplog) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an ONNX model")
    broken.with_suffix(".json").write_text(json.dumps(CT_CLASSES))
    with caplog.at_level(logging.WARNING, logger="medsendx.triage.onnx"):
        segmenter = load_segmenter(broken)
    assert isinstance(segmenter, KMeansSegmenter)
    assert any("not loaded" in r.getMessage() and "cannot be loaded" in r.getMessage() for r in caplog.records)
    ds = read_dataset(ct_head[3])
    assert triage_dataset(ds, segmenter).to_dict() == triage_dataset(ds).to_dict()

    missing = tmp_path / "nojson.onnx"
    missing.write_bytes(threshold_model(tmp_path).read_bytes())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medsendx.triage.onnx"):
        assert isinstance(load_segmenter(missing), KMeansSegmenter)
    assert any("class file" in r.getMessage() for r in caplog.records)


def test_a_model_breaking_the_output_contract_falls_back_per_frame(tmp_path, ct_head, caplog) -> None:
    segmenter = load_segmenter(out_of_contract_model(tmp_path))
    ds = read_dataset(ct_head[3])
    with caplog.at_level(logging.WARNING, logger="medsendx.triage.onnx"):
        record = triage_dataset(ds, segmenter)
    assert any("labels outside its classes" in r.getMessage() for r in caplog.records)
    reference = triage_dataset(ds).to_dict()
    assert record.method == reference["method"] == "kmeans-1d-exact(k=3)"
    assert record.to_dict() == reference
