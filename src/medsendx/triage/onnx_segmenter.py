"""A learned segmenter behind the :class:`~medsendx.triage.segmenter.Segmenter` interface:
an ONNX model run by ONNX Runtime on the CPU (``[triage] model_path``).

Contract
--------
- The model file ``model.onnx`` has a JSON file beside it, ``model.json``::

      {"modalities": ["CT"],                       # frames of other modalities: k-means
       "classes": [                                 # label i = classes[i], dark to bright
         {"name": "Air"}, {"name": "Soft tissue"}, {"name": "Bone"}]}

  Class names are those of ``medsendx.triage.labels`` for the modality (CT: Air / Soft
  tissue / Bone; MG: Background / Fatty / Dense), ordered dark to bright as displayed, so
  the quality flags, density and priority rules read them as they read the k-means', and
  the SEG and SR code them as the k-means classes (``dicom_results.CLASS_CODES``; other
  names are coded SCT 85756007 Tissue with the name as the segment label). Other keys of
  a class are ignored.
- Input: the model's first input, float32, shape (1, 1, rows, cols): the frame's pixels in
  modality units (HU for CT; stored value x slope + intercept otherwise), as displayed
  (MONOCHROME1 is NOT inverted: the values are the modality's). Pixels that are not part
  of the image (PixelPaddingValue, outside the CT reconstruction circle) are given the
  lowest valid value of the frame and their labels are discarded.
- Output: the model's first output, either scores (1, C, rows, cols) (the label is the
  arg-max over C) or labels (1, rows, cols) / (1, 1, rows, cols) of integers 0..C-1, with
  C = the number of classes in the JSON.

Class centres, counts and value ranges are computed from the labels and pixels (as for
the k-means); the segmentation method reads ``onnx:<file name>``. A model that cannot be
loaded, a frame the model fails on or an output that breaks the contract: exact k-means
for that frame, with the reason logged (our words and the error type).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from medsendx.triage.segmenter import FrameInput, KMeansSegmenter, Segmentation, TriageError

log = logging.getLogger("medsendx.triage.onnx")


class ModelError(ValueError):
    """The model or its class file breaks the contract; the message is in our words."""


class OnnxSegmenter:
    """Runs one ONNX model; raises on anything outside the contract (see the module)."""

    def __init__(self, model_path: str | Path) -> None:
        path = Path(model_path)
        meta_path = path.with_suffix(".json")
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise ModelError("the model's class file (model name with .json) is missing") from None
        except (OSError, ValueError):
            raise ModelError("the model's class file is not readable JSON") from None
        classes = meta.get("classes")
        if not isinstance(classes, list) or not classes or not all(isinstance(c, dict) and c.get("name") for c in classes):
            raise ModelError("the model's class file lists no classes with names")
        self.names = [str(c["name"]) for c in classes]
        self.modalities = {str(m).upper() for m in meta.get("modalities", [])}
        try:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1  # the pipeline already runs one object per core
            options.log_severity_level = 3
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except ImportError:
            raise ModelError("onnxruntime is not installed") from None
        except Exception as exc:
            raise ModelError(f"the model cannot be loaded ({type(exc).__name__})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.name = f"onnx:{path.name}"

    def handles(self, frame: FrameInput) -> bool:
        return not self.modalities or frame.modality in self.modalities

    def segment(self, frame: FrameInput) -> Segmentation:
        values = frame.values
        valid = frame.valid
        if not valid.any():
            raise TriageError("no pixel of the image is valid (all padding or outside the scan circle)")
        low = values[valid].min()
        x = np.where(valid, values, low).astype(np.float32)[None, None]
        output = np.asarray(self.session.run(None, {self.input_name: x})[0])
        k = len(self.names)
        rows, cols = values.shape
        if output.ndim == 4 and output.shape[0] == 1 and output.shape[2:] == (rows, cols) and output.shape[1] == k:
            labels = np.argmax(output[0], axis=0)
        elif output.ndim in (3, 4) and output.shape[-2:] == (rows, cols) and int(np.prod(output.shape[:-2])) == 1:
            labels = output.reshape(rows, cols)
            if labels.dtype.kind == "f":
                labels = np.rint(labels)
            labels = labels.astype(np.int64)
        else:
            raise ModelError(f"model output of shape {tuple(output.shape)} is not (1, {k}, rows, cols) or labels")
        if labels.min() < 0 or labels.max() >= k:
            raise ModelError("model output holds labels outside its classes")
        label_image = np.where(valid, labels, -1).astype(np.int8)
        centres, counts, ranges = [], [], []
        flat_labels, flat_values = label_image[valid], values[valid]
        for i in range(k):
            member = flat_values[flat_labels == i]
            counts.append(int(member.size))
            centres.append(float(member.mean()) if member.size else float("nan"))
            ranges.append((float(member.min()), float(member.max())) if member.size else (float("nan"), float("nan")))
        return Segmentation(labels=label_image, names=list(self.names), centres=centres, counts=counts,
                            method=self.name, ranges=ranges, boundaries=None, sse=None, histogram=None)


class FallbackSegmenter:
    """The learned model where it applies, exact k-means where it does not or fails."""

    def __init__(self, primary: OnnxSegmenter, fallback: KMeansSegmenter | None = None) -> None:
        self.primary = primary
        self.fallback = fallback or KMeansSegmenter(k=3)
        self.name = primary.name

    def segment(self, frame: FrameInput) -> Segmentation:
        if not self.primary.handles(frame):
            return self.fallback.segment(frame)
        try:
            return self.primary.segment(frame)
        except TriageError:
            raise
        except Exception as exc:
            reason = str(exc) if isinstance(exc, ModelError) else f"the model failed on a frame ({type(exc).__name__})"
            log.warning("learned segmenter not used; exact k-means instead: %s", reason,
                        extra={"fields": {"reason": reason}})
            return self.fallback.segment(frame)


def load_segmenter(model_path: str | Path) -> Any:
    """The segmenter for ``[triage] model_path``: the model with k-means as its fallback,
    or k-means alone (reason logged) when the model cannot be loaded."""
    try:
        return FallbackSegmenter(OnnxSegmenter(model_path))
    except ModelError as exc:
        log.warning("learned segmenter not loaded; exact k-means instead: %s", exc, extra={"fields": {"reason": str(exc)}})
        return KMeansSegmenter(k=3)
