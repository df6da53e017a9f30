"""A seeded fuzz campaign over real files (issue 13): identities are planted into copies of
files from ../shared/data first, then each copy is damaged (random bytes, truncation, a
text element swallowing the next, swapped VRs, huge lengths, values no VR allows, deep
nesting, unknown transfer syntaxes). Every mutant goes through ``anonymize`` (in-process
in bulk, and the real command on a sample), ``inspect``, ``view`` and ``segment``
(in-process through the click commands, and the real CLI on a sample):

* no traceback and no unexpected exception, ever; a damaged file is one line of ours;
* every input becomes an output or a quarantine entry (and one audit line);
* every output is readable, value by value, by pydicom (a second reader);
* no planted identity in any output's bytes, output file name, audit line, quarantine
  record, or console line, beyond the user's own input path.

Deterministic: one seed, mutants de-duplicated by content.
"""

from __future__ import annotations

import json
import random
import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

from deid_helpers import settings_for
from malformed import insert_raw, nested_sequence, set_transfer_syntax, set_value, set_vr, swallow_next, top_elements
from medsendx.cli import cli as cli_group
from medsendx.deid import Deidentifier, codec
from medsendx.deid.audit import read_audit
from medsendx.fsutil import is_valid_uid
from medsendx.quarantine import list_quarantine

SEED = 20261202
MUTANTS_PER_SEED = 20
MARK = "FUZZPLANT"
PLANTS = {
    "PatientName": f"{MARK}^PATIENT",
    "PatientID": f"{MARK}01",
    "OtherPatientIDs": f"{MARK}02",
    "PatientBirthName": f"{MARK}^BIRTH",
    "PatientAddress": f"{MARK} ROAD 3",
    "AccessionNumber": f"{MARK}03",
    "InstitutionName": f"{MARK} HOSPITAL",
    "ReferringPhysicianName": f"{MARK}^REFERRER",
    "OperatorsName": f"{MARK}^OPERATOR",
    "StudyDescription": f"HEAD {MARK}",
    "StudyID": f"{MARK}04",
    "DeviceSerialNumber": f"{MARK}05",
}
DAMAGED_VALUES = [
    (0x00280008, "IS", [b"nan ", b"1e309", b"-1", b"0 ", b"abc "]),  # NumberOfFrames
    (0x00281053, "DS", [b"abc ", b"nan ", b"1e400 ", b"[/i]"]),  # RescaleSlope
    (0x00281050, "DS", [b"[/i]", b"1\\2\\x "]),  # WindowCenter
    (0x00080005, "CS", [b"ISO\x00IR 100", b"ISO_IR 192\x1b$)"]),  # SpecificCharacterSet
    (0x00080060, "CS", [b"[bold]CT", b"C\x1b[31mT"]),  # Modality
    (0x00081090, "LO", [b"[/i] x [red]", b"A" * 400, b"model\x01" + MARK.encode()]),
]


def seeds(data_dir: Path) -> list[Path]:
    picks = []
    for folder in ("ct-head-ge", "ct-phantom-philips", "mr-brain-ge"):
        picks += sorted((data_dir / folder).glob("*.dcm"))[:3]
    return picks + sorted((data_dir / "transfer-syntaxes").glob("*.dcm"))


