"""Issue 12: burned-in identity found whatever the window, the noise or the header says.

The learned detector's model files (pinned, hash-checked), each rendering, the allow-list,
the screen on real CT/MR, and a synthetic corpus built from real files (tests/burned_corpus.py)
through ``medsendx anonymize``, judged by oracles that do not come from the cleaner: the
planted ink masks, the input pixels, and tesseract reading the full stored range.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pydicom
import pytesseract
import pytest
from PIL import Image

import burned_corpus as bc
from medsendx.config import DEFAULT_ALLOWED_MARKERS, PixelSettings, load_settings
from medsendx.dicomio import display_array
from medsendx.pixels import detector
from medsendx.pixels.render import full_range, renderings, stretch
from medsendx.pixels.screen import candidate_regions
from medsendx.pixels.textclean import is_allowed_marker

ROOT = Path(__file__).resolve().parent.parent


# --- the detector's model files --------------------------------------------------------


def test_model_files_come_from_the_pinned_wheel_and_match_their_hashes(tmp_path: Path) -> None:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [p for p in pins if p.startswith("rapidocr")]
    assert pin == f"rapidocr=={importlib.metadata.version('rapidocr')}"  # pinned exactly, and installed
    paths = detector.verify_models()
    assert set(paths) == set(detector.MODEL_SHA256)
    for path in paths.values():  # inside the installed package, not fetched at run time
        assert path.is_relative_to(detector.model_dir()) and path.stat().st_size > 1_000_000

    copy = tmp_path / "models"
    shutil.copytree(detector.model_dir(), copy)
    detector.verify_models(copy)  # an intact copy passes
    det = copy / detector.DETECTION_MODEL
    data = bytearray(det.read_bytes())
    data[len(data) // 2] ^= 0xFF
    det.write_bytes(bytes(data))
    with pytest.raises(detector.DetectorUnavailable, match="altered"):
        detector.verify_models(copy)
    det.unlink()
    with pytest.raises(detector.DetectorUnavailable, match="missing"):
        detector.verify_models(copy)
    with pytest.raises(detector.DetectorUnavailable):
        detector.TextModels(copy)


def test_detector_finds_and_reads_a_planted_line(data_dir: Path) -> None:
    ds = pydicom.dcmread(data_dir / "ct-head-ge" / "12.dcm")
    pixels = ds.pixel_array.copy()
    ink = bc.text_mask(pixels.shape, [((200, 250), "ID 70341958", "liberation", 14)])
    pixels[ink] = pixels.max()
    image = stretch(pixels)
    models = detector.text_models()
    found = [d.box for d in models.detect(image)]
    rows, cols = np.nonzero(ink)
    covering = [b for b in found if b[0] <= cols.min() and b[1] <= rows.min() and b[2] > cols.max() and b[3] > rows.max()]
    assert covering, found
    text, confidence = models.recognise(image, covering[0])
    assert "70341958" in text.replace(" ", "") and confidence > 0.8


# --- renderings --------------------------------------------------------------------------


def by_name(ds, frame) -> dict[str, np.ndarray]:
    return {r.name: r.image for r in renderings(ds, frame)}


def test_byte_pen_in_16_bit_data_is_black_in_the_window_and_plain_in_the_byte_rendering(data_dir: Path) -> None:
    case = bc.ct_byte_pen_over_anatomy(data_dir)
    frame = case.ds.pixel_array
    ink = case.ink[0]
    shown = display_array(case.ds, frame)
    assert len(np.unique(shown[ink])) == 1  # one flat grey (black) in the 40/400 window...
    ring = np.zeros_like(ink)
    rows, cols = np.nonzero(ink)
    ring[rows.min() - 4 : rows.max() + 5, cols.min() - 4 : cols.max() + 5] = True
    ring &= ~ink
    views = by_name(case.ds, frame)
    byte = views["byte"]
    assert (byte[ink] == 255).all()  # ...white where an 8-bit pen wrote 255
    assert np.mean(byte[ring]) < 128


def test_max_value_pen_shows_in_the_high_rendering(data_dir: Path) -> None:
    case = bc.ct_max_value_corner(data_dir)
    views = by_name(case.ds, case.ds.pixel_array)
    high = views["high"]
    assert (high[case.ink[0]] == 255).all()
    assert (high == 255).sum() < 3 * case.ink[0].sum()  # little else is that bright
    assert views["full"][case.ink[0]].min() == 255


def test_monochrome1_pen_at_min_is_white_in_full_and_low(data_dir: Path) -> None:
    case = bc.cr_monochrome1(data_dir)
    views = by_name(case.ds, case.ds.pixel_array)
    assert (views["full"][case.ink[0]] == 255).all()  # MONOCHROME1: minimum shown white
    assert (views["low"][case.ink[0]] == 255).all()


def test_colour_text_is_bright_in_the_max_channel_rendering() -> None:
    case = bc.ultrasound_rgb()
    views = by_name(case.ds, case.ds.pixel_array)
    assert (views["window-max-channel"][case.ink[0]] == 255).all()
    assert full_range(case.ds, case.ds.pixel_array)[case.ink[0]].min() == 255


def test_every_frame_has_its_own_renderings(data_dir: Path) -> None:
    case = bc.multiframe_ct(data_dir)
    frames = case.ds.pixel_array
    for index in range(2):
        high = by_name(case.ds, frames[index])["high"]
        assert (high[case.ink[index]] == 255).all()


def test_window_left_out_only_when_it_is_the_full_range(data_dir: Path) -> None:
    case = bc.cr_monochrome1(data_dir)  # its window clips the lowest values, where the pen is
    frame = case.ds.pixel_array
    assert "window" in by_name(case.ds, frame)
    lo, hi = int(frame.min()), int(frame.max())
    case.ds.WindowCenter, case.ds.WindowWidth = (lo + hi) / 2, hi - lo + 2  # spans every value
    views = by_name(case.ds, frame)
    assert "window" not in views and (views["full"][case.ink[0]] == 255).all()
    case.ds.WindowWidth = 3 * (hi - lo)  # every value, at a third of the contrast: full shows more
    assert "window" not in by_name(case.ds, frame)
    case.ds.WindowCenter, case.ds.WindowWidth = (lo + hi) / 2, (hi - lo) / 2  # clips both ends: kept
    assert "window" in by_name(case.ds, frame)


def test_screened_frame_gets_extreme_renderings_only_for_its_pens(data_dir: Path) -> None:
    case = bc.ct_byte_pen_over_anatomy(data_dir)
    frame = case.ds.pixel_array
    assert {"high", "low", "byte"} <= set(by_name(case.ds, frame))  # searched whole: all of them
    names = {r.name for r in renderings(case.ds, frame, pens=[255])}
    assert "byte" in names and "high" not in names  # the 8-bit pen: byte, not the top of the range
    names = {r.name for r in renderings(case.ds, frame, pens=[int(frame.max())])}
    assert "high" in names and "byte" not in names and "low" not in names


def test_detector_crops_skip_flat_parts_but_cover_all_content() -> None:
    from medsendx.pixels.textclean import CONTEXT, _content

    crop = np.zeros((400, 600), dtype=np.uint8)
    crop[20:40, 30:200] = 255  # two lines far apart on a flat background
    crop[350:380, 400:590] = 200
    parts = _content(crop, 10, 5)
    assert len(parts) == 2
    covered = np.zeros(crop.shape, dtype=bool)
    for x0, y0, x1, y1 in parts:
        covered[y0 - 5 : y1 - 5, x0 - 10 : x1 - 10] = True
    ys, xs = np.nonzero(crop)
    for y, x in zip(ys, xs):  # every pixel of content, with CONTEXT px around it
        assert covered[max(0, y - CONTEXT) : y + CONTEXT + 1, max(0, x - CONTEXT) : x + CONTEXT + 1].all()
    assert covered.mean() < 0.5


def test_pens_of_a_screened_area_are_values_forming_strokes(data_dir: Path) -> None:
    from medsendx.pixels.textclean import _pen_strokes

    case = bc.mr_large_font(data_dir)
    frame = case.ds.pixel_array.copy()
    rng = np.random.default_rng(1)
    pen = int(frame[case.ink[0]][0])
    flat, speck = pen + 1000, pen + 2000  # values the image does not hold otherwise
    frame[:100, :100] = flat  # a flat patch of one value...
    specks = rng.integers(0, frame.shape[0], (200, 2))
    frame[specks[:, 0], specks[:, 1]] = speck  # ...and scattered specks of another
    strokes = _pen_strokes(frame, [flat, speck, pen])
    assert set(strokes) == {pen}
    ink = case.ink[0]
    assert strokes[pen][ink].mean() > 0.5  # the text's pixels are strokes; little else of that value is
    assert strokes[pen][~ink].sum() < 0.1 * strokes[pen][ink].sum()


def _siemens_mr_with_a_name_line() -> tuple[pydicom.Dataset, np.ndarray, np.ndarray]:
    """A real 12-bit MR (values up to ~1100) with a name line at its maximum over anatomy."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    frame = ds.pixel_array.copy()
    name = bc.text_mask(frame.shape, [((100, 150), bc.LINES[0], "dejavu", 16)])
    frame[name] = frame.max()
    return ds, frame, name


