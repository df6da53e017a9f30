"""Quality flags and priority rules on synthetic scans with a planted, known defect, and
breast density on a mammography phantom with a known dense fraction."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsendx.triage import triage_dataset
from medsendx.triage.record import DENSE_BREAST_PERCENT, REPEAT_NOW_PRIORITY, ROUTINE_PRIORITY

from triage_synthetic import clipped, ct_with_hu, empty, mammography_phantom, metal_streaks, noisy, truncated_fov

DEFECTS = {
    "metal": metal_streaks,
    "saturated": clipped,
    "fov_truncated": truncated_fov,
    "noisy": noisy,
    "mostly_empty": empty,
}


@pytest.mark.parametrize("code", sorted(DEFECTS))
def test_planted_defect_raises_its_flag_and_repeat_now(ct_head: list[Path], code: str) -> None:
    clean = triage_dataset(ct_with_hu(ct_head[12], lambda hu, inside: hu))
    assert clean.flags == [] and clean.priority == ROUTINE_PRIORITY

    record = triage_dataset(ct_with_hu(ct_head[12], DEFECTS[code]))
    codes = [flag.code for flag in record.flags]
    assert code in codes
    assert record.priority >= REPEAT_NOW_PRIORITY
    assert any(reason.startswith(f"repeat now ({code})") for reason in record.reasons)
    assert all(flag.action == "repeat now" for flag in record.flags)


def test_metal_is_not_confused_with_other_defects(ct_head: list[Path]) -> None:
    record = triage_dataset(ct_with_hu(ct_head[12], metal_streaks))
    assert "fov_truncated" not in [f.code for f in record.flags]
    assert "mostly_empty" not in [f.code for f in record.flags]


def test_empty_scan_is_flagged_but_sanity_also_speaks(ct_head: list[Path]) -> None:
    record = triage_dataset(ct_with_hu(ct_head[12], empty))
    # only air: the "bone" class cannot be bone, and the record says so
    assert not record.sanity_ok
    assert any("not bone" in p for p in record.frames[0].sanity_problems)


@pytest.mark.parametrize("truth_fraction", [0.15, 0.35, 0.6])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_breast_density_of_the_phantom_within_five_points(truth_fraction: float, photometric: str) -> None:
    ds, truth = mammography_phantom(truth_fraction, photometric)
    record = triage_dataset(ds)
    frame = record.frames[0]
    assert [c.label for c in frame.classes] == ["Background", "Fatty", "Dense"]
    assert record.breast_density_percent == pytest.approx(truth, abs=5.0)
    assert frame.sanity_problems == []
    assert record.flags == []  # a black (even clipped) background is no quality problem


def test_dense_breast_raises_priority_with_a_reason() -> None:
    fatty_ds, fatty_truth = mammography_phantom(0.15)
    dense_ds, dense_truth = mammography_phantom(0.6)
    assert fatty_truth < DENSE_BREAST_PERCENT < dense_truth
    fatty, dense = triage_dataset(fatty_ds), triage_dataset(dense_ds)
    assert fatty.priority == ROUTINE_PRIORITY
    assert dense.priority > fatty.priority
    assert any("dense breast tissue" in r for r in dense.reasons)
    assert "NOT a diagnosis" in dense.to_dict()["disclaimer"]


def test_mammogram_cut_off_at_the_nipple_side_is_flagged_but_the_chest_wall_is_not() -> None:
    """The breast always meets the chest-wall edge; only the other edges mean truncation."""
    normal, _ = mammography_phantom(0.3)
    cut, _ = mammography_phantom(0.3, cut_off=True)
    assert "fov_truncated" not in [f.code for f in triage_dataset(normal).flags]
    assert "fov_truncated" in [f.code for f in triage_dataset(cut).flags]
