"""The pixel cleaner: find burned-in text, blank it, verify, and store the result losslessly.

Policy "redact-detected" (the default) is :mod:`medsendx.pixels.textclean`: a learned
detector, default-deny, independently verified. Policy "quarantine" screens the same way
and sends to quarantine whatever the default would have to search. The older tesseract
word policies ("redact-identifying", "redact-all-text", opt-in) work as follows. For each frame: blank the configured fixed regions of the device (no OCR needed to find
them), then OCR the whole frame; blank the words the policy selects; OCR the redacted
lines again; repeat up to ``MAX_REDACTION_ROUNDS`` times. An object is clean only when
the last reading of every frame found no identifying word. Tesseract is deterministic, so
pixels that did not change keep their earlier reading: verification re-reads only bands
of rows around what was blanked, and identical frames (a frozen cine) are read once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.uid import UID

from medsendx.config import PixelSettings, Settings
from medsendx.dicomio import DicomReadError, display_array, frame_count, stored_pixels
from medsendx.pixels import ocr
from medsendx.pixels.encode import EncodeError, store_pixels
from medsendx.pixels.native import NativeLayout, layout_of, native_frames
from medsendx.pixels.redact import IdentityMatcher, blank, identifying_words, redaction_box, words_to_redact
from medsendx.deid.pixelrisk import assess_pixel_risk
from medsendx.pixels.detector import DetectorUnavailable, text_models
from medsendx.pixels.risk import is_photograph, pixel_risk
from medsendx.pixels.screen import candidate_regions
from medsendx.pixels.textclean import clean_frames

log = logging.getLogger(__name__)

MAX_REDACTION_ROUNDS = 2
Box = tuple[int, int, int, int]


@dataclass
class PixelCleanResult:
    """What the cleaner did to one object.

    ``clean``: the pixels were checked (and redacted where needed) and no identifying text
    remains; when ``changed`` the cleaner already rewrote PixelData losslessly and updated
    the transfer syntax. ``reason`` is our own wording, never text read from the image.
    ``regions``: the blanked boxes (x0, y0, x1, y1), over all frames.
    """

    clean: bool
    reason: str
    regions: list[Box] = field(default_factory=list)
    changed: bool = False
    ocr_calls: int = 0
    # ``attest``: an independent second check backs "no text left" (the de-identifier then
    # writes BurnedInAnnotation NO and code 113101); False for a screen that found nothing
    # (nothing claimed) and for the older word policies (their check is their own reading).
    attest: bool = False
    method: str = ""  # how the pixels were checked/cleaned, for the de-identification record
    kept: list[Box] = field(default_factory=list)  # allowed markers left in place
    detector_runs: int = 0


def _device_key(ds: Dataset) -> tuple[str, str]:
    return (str(ds.get("Manufacturer", "") or "").strip().upper(), str(ds.get("ManufacturerModelName", "") or "").strip().upper())


def fixed_regions_for(ds: Dataset, settings: PixelSettings) -> list[Box]:
    """Configured boxes for this device: keys "Manufacturer/Model" or just "Manufacturer"."""
    manufacturer, model = _device_key(ds)
    boxes: list[Box] = []
    for key, rects in settings.fixed_regions.items():
        want_manufacturer, _, want_model = (part.strip().upper() for part in key.partition("/"))
        if want_manufacturer == manufacturer and (not want_model or want_model == model):
            boxes.extend(tuple(int(v) for v in rect[:4]) for rect in rects)  # type: ignore[misc]
    return boxes


def _fill_value(ds: Dataset, pixels: np.ndarray) -> np.ndarray | int:
    """The stored value that shows as black: what a blanked box is filled with."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        return 0
    if photometric == "PALETTE COLOR":
        values = np.unique(pixels)
        rgb = np.asarray(apply_color_lut(values, ds), dtype=np.float64)
        return values[int(np.argmin(rgb.sum(axis=-1)))]
    return pixels.max() if photometric == "MONOCHROME1" else pixels.min()