def _narrow_id(shape: tuple[int, int], xy: tuple[int, int]) -> np.ndarray:
    """The planted ID at 8 px in a narrow face: 29 x 6 px, 67 ink pixels."""
    from heldout_corpus import FONTS, ink_of

    return ink_of(shape, xy, "70341958", FONTS["liberation-narrow"], 8)


def test_a_small_line_straddling_tiles_left_after_redaction_is_not_attested() -> None:
    """Post-redaction pen check: a redaction that missed a small line (here the line appears
    after the redaction of the name above it, as if the detector had not seen it) must not be
    attested. The line straddles a corner of the screen's tiles: fewer than 20 of its pixels
    in any tile (no tile count, not even the 20 the pen check once asked, finds it), all of
    them in one 2 x 2 window (the screen's rule counts it). Oracle: the planted pixels."""
    from medsendx.pixels.detector import text_models
    from medsendx.pixels.screen import TILE
    from medsendx.pixels.textclean import TextCleaner

    ds, frame, _ = _siemens_mr_with_a_name_line()
    pen = int(frame.max())  # the name's pen
    cleaner = TextCleaner(PixelSettings(), text_models)
    report = cleaner.clean_frame(ds, frame, int(frame.min()), whole=False)
    assert report.blanked and report.pens and pen in report.pens
    # Ink 210..238 x 189..194, around the tile corner (224, 192); here the second reader and
    # the detector's second look both find nothing (the verification attested it before).
    line = _narrow_id(frame.shape, (210, 187))
    assert not any(b[0] < 239 and 210 < b[2] and b[1] < 195 and 189 < b[3] for b in report.blanked)
    frame[line] = pen  # the same pen, below the blanked name, in the screened area
    per_tile = line[:480, :480].reshape(15, TILE, 15, TILE).sum(axis=(1, 3))
    assert per_tile.max() < 20 and per_tile[5:7, 6:8].sum() == line.sum() >= 60  # straddling, and all in one window
    problem = cleaner.verify_frame(ds, frame, report)
    assert problem is not None and "pen" in problem


