"""A learned text detector (PP-OCR DBNet) and recogniser (PP-OCR CTC), on CPU through ONNX Runtime.

*Detection* answers "where is there text, any text" and does not depend on knowing what
the text says; *recognition* reads a detected region only to decide whether it is one of
the few known-safe markers (laterality, view labels; see ``PixelSettings.allowed_markers``).

The model files come inside the ``rapidocr`` wheel (pinned in pyproject.toml); nothing is
downloaded at run time. We use only its ONNX files, with our own small pre- and
post-processing (numpy, scipy), and refuse to run unless each file's SHA-256 is the one
recorded in :data:`MODEL_SHA256`: a changed detector is a changed privacy guarantee.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass
from importlib import util as importlib_util
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)

# rapidocr 3.10.0 (PyPI wheel), rapidocr/models/. Recorded when the version was pinned.
DETECTION_MODEL = "PP-OCRv6_det_small.onnx"
RECOGNITION_MODEL = "PP-OCRv6_rec_small.onnx"
MODEL_SHA256 = {
    DETECTION_MODEL: "090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f",
    RECOGNITION_MODEL: "6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884",
}
# DBNet post-processing, as PP-OCR's defaults except a lower box threshold (recall first:
# a false box costs a blanked patch of background, a missed one a leaked name).
PROB_THRESHOLD = 0.3
BOX_THRESHOLD = 0.4
UNCLIP_RATIO = 1.6
MIN_BOX_SIDE = 3
# Small images are enlarged so small scanner fonts reach the sizes DBNet was trained on.
TARGET_SHORT_SIDE = 512
MAX_UPSCALE = 3.0
MAX_LONG_SIDE = 2560  # larger inputs are tiled by the caller (see ``detect``)


class DetectorUnavailable(RuntimeError):
    """The model files are missing, altered, or ONNX Runtime is absent (our own wording)."""


def model_dir() -> Path:
    """Where the pinned rapidocr wheel put its model files (found without importing rapidocr,
    whose import pulls OpenCV)."""
    spec = importlib_util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable("text detector models are not installed (package rapidocr)")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def verify_models(directory: Path | None = None) -> dict[str, Path]:
    """Each model file's path, after checking its SHA-256 against :data:`MODEL_SHA256`."""
    directory = directory or model_dir()
    paths: dict[str, Path] = {}
    for name, expected in MODEL_SHA256.items():
        path = directory / name
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            raise DetectorUnavailable(f"text detector model file missing ({name})") from None
        if digest != expected:
            raise DetectorUnavailable(f"text detector model file altered ({name}: unexpected SHA-256)")
        paths[name] = path
    return paths


@dataclass(frozen=True)
class Detection:
    box: Box
    score: float


class TextModels:
    """The two ONNX sessions, one thread each (callers parallelise across files)."""

    def __init__(self, directory: Path | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise DetectorUnavailable("ONNX Runtime is not installed") from None
        paths = verify_models(directory)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        self.det = ort.InferenceSession(str(paths[DETECTION_MODEL]), options, providers=providers)
        self.rec = ort.InferenceSession(str(paths[RECOGNITION_MODEL]), options, providers=providers)
        characters = self.rec.get_modelmeta().custom_metadata_map.get("character", "").splitlines()
        if not characters:
            raise DetectorUnavailable("text recogniser model has no character table")
        self.characters = ["", *characters, " "]  # CTC blank first, space last (PP-OCR's layout)

    # ------------------------------------------------------------------ detection
    def detect(self, image: np.ndarray, scale: float | None = None) -> list[Detection]:
        """Text regions in an 8-bit grey image (H x W), boxes in the image's pixels."""
        height, width = image.shape[:2]
        if min(height, width) < 8:
            return []
        if scale is None:
            scale = min(MAX_UPSCALE, max(1.0, TARGET_SHORT_SIDE / min(height, width)))
        scale = min(scale, MAX_LONG_SIDE / max(height, width))
        h32 = max(32, int(math.ceil(height * scale / 32)) * 32)
        w32 = max(32, int(math.ceil(width * scale / 32)) * 32)
        sh, sw = int(round(height * scale)), int(round(width * scale))
        resized = np.asarray(Image.fromarray(image).resize((sw, sh), Image.Resampling.BILINEAR)) if (sh, sw) != (height, width) else image
        canvas = np.zeros((h32, w32), dtype=np.float32)
        # Pad with the image's own border value so the padding edge is not a stroke.
        canvas[:] = float(np.median(resized[0])) if sh else 0.0
        canvas[:sh, :sw] = resized
        x = (canvas / 127.5 - 1.0)[np.newaxis, np.newaxis].repeat(3, axis=1)
        prob = self.det.run(None, {self.det.get_inputs()[0].name: x})[0][0, 0, :sh, :sw]
        mask = ndimage.binary_dilation(prob > PROB_THRESHOLD, structure=np.ones((2, 2), bool))
        labels, count = ndimage.label(mask)
        found: list[Detection] = []
        if not count:
            return found
        slices = ndimage.find_objects(labels)
        scores = ndimage.mean(prob, labels, index=np.arange(1, count + 1))
        for (ys, xs), score in zip(slices, scores):
            h, w = ys.stop - ys.start, xs.stop - xs.start
            if min(h, w) < MIN_BOX_SIDE or score < BOX_THRESHOLD:
                continue
            grow = (h * w) * UNCLIP_RATIO / (2 * (h + w))  # DBNet's unclip distance for a rectangle
            x0 = int(max(0, math.floor((xs.start - grow) / scale)))
            y0 = int(max(0, math.floor((ys.start - grow) / scale)))
            x1 = int(min(width, math.ceil((xs.stop + grow) / scale)))
            y1 = int(min(height, math.ceil((ys.stop + grow) / scale)))
            found.append(Detection((x0, y0, x1, y1), float(score)))
        return found

    # ------------------------------------------------------------------ recognition
    def recognise(self, image: np.ndarray, box: Box) -> tuple[str, float]:
        """The text in ``box`` of an 8-bit grey image and its mean character confidence."""
        x0, y0, x1, y1 = box
        crop = image[y0:y1, x0:x1]
        if crop.size == 0:
            return "", 0.0
        h, w = crop.shape[:2]
        if h > 1.5 * w and w > 0:  # a vertical line of text: read it rotated
            crop = np.rot90(crop)
            h, w = crop.shape[:2]
        new_w = max(16, int(math.ceil(48 * w / h)))
        resized = np.asarray(Image.fromarray(crop).resize((new_w, 48), Image.Resampling.BILINEAR), dtype=np.float32)
        x = (resized / 127.5 - 1.0)[np.newaxis, np.newaxis].repeat(3, axis=1)
        probs = self.rec.run(None, {self.rec.get_inputs()[0].name: x})[0][0]
        index = probs.argmax(axis=1)
        best = probs.max(axis=1)
        keep = index != 0
        keep[1:] &= index[1:] != index[:-1]
        chars = [self.characters[i] if i < len(self.characters) else "" for i in index[keep]]
        confidence = float(best[keep].mean()) if keep.any() else 0.0
        return "".join(chars), confidence


_models: TextModels | None = None
_lock = threading.Lock()


def text_models() -> TextModels:
    """The process's models, loaded (and hash-checked) once."""
    global _models
    with _lock:
        if _models is None:
            _models = TextModels()
        return _models
