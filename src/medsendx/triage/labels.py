"""Names for intensity clusters, per modality, and a physical sanity check.

Clusters are named in order of their centre as the image is displayed (dark to bright):

- CT (Hounsfield units): ``Air`` / ``Soft tissue`` / ``Bone``. On real head CT with k=3
  the optimal clusters are: air (centre about -950 HU), one broad soft-tissue class (fat,
  CSF, brain, blood and skin together; centre about 0 to +50 HU) and a "bone" class whose
  centre (+470 to +1200 HU) is pulled down by partial-volume pixels at the skull's edges.
  The reported per-class value ranges make that visible; nothing finer (grey vs white
  matter) can be told apart by three intensity clusters.
- Mammography (MG): ``Background`` / ``Fatty`` / ``Dense``; the percent breast density is
  dense area over breast area (fatty + dense).
- Any other modality: ``Low`` / ``Medium`` / ``High`` signal, in the object's own units.

With k other than 3 the names are numbered (``Class 1`` ..); with fewer distinct values
than k, the names of the lowest classes are used.
"""

from __future__ import annotations

CT_NAMES = ("Air", "Soft tissue", "Bone")
MG_NAMES = ("Background", "Fatty", "Dense")
GENERIC_NAMES = ("Low signal", "Medium signal", "High signal")

# CT sanity limits in HU: the darkest class must be air, the brightest must be bone, and the
# middle one should sit between fat (about -100 HU) and dense soft tissue (about +100 HU),
# with a margin for partial volume.
CT_AIR_MAX_HU = -500.0
CT_BONE_MIN_HU = 300.0
CT_SOFT_RANGE_HU = (-200.0, 200.0)
# A mammogram shows both breast and background; less than this of either is not one.
MG_MIN_BREAST_FRACTION = 0.05


def class_names(modality: str, k: int) -> list[str]:
    """Names of ``k`` classes ordered from darkest to brightest as displayed."""
    table = {"CT": CT_NAMES, "MG": MG_NAMES}.get(modality.upper(), GENERIC_NAMES)
    if k == 3:
        return list(table)
    if k < 3:
        return list(table[:k])
    return [f"Class {i + 1}" for i in range(k)]


def units(modality: str, has_rescale_type_hu: bool = False) -> str:
    """Units of the cluster centres: HU for CT, otherwise the scanner's signal units."""
    return "HU" if modality.upper() == "CT" or has_rescale_type_hu else "signal units"


def sanity_problems(modality: str, centres: list[float], fractions: list[float]) -> list[str]:
    """Reasons why the classes do not make physical sense (empty list: they do).

    ``centres`` and ``fractions`` are ordered dark to bright as displayed.
    """
    problems: list[str] = []
    modality = modality.upper()
    if len(centres) != 3:
        return ["fewer than three intensity classes: the image is nearly uniform"] if len(centres) < 3 else []
    if modality == "CT":
        air, soft, bone = centres
        if air >= CT_AIR_MAX_HU:
            problems.append(f"darkest class centre {air:.0f} HU is not air (expected below {CT_AIR_MAX_HU:.0f} HU)")
        if not CT_SOFT_RANGE_HU[0] <= soft <= CT_SOFT_RANGE_HU[1]:
            problems.append(
                f"middle class centre {soft:.0f} HU is not soft tissue "
                f"(expected {CT_SOFT_RANGE_HU[0]:.0f} to {CT_SOFT_RANGE_HU[1]:.0f} HU)"
            )
        if bone <= CT_BONE_MIN_HU:
            problems.append(f"brightest class centre {bone:.0f} HU is not bone (expected above {CT_BONE_MIN_HU:.0f} HU)")
    elif modality == "MG":
        breast = fractions[1] + fractions[2]
        if breast < MG_MIN_BREAST_FRACTION:
            problems.append(f"breast covers only {100 * breast:.1f}% of the image: no breast found")
        if fractions[0] < MG_MIN_BREAST_FRACTION:
            problems.append("no background around the breast: the classes are not background/fatty/dense")
    return problems