def test_a_byte_pen_line_beside_a_name_at_the_maximum_is_blanked_or_not_attested() -> None:
    """A name at the maximum of a 12-bit MR and, in the same screened area, a small ID line in
    an 8-bit pen (255, a value the tissue holds too: no histogram spike in the area). The
    area's pens must include it (the screen's own spike choice, weak excess for 255), so
    it is searched in its own rendering; it was attested with every ink pixel left before.
    Oracle: the planted pixels."""
    from medsendx.pixels.detector import text_models
    from medsendx.pixels.textclean import clean_frames

    ds, frame, name = _siemens_mr_with_a_name_line()
    original = ds.pixel_array
    line = _narrow_id(frame.shape, (130, 203))
    frame[line] = 255
    visible = line & (original != 255)
    assert visible.sum() >= 60
    frames = frame[np.newaxis].copy()
    outcome = clean_frames(ds, frames, int(frame.min()), PixelSettings(), text_models, False)
    left = frames[0][visible] == 255
    assert not (outcome.attest and left.any()), f"attested with {int(left.sum())} of {int(visible.sum())} ink pixels left"
    assert not outcome.clean or not left.any()  # released only with the line gone
    assert (frames[0][name] != frame[name]).all() or not outcome.clean


def test_in_process_tesseract_reads_what_the_command_reads(data_dir: Path) -> None:
    from medsendx.pixels import ocr, tesslib

    assert tesslib.available()
    for case in (bc.ct_max_value_corner(data_dir), bc.mammo_noise(3, "L", "CC", "NO"), bc.ultrasound_rgb()):
        frame = bc.stored_frames(case.ds)[0]
        image, _ = ocr.prepare_for_ocr(full_range(case.ds, frame))
        command = pytesseract.image_to_data(image, config=ocr.TESSERACT_CONFIG, output_type=pytesseract.Output.DICT)
        library = tesslib.image_to_data(image, 60)

        def words(data: dict) -> list:
            keys = ("text", "left", "top", "width", "height", "block_num", "par_num", "line_num")
            return [(tuple(data[k][i] for k in keys), float(data["conf"][i]))
                    for i in range(len(data["text"])) if int(data["level"][i]) == 5 and data["text"][i].strip()]  # fmt: skip

        ours, theirs = words(library), words(command)
        assert theirs and [w for w, _ in ours] == [w for w, _ in theirs], case.name
        assert all(abs(a - b) < 1 for (_, a), (_, b) in zip(ours, theirs)), case.name  # (the command prints rounded)


