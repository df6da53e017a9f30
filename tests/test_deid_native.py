"""The compiled element walk (deid/_codec.c) against the Python walk it replaces.

The walk decides where every element is: a difference could hide an identifier from the
engine. So both must give the same elements, positions and errors, at every depth, on
every real file and on damaged copies of them, and the engine's output must be the same
bytes either way.
"""

from __future__ import annotations

import random
import re
import shutil
import struct
import warnings
from pathlib import Path

import pytest
from pydicom.data import get_testdata_files

from deid_helpers import settings_for
from medsendx.deid import Deidentifier, _native, codec
from medsendx.deid.engine import dict_vr

# With a C compiler here the compiled walk must load (a build failure must not pass as a skip).
pytestmark = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler: the Python walk is used")


def test_the_compiled_walk_is_in_use() -> None:
    assert _native.available()


def real_files(data_dir: Path) -> list[Path]:
    shared = [p for p in sorted(data_dir.rglob("*")) if p.is_file() and p.suffix.lower() not in (".md", ".txt", ".json")]
    return shared + [path for path in map(Path, sorted(get_testdata_files())) if path.is_file()]


def damaged_copies(data: bytes, rng: random.Random) -> list[bytes]:
    """Truncations anywhere, and one changed byte in the first 3000 (headers, sequences)."""
    if len(data) < 200:
        return []
    copies = [data[: rng.randrange(132, len(data))] for _ in range(3)]
    for _ in range(4):
        changed = bytearray(data)
        changed[rng.randrange(132, min(len(data), 3000))] = rng.randrange(256)
        copies.append(bytes(changed))
    return copies


def walk(parse, buf: bytes, pos: int, end: int, enc: codec.Encoding, until_item_end: bool = False):
    """Everything ``parse`` finds, recursively into every sequence item, or its error."""
    try:
        elements, stop = parse(buf, pos, end, enc, dict_vr, until_item_end=until_item_end)
    except codec.FormatError as exc:
        return ("error", str(exc))
    found: list = [elements, stop]
    for el in elements:
        if el.vr == "SQ" or (el.vr is None and dict_vr(el.tag) == "SQ"):
            try:
                items = codec.sequence_items(buf, el, enc, dict_vr)
            except codec.FormatError as exc:
                found.append(("items error", str(exc)))
                continue
            for start, stop_, undefined in items:
                found.append(walk(parse, buf, start, len(buf) if undefined else stop_, enc, undefined))
    return found


def test_the_c_walk_numbers_the_vrs_as_codec_does() -> None:
    source = (Path(_native.__file__).with_name("_codec.c")).read_text()
    table = re.findall(r'\{"(\w\w)", ([01])\}', source)
    assert tuple(vr for vr, _ in table) == codec.VR_CODES
    assert {vr for vr, is_long in table if is_long == "1"} == codec.LONG_VRS
    for name in ("SQ", "UN"):
        assert f"#define CODE_{name} {codec.VR_CODES.index(name) + 1}\n" in source


def test_same_elements_and_errors_as_the_python_walk_on_real_and_damaged_files(data_dir: Path) -> None:
    rng = random.Random(20261125)
    compared = errors = nested = 0
    for path in real_files(data_dir):
        data = path.read_bytes()
        for variant in [data, *damaged_copies(data, rng)]:
            try:
                part = codec.read_part10(variant)
            except codec.FormatError:
                continue
            ours = walk(codec.parse_dataset, part.body, part.body_start, len(part.body), part.encoding)
            reference = walk(codec.parse_dataset_python, part.body, part.body_start, len(part.body), part.encoding)
            assert ours == reference, f"{path.name}: the compiled walk differs"
            compared += 1
            errors += ours[0] == "error"
            nested += ours[0] != "error" and len(ours) > 2
    # the comparison covered real structure and real damage, not just a few clean headers
    assert compared > 1500 and errors > 200 and nested > 100, (compared, errors, nested)


def test_same_result_for_every_cut_of_the_first_headers(data_dir: Path) -> None:
    """Every truncation point in the first 2 KB of the dataset of one file per folder: each
    kind of element header (short, long, sequence, item) is cut at each of its bytes."""
    folders = sorted({path.parent for path in real_files(data_dir) if path.suffix.lower() == ".dcm"})
    kinds = set()
    for folder in folders:
        part = codec.read_part10(next(iter(sorted(folder.glob("*.dcm")))).read_bytes())
        if part.deflated:
            continue
        for cut in range(part.body_start, min(len(part.body), part.body_start + 2048)):
            body = part.body[:cut]
            ours = walk(codec.parse_dataset, body, part.body_start, cut, part.encoding)
            assert ours == walk(codec.parse_dataset_python, body, part.body_start, cut, part.encoding), f"{folder.name} cut at {cut}"
            kinds.add(ours[1] if ours[0] == "error" else "ok")
    assert {"file ends inside an element header (truncated)", "an element runs past the end of the file (truncated or damaged)"} <= kinds


def test_an_implicit_undefined_length_element_that_is_no_sequence_is_refused_alike() -> None:
    enc = codec.IMPLICIT_LE
    patient_name = struct.pack("<HHI", 0x0010, 0x0010, codec.UNDEFINED) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    study = struct.pack("<HHI", 0x0008, 0x0020, 8) + b"20240101"
    nested = struct.pack("<HHI", 0x0008, 0x1110, codec.UNDEFINED) + struct.pack("<HHI", 0xFFFE, 0xE000, codec.UNDEFINED)
    nested += patient_name + struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    for body in (study + patient_name, study + nested, study + nested[:-12]):
        results = []
        for parse in (codec.parse_dataset, codec.parse_dataset_python):
            with pytest.raises(codec.FormatError) as raised:
                parse(body, 0, len(body), enc, dict_vr)
            results.append(str(raised.value))
        assert results[0] == results[1] == "undefined length on an element that is not a sequence"


def test_a_file_cut_inside_its_file_meta_is_a_clear_format_error(data_dir: Path) -> None:
    """Cut anywhere in the meta group: our own error (it was a struct.error inside a long
    VR header, which reached the user as a vague 'cannot de-identify')."""
    data = next(iter(sorted((data_dir / "ct-head-ge").glob("*.dcm")))).read_bytes()
    meta_end = 144 + struct.unpack_from("<I", data, 140)[0]
    reasons = []
    for cut in range(133, meta_end):
        try:
            codec.read_part10(data[:cut])
        except codec.FormatError as exc:
            reasons.append(str(exc))
    assert "damaged file meta information (truncated)" in reasons and len(reasons) > (meta_end - 133) // 2


def test_the_engine_writes_the_same_bytes_with_either_walk(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deid = Deidentifier(settings_for(tmp_path), pixel_cleaner=None)
    outputs: dict[str, list] = {"compiled": [], "python": []}
    files = [p for p in real_files(data_dir) if p.suffix.lower() == ".dcm"]
    for name in outputs:
        if name == "python":
            monkeypatch.setattr(_native, "available", lambda: False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for path in files:
                try:
                    outputs[name].append(deid.deidentify_bytes(path.read_bytes())[0])
                except Exception as exc:  # quarantine or damage: the same reason either way
                    outputs[name].append(f"{type(exc).__name__}: {exc}")
    assert outputs["compiled"] == outputs["python"]
    assert sum(isinstance(out, bytes) for out in outputs["compiled"]) > 100