def planted(path: Path) -> bytes:
    import io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        for keyword, value in PLANTS.items():
            setattr(ds, keyword, value)
        item = pydicom.Dataset()
        item.RequestedProcedureID = f"{MARK}06"
        ds.RequestAttributesSequence = [item]
        buffer = io.BytesIO()
        ds.save_as(buffer)
    return buffer.getvalue()


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One or two damages; structural ones only where the file is explicit VR LE."""
    part = codec.read_part10(data)
    surgery = part.encoding == codec.EXPLICIT_LE and not part.deflated
    operations = ["flip", "flip", "truncate", "syntax"] + (["swallow", "vr", "length", "value", "value", "nest"] if surgery else [])
    for _ in range(rng.choice((1, 1, 2))):
        op = rng.choice(operations)
        try:
            data = _apply(op, data, rng)
        except (AssertionError, StopIteration, IndexError, ValueError, struct.error, codec.FormatError):
            pass  # this damage does not fit this file (or an earlier one broke its structure)
    return data


def _apply(op: str, data: bytes, rng: random.Random) -> bytes:
    if op == "flip":
        part = codec.read_part10(data)
        start = 132 if part.deflated else part.body_start
        changed = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            changed[rng.randrange(start, min(len(data), start + 4000))] = rng.randrange(256)
        return bytes(changed)
    if op == "truncate":
        return data[: rng.randrange(132, len(data))]
    if op == "syntax":
        return set_transfer_syntax(data, rng.choice(["1.2.840.10008.1.2.1.777", "1.2.3.4", "1.2.840.10008.1.2.4.50.9"]))
    _, elements = top_elements(data)
    if op == "swallow":
        texts = [e.tag for e in elements[:-1] if e.vr in ("LO", "SH", "CS", "PN", "DS", "IS") and e.tag < 0x7FE00000]
        return swallow_next(data, rng.choice(texts))
    if op == "vr":
        el = rng.choice([e for e in elements if e.vr not in codec.LONG_VRS])
        return set_vr(data, el.tag, rng.choice(["UL", "SL", "QQ", "FD", "AT", "SQ", "\x00\x00"]))
    if op == "length":
        el = rng.choice([e for e in elements if e.vr not in codec.LONG_VRS])
        return data[: el.start + 6] + struct.pack("<H", rng.choice([0xFFFF, el.length + 1, el.length + 9])) + data[el.start + 8 :]
    if op == "value":
        tag, vr, values = rng.choice(DAMAGED_VALUES)
        return set_value(data, tag, vr, rng.choice(values))
    if op == "nest":
        return insert_raw(data, 0x00189321, nested_sequence(rng.choice([codec.MAX_DEPTH, codec.MAX_DEPTH + 1, 5000]), undefined=rng.random() < 0.5))
    raise ValueError(op)


@pytest.fixture(scope="module")
def campaign(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    rng = random.Random(SEED)
    root = tmp_path_factory.mktemp("fuzz")
    inputs = root / "in"
    inputs.mkdir()
    seen: set[bytes] = set()
    files: list[Path] = []
    for seed in seeds(data_dir):
        base = planted(seed)
        for _ in range(MUTANTS_PER_SEED):
            mutant = mutate(base, rng)
            if mutant in seen:
                continue
            seen.add(mutant)
            # The input's own name carries the marker: the user's path may be echoed, but
            # no output name, log line or record may take it over.
            path = inputs / f"{len(files):03d}-{MARK}-NAME.dcm"
            path.write_bytes(mutant)
            files.append(path)
    settings = settings_for(root / "state")
    outcomes = list(Deidentifier(settings).deidentify_files(files, root / "out"))
    return {"root": root, "files": files, "outcomes": outcomes, "settings": settings}


def test_the_campaign_is_large_and_varied(campaign) -> None:
    statuses = [o.status for o in campaign["outcomes"]]
    assert len(campaign["files"]) >= 300
    # damage of every kind was met: outputs and refusals both in numbers
    assert statuses.count("ok") >= 50 and statuses.count("ok") <= len(statuses) - 100, statuses.count("ok")


def test_every_input_is_an_output_or_a_quarantine_entry(campaign) -> None:
    outcomes, settings = campaign["outcomes"], campaign["settings"]
    assert [o.source for o in outcomes] == campaign["files"]
    refused = [o for o in outcomes if o.status != "ok"]
    for outcome in outcomes:
        if outcome.status == "ok":
            assert outcome.output is not None and outcome.output.is_file()
        else:
            assert outcome.output is None and outcome.reason and "\n" not in outcome.reason
    assert len(list_quarantine(settings.quarantine_dir)) == len(refused)
    assert len(read_audit(settings.audit_log)) == len(outcomes)


def test_no_planted_identity_leaves_and_every_output_reads_back(campaign) -> None:
    settings = campaign["settings"]
    for outcome in campaign["outcomes"]:
        assert MARK not in outcome.reason
        if outcome.status != "ok":
            continue
        assert is_valid_uid(outcome.output.stem) and MARK not in outcome.output.name
        data = outcome.output.read_bytes()
        assert MARK.encode() not in data, outcome.source.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(outcome.output)  # a second reader takes every value
            for elem in ds.iterall():
                _ = elem.value
    for text in (settings.audit_log.read_text(), json.dumps(list_quarantine(settings.quarantine_dir))):
        assert MARK not in text
    assert not any(MARK in p.name for p in settings.quarantine_dir.iterdir())


def console_beyond_paths(text: str, paths: list[Path]) -> str:
    """Console text without the user's own input paths (which may carry anything)."""
    for path in sorted(paths, key=lambda p: -len(str(p))):
        text = text.replace(str(path), "").replace(path.name, "")
    return text