class PixelCleaner:
    """Callable ``(ds, identifying_words) -> PixelCleanResult`` for the de-identifier."""

    def __init__(self, settings: Settings | PixelSettings) -> None:
        self.settings: PixelSettings = settings.pixels if isinstance(settings, Settings) else settings

    def needs_check(self, ds: Dataset) -> str | None:
        """Why this object's pixels must be checked, or None (header only, no decoding)."""
        return pixel_risk(ds, self.settings)

    def __call__(self, ds: Dataset, identifying_words: set[str], *, screened: list[list[Box]] | None = None) -> PixelCleanResult:
        """``screened``: what :meth:`screen_boxes` gave on ``ds``'s Pixel Data (the de-identifier
        screens the input's bytes, which the output keeps): those frames are not screened again."""
        try:
            return self._clean(ds, identifying_words, screened)
        except DicomReadError as exc:
            return PixelCleanResult(False, f"pixel check impossible: {exc}")
        except (ocr.OcrUnavailable, DetectorUnavailable) as exc:
            return PixelCleanResult(False, f"pixel check impossible: {exc}")
        except EncodeError as exc:
            return PixelCleanResult(False, str(exc))
        except Exception as exc:  # never let one odd object stop the run; say what kind of failure
            log.warning("pixel cleaner failed on an object (%s)", type(exc).__name__)
            return PixelCleanResult(False, f"pixel check failed ({type(exc).__name__})")

    def screen_boxes(self, layout: NativeLayout, data: bytes | memoryview) -> list[list[Box]] | None:
        """The screen on uncompressed pixel bytes as stored, for an object that is screened
        only (its header puts it at no risk; the caller decides that): its boxes per frame,
        from the first frame up to the first one where it fires (all frames when it fires on
        none: nothing to search); None when the full check must run without it (the layout
        is not a plain one, bits above Bits Stored must be cleared, fixed regions are
        configured, a word policy is set). Nothing is decoded or copied. The boxes are those
        the full check would find on the decoded frames (the same stored values): hand them
        to the cleaner's call (``screened``) so no frame is screened twice."""
        if self.settings.policy not in ("redact-detected", "quarantine") or self.settings.fixed_regions:
            return None
        read = native_frames(layout, data)
        if read is None or read[1]:
            return None
        found: list[list[Box]] = []
        for frame in read[0]:
            found.append(candidate_regions(frame))
            if found[-1]:
                break  # the full check runs; it screens the remaining frames itself
        return found

    def screen_native(self, layout: NativeLayout, data: bytes | memoryview) -> PixelCleanResult | None:
        """:meth:`screen_boxes` as a result: the result when the screen finds nothing on any
        frame, or None when the full check must run. No pixel changes: the object goes out
        as it came in, with nothing attested."""
        found = self.screen_boxes(layout, data)
        if found is None or any(found):
            return None
        return PixelCleanResult(True, "screen found no text-like structure", method="screen")

    def _clean(self, ds: Dataset, identifying: set[str], screened: list[list[Box]] | None = None) -> PixelCleanResult:
        policy = self.settings.policy
        if is_photograph(ds):
            return PixelCleanResult(False, "photograph that may show a face: stays in quarantine")
        if "PixelData" not in ds:
            return PixelCleanResult(True, "no pixel data")
        if int(ds.get("BitsAllocated", 8)) == 1:
            return PixelCleanResult(False, "pixel check impossible: 1-bit pixel data is not supported")
        # Objects the header puts at risk are searched whole; the others are screened first.
        whole = assess_pixel_risk(ds, checker=True, every_object=False) is not None
        if whole or policy not in ("redact-detected", "quarantine"):
            screened = None  # searched whole, or read by a word policy: no screen
        elif screened is None:
            layout = layout_of(ds)  # screened only: on the stored bytes first, decode only if it fires
            screened = self.screen_boxes(layout, ds.PixelData) if layout is not None else None
        if screened is not None and not any(screened):
            return PixelCleanResult(True, "screen found no text-like structure", method="screen")
        pixels = np.array(stored_pixels(ds), copy=True)  # all frames, decoded (YBR -> RGB)
        frames = pixels[np.newaxis] if frame_count(ds) == 1 else pixels
        height, width = frames.shape[1:3]
        fill = _fill_value(ds, frames)
        if policy in ("redact-detected", "quarantine"):
            return self._clean_detected(ds, _hidden_high_bits(ds, pixels), frames, fill, whole, screened or [])
        matcher = IdentityMatcher.from_values(identifying)
        regions: list[Box] = []
        changed: set[int] = set()

        fixed = fixed_regions_for(ds, self.settings)
        for box in fixed:
            x0, y0, x1, y1 = (max(0, box[0]), max(0, box[1]), min(width, box[2]), min(height, box[3]))
            if x1 > x0 and y1 > y0:
                regions.append((x0, y0, x1, y1))
                for index in range(len(frames)):
                    blank(frames[index], (x0, y0, x1, y1), fill)
                    changed.add(index)

        leftovers, calls = self._read_and_blank(ds, frames, matcher, fill, regions, changed)
        if leftovers:
            return PixelCleanResult(
                False,
                f"identifying text remains after {MAX_REDACTION_ROUNDS} redaction rounds "
                f"({leftovers} word(s))",
                _unique(regions),
                False,
                calls,
            )
        hidden = _hidden_high_bits(ds, pixels)
        if changed or hidden:
            store_pixels(ds, frames[0] if frame_count(ds) == 1 else frames)
        verified = "verified by OCR" if calls else "nothing to check"
        what = f"{len(_unique(regions))} region(s) blanked" if changed else "no identifying text found"
        if hidden:
            what += ", bits above Bits Stored cleared"
        return PixelCleanResult(
            True, f"{what}, {verified}", _unique(regions), bool(changed or hidden), calls,
            attest=False, method=f"tesseract word policy {policy} (not independently verified)",
        )  # fmt: skip

    def _clean_detected(
        self, ds: Dataset, hidden: bool, frames: np.ndarray, fill: np.ndarray | int, whole: bool, screened: list[list[Box]]
    ) -> PixelCleanResult:
        """Policies "redact-detected" and "quarantine" (see :mod:`medsendx.pixels.textclean`);
        ``whole``: the header puts the object at risk (searched whole, not screened);
        ``screened``: the screen's boxes of the first frames (see :meth:`screen_boxes`)."""
        if self.settings.policy == "quarantine":
            if whole:
                return PixelCleanResult(False, "pixel policy is quarantine: objects at risk are not cleaned")
            if any(screened) or any(candidate_regions(frame) for frame in frames[len(screened) :]):
                return PixelCleanResult(False, "pixel policy is quarantine: the screen found text-like structure")
            return PixelCleanResult(True, "screen found no text-like structure", method="screen")
        height, width = frames.shape[1:3]
        regions: list[Box] = []
        for box in fixed_regions_for(ds, self.settings):
            x0, y0, x1, y1 = (max(0, box[0]), max(0, box[1]), min(width, box[2]), min(height, box[3]))
            if x1 > x0 and y1 > y0:
                regions.append((x0, y0, x1, y1))
                frames[:, y0:y1, x0:x1] = fill
        outcome = clean_frames(ds, frames, fill, self.settings, text_models, whole or bool(regions), screened)
        regions = _unique(regions + outcome.regions)
        if not outcome.clean:
            return PixelCleanResult(False, outcome.reason, regions, False, outcome.ocr_calls,
                                    method=outcome.method, kept=outcome.kept, detector_runs=outcome.detector_runs)  # fmt: skip
        changed = bool(regions) or hidden
        if changed:
            store_pixels(ds, frames[0] if frame_count(ds) == 1 else frames)
        reason = outcome.reason + (", bits above Bits Stored cleared" if hidden else "")
        return PixelCleanResult(
            True, reason, regions, changed, outcome.ocr_calls, attest=outcome.attest, method=outcome.method,
            kept=outcome.kept, detector_runs=outcome.detector_runs,
        )  # fmt: skip

    def _read_and_blank(
        self,
        ds: Dataset,
        frames: np.ndarray,
        matcher: IdentityMatcher,
        fill: np.ndarray | int,
        regions: list[Box],
        changed: set[int],
    ) -> tuple[int, int]:
        """OCR, blank and re-read every frame in place; returns (identifying words left
        after the last round, OCR calls). Blanked boxes go to ``regions``, frames to ``changed``."""
        policy = self.settings.policy
        height, width = frames.shape[1:3]
        ocr_cache: dict[bytes, list[ocr.OcrWord]] = {}
        calls = 0
        # frame -> the rows to read: None = the whole frame (first look), else bands around
        # the boxes blanked in the previous round (the rest of the frame is unchanged and
        # tesseract is deterministic, so its earlier reading still holds).
        pending: dict[int, list[tuple[int, int]] | None] = {index: None for index in range(len(frames))}
        leftovers = 0
        for round_number in range(MAX_REDACTION_ROUNDS + 1):
            still: dict[int, list[tuple[int, int]] | None] = {}
            for index, bands in pending.items():
                frame = frames[index]
                key = hashlib.blake2b(frame.tobytes() + repr(bands).encode(), digest_size=16).digest()
                if key not in ocr_cache:
                    ocr_cache[key] = []
                    for view, image in enumerate(_renderings(ds, frame)):
                        ocr_cache[key] += [_in_view(word, view) for word in ocr.ocr_image(image, bands)]
                        calls += 1
                chosen = words_to_redact(ocr_cache[key], policy, matcher)
                if not chosen:
                    continue
                if round_number == MAX_REDACTION_ROUNDS:
                    leftovers += len(identifying_words(chosen, matcher))
                    continue
                boxes = [redaction_box(word, height, width) for word in chosen]
                for box in boxes:
                    blank(frame, box, fill)
                regions.extend(boxes)
                changed.add(index)
                # Re-read around where the words were (not where we blanked): a faulty
                # blanking step must not shrink what verification looks at.
                still[index] = _bands_around([word.box for word in chosen], height)
            pending = still
            if not pending:
                break
        return leftovers, calls