# --- the allow-list ------------------------------------------------------------------------


@pytest.mark.parametrize("text,allowed", [
    ("L", True), ("R", True), ("L CC", True), ("R MLO", True), ("rmlo", True), ("LAT", True), ("AP", True),
    ("PA.", True), ("", False), ("KOWALCZYK", False), ("L 1958", False), ("LEFT RQ884120", False),
    ("ID", False), ("CCC", False),
])  # fmt: skip
def test_allow_list_keeps_markers_only(text: str, allowed: bool) -> None:
    assert is_allowed_marker(text, DEFAULT_ALLOWED_MARKERS) is allowed


def test_allow_list_is_a_setting() -> None:
    settings = load_settings(environ={"MEDSENDX_PIXELS__ALLOWED_MARKERS": "L,R"})
    assert settings.pixels.allowed_markers == ["L", "R"]
    assert not is_allowed_marker("CC", settings.pixels.allowed_markers)
    assert PixelSettings().policy == "redact-detected"  # default deny is the default


# --- the screen ----------------------------------------------------------------------------


def test_screen_stays_quiet_on_most_real_slices_and_fires_on_every_planted_line(data_dir: Path) -> None:
    paths = [p for sub in ("ct-head-ge", "ct-phantom-philips", "mr-brain-ge") for p in sorted((data_dir / sub).glob("*.dcm"))]
    fired = total = 0
    for path in paths:
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds:
            continue
        total += 1
        fired += bool(candidate_regions(ds.pixel_array))
    assert total >= 70 and fired <= 0.2 * total, (fired, total)
    for case in bc.build(data_dir):
        frames = bc.stored_frames(case.ds)
        for frame, ink in zip(frames, case.ink):
            covered = np.zeros(ink.shape, dtype=bool)
            for x0, y0, x1, y1 in candidate_regions(frame):
                covered[y0:y1, x0:x1] = True
            assert covered[ink].all(), case.name


# --- the corpus through anonymize ------------------------------------------------------------


def read_words(image: np.ndarray) -> set[str]:
    """An independent reader: plain tesseract on an 8-bit image (dark text on light, and the
    inverse), upper-cased words of letters and digits."""
    words: set[str] = set()
    for img in (image, 255 - image):
        big = Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.Resampling.BICUBIC)
        text = pytesseract.image_to_string(big, config="--psm 11")
        words |= {w for w in re.split(r"[^0-9A-Z]+", text.upper()) if w}
    return words


def planted_seen(words: set[str]) -> set[str]:
    return {p for p in bc.PLANTED_WORDS if any(p in w for w in words)}


def method_codes(ds: pydicom.Dataset) -> list[str]:
    return [item.CodeValue for item in ds.get("DeidentificationMethodCodeSequence", [])]


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path):
    from conftest import run_cli

    root = tmp_path_factory.mktemp("burned")
    inbox = root / "in"
    inbox.mkdir()
    cases = bc.build(data_dir)
    for number, case in enumerate(cases, start=1):
        case.ds.InstanceNumber = number  # kept by the profile: pairs each output with its case
        (inbox / f"case{number:02d}.dcm").write_bytes(case.bytes())
    state = root / "state"
    result = run_cli("anonymize", inbox, root / "out", "--workers", "1", env={"MEDSENDX_STATE_DIR": str(state)})
    outputs = {int(pydicom.dcmread(p).InstanceNumber): pydicom.dcmread(p) for p in (root / "out").glob("*.dcm")}
    return cases, outputs, result, state