def test_inspect_view_and_segment_never_raise_in_process(campaign) -> None:
    """Each command on every mutant, through click in this process: a result, or a
    clean exit 1 with one line on stderr; never an exception of any other kind."""
    runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
    out_png = campaign["root"] / "overlay.png"
    failures = []
    for i, path in enumerate(campaign["files"]):
        # inspect on every file; view and segment (the clustering is the slow part) on
        # every other one, in turn
        commands = [["inspect", str(path)], ["view", str(path)] if i % 2 else ["segment", str(path), "--out", str(out_png)]]
        for args in commands:
            result = runner.invoke(cli_group, args, catch_exceptions=True)
            stderr = result.stderr if result.stderr_bytes is not None else ""
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                failures.append((args[0], path.name, type(result.exception).__name__))
                continue
            assert result.exit_code in (0, 1), (args, result.exit_code)
            assert "Traceback" not in result.output + stderr
            if result.exit_code == 1:
                assert len(stderr.strip().splitlines()) == 1, (args, stderr)
            assert MARK not in console_beyond_paths(stderr, [path]), (args, stderr)
            if args[0] == "segment":
                assert MARK not in console_beyond_paths(result.output, [path]), args
    assert failures == []


def test_view_of_every_output_shows_no_planted_identity(campaign) -> None:
    runner = CliRunner()
    for outcome in campaign["outcomes"]:
        if outcome.status == "ok":
            result = runner.invoke(cli_group, ["view", str(outcome.output)])
            assert result.exit_code == 0 and MARK not in result.output, outcome.source.name


def test_the_real_commands_on_a_sample(campaign, cli, tmp_path: Path) -> None:
    files = campaign["files"][::8]
    sample = tmp_path / "sample"
    sample.mkdir()
    for path in files:
        (sample / path.name).write_bytes(path.read_bytes())
    state = tmp_path / "state"
    env = {"MEDSENDX_STATE_DIR": str(state)}
    result = cli("anonymize", sample, tmp_path / "out", env=env)
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr + result.stdout
    inputs = sorted(sample.iterdir())
    assert MARK not in console_beyond_paths(result.stdout + result.stderr, inputs)
    # (mutants of one file share its SOP Instance UID, so one output name: count outcomes)
    statuses = [record["status"] for record in read_audit(state / "audit.jsonl")]
    assert len(statuses) == len(inputs)
    assert statuses.count("ok") + len(list_quarantine(state / "quarantine")) == len(inputs)
    outputs = list((tmp_path / "out").glob("*.dcm"))
    assert outputs and not any(MARK.encode() in p.read_bytes() for p in outputs)
    for path, command in zip(inputs[1:], ("inspect", "view", "segment", "inspect")):  # (start-up is slow)
        for args in ([command, path] + (["--no-png"] if command == "segment" else []),):
            run = cli(*args, env=env)
            assert run.returncode in (0, 1) and "Traceback" not in run.stderr and "internal error" not in run.stderr, args