def _renderings(ds: Dataset, frame: np.ndarray) -> list[np.ndarray]:
    """The frame as a person sees it, plus, for greyscale shown through a window narrower
    than its values, the full range: text painted outside the window is invisible in the
    first view but appears as soon as someone changes the window."""
    shown = display_array(ds, frame)
    if frame.ndim != 2 or str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        return [shown]
    if "WindowCenter" not in ds and "VOILUTSequence" not in ds:
        return [shown]  # already a min/max-like (percentile) view
    values = apply_modality_lut(frame, ds) if "RescaleSlope" in ds or "ModalityLUTSequence" in ds else frame
    lo, hi = float(np.min(values)), float(np.max(values))
    if hi <= lo:
        return [shown]
    if "WindowCenter" in ds and "WindowWidth" in ds and "VOILUTSequence" not in ds:
        center, width = (float(_first(ds.WindowCenter)), float(_first(ds.WindowWidth)))
        if center - width / 2 <= lo and hi <= center + width / 2:
            return [shown]  # the window already shows every value
    full = ((np.asarray(values, dtype=np.float32) - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        full = 255 - full
    return [shown, full]


def _first(value: object) -> float:
    return float(value[0] if isinstance(value, (list, tuple, MultiValue)) else value)  # type: ignore[index, arg-type]


def _in_view(word: ocr.OcrWord, view: int) -> ocr.OcrWord:
    """Keep words of different renderings on different lines (the label rule is per line)."""
    if view == 0:
        return word
    block, paragraph, line = word.line
    return dataclasses.replace(word, line=(block + 100_000 * view, paragraph, line))


def _hidden_high_bits(ds: Dataset, pixels: np.ndarray) -> bool:
    """Native unsigned greyscale data with bits set above BitsStored (the retired practice of
    embedding overlays there): OCR never sees them but they travel with the file, so the
    pixels are written back without them."""
    allocated, stored = int(ds.get("BitsAllocated", 8)), int(ds.get("BitsStored", 8))
    if (
        UID(ds.file_meta.TransferSyntaxUID).is_compressed
        or allocated <= stored
        or allocated not in (8, 16, 32)
        or int(ds.get("PixelRepresentation", 0))
        or int(ds.get("SamplesPerPixel", 1)) != 1
    ):
        return False
    order = ">" if ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2" else "<"
    raw = np.frombuffer(ds.PixelData, dtype=f"{order}u{allocated // 8}", count=pixels.size)
    return not np.array_equal(raw, pixels.reshape(-1))


def _bands_around(boxes: list[Box], height: int) -> list[tuple[int, int]]:
    """Row ranges covering each box and one text height above and below, merged."""
    spans = sorted((max(0, y0 - (y1 - y0)), min(height, y1 + (y1 - y0))) for _, y0, _, y1 in boxes)
    merged: list[tuple[int, int]] = []
    for y0, y1 in spans:
        if merged and y0 <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], y1))
        else:
            merged.append((y0, y1))
    return merged


def _unique(boxes: list[Box]) -> list[Box]:
    return list(dict.fromkeys(boxes))


def make_pixel_cleaner(settings: Settings | PixelSettings) -> PixelCleaner:
    """The cleaner the settings ask for. Under policy "quarantine" it redacts nothing and
    refuses every object the default policy would have to search (so "quarantine" holds
    back at least what the default checks)."""
    pixels = settings.pixels if isinstance(settings, Settings) else settings
    return PixelCleaner(pixels)