def test_corpus_every_identity_line_is_blanked_and_attested_only_then(corpus_run) -> None:
    cases, outputs, result, _ = corpus_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(outputs) == list(range(1, len(cases) + 1))  # nothing quarantined on this corpus
    for number, case in enumerate(cases, start=1):
        out = outputs[number]
        before = bc.stored_frames(pydicom.dcmread(__import__("io").BytesIO(case.bytes())))
        after = bc.stored_frames(out)
        changed = np.any(after != before, axis=-1) if after.ndim == 4 else after != before
        missed = case.ink & ~changed
        assert not missed.any(), f"{case.name}: {int(missed.sum())} ink pixels left"
        # Attested: BurnedInAnnotation NO and Clean Pixel Data only with every line gone.
        assert out.BurnedInAnnotation == "NO" and "113101" in method_codes(out), case.name
        # Markers survive, bit for bit.
        for x0, y0, x1, y1 in case.markers:
            assert np.array_equal(before[:, y0:y1, x0:x1], after[:, y0:y1, x0:x1]), case.name
        # Collateral stays local: every changed pixel holds the one fill value, and the changed
        # area is a small multiple of the text's own extent.
        fill = after[changed]
        assert len(np.unique(fill.reshape(len(fill), -1), axis=0)) == 1, case.name
        rows, cols = np.nonzero(case.ink.any(axis=0))
        extent = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert changed.any(axis=0).sum() <= 4 * extent + 20000, case.name


def test_corpus_independent_reader_finds_no_planted_word(corpus_run) -> None:
    cases, outputs, _, _ = corpus_run
    readable_before = 0
    for number, case in enumerate(cases, start=1):
        source = pydicom.dcmread(__import__("io").BytesIO(case.bytes()))
        for index, frame in enumerate(bc.stored_frames(outputs[number])):
            seen = planted_seen(read_words(full_range(outputs[number], frame)))
            assert not seen, f"{case.name}, frame {index}: {sorted(seen)}"
            readable_before += bool(planted_seen(read_words(full_range(source, bc.stored_frames(source)[index]))))
    # The reader can fail: on the inputs it reads planted words in most objects.
    assert readable_before >= len(cases) // 2, readable_before


def test_real_slices_without_text_pass_unchanged_and_unattested(tmp_path: Path, data_dir: Path, cli) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    sources = sorted((data_dir / "ct-head-ge").glob("*.dcm"))[:6] + sorted((data_dir / "mr-brain-ge").glob("*.dcm"))[:4]
    for path in sources:
        shutil.copy(path, inbox / f"{path.parent.name}-{path.name}")
    result = cli("anonymize", inbox, tmp_path / "out", "--workers", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = [pydicom.dcmread(p) for p in (tmp_path / "out").glob("*.dcm")]
    assert len(outputs) == len(sources)
    originals = {pydicom.dcmread(p).PixelData for p in sources}
    for out in outputs:
        assert out.PixelData in originals  # bit-exact
        assert "113101" not in method_codes(out)  # nothing claimed


def test_inspect_png_boxes_shows_what_is_blanked_and_kept(tmp_path: Path, cli) -> None:
    case = bc.mammo_noise(5, "R", "CC", "NO")
    src = tmp_path / "mammo.dcm"
    src.write_bytes(case.bytes())
    before = src.read_bytes()
    result = cli("inspect", src, "--png", tmp_path / "boxes.png", "--boxes")
    assert result.returncode == 0, result.stderr
    assert src.read_bytes() == before  # boxes are drawn on a copy
    image = np.array(Image.open(tmp_path / "boxes.png").convert("RGB")).astype(int)
    red = (image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] < 60)
    green = (image[..., 1] > 150) & (image[..., 0] < 60) & (image[..., 2] < 60)
    rows, cols = np.nonzero(case.ink[0])
    assert red[max(0, rows.min() - 12) : rows.max() + 12, max(0, cols.min() - 12) : cols.max() + 12].any()
    x0, y0, x1, y1 = case.markers[0]
    assert green[max(0, y0 - 12) : y1 + 12, max(0, x0 - 12) : x1 + 12].any()
    assert not red[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2].any()  # the marker is not blanked
