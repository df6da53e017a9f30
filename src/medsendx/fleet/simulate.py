"""A simulated fleet built from real CT slices, with known faults, for tests, benches, demos.

Each simulated scan is a real slice (chosen at random, so anatomy varies as it does between
patients) with a little extra noise (dose varies too), re-labelled with a station name,
new UIDs and a time stamp. Faulty stations get one of:

* ``offset``: every pixel reads ``magnitude`` HU too high (a calibration error);
* ``noise``: Gaussian noise of SD ``magnitude`` HU added (a failing detector or tube);
* ``drift``: an offset that grows by ``magnitude`` HU per scan from ``start`` on.

Also synthetic feature rows (no pixels) at any scale, for the mining benchmark.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.uid import generate_uid

from medsendx.dicomio import padding_mask, read_dataset, stored_pixels

FaultKind = Literal["offset", "noise", "drift"]


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    magnitude: float  # HU (offset), HU SD (noise), HU per scan (drift)
    start: float = 0.0  # fraction of the station's scans before the fault begins


@dataclass
class SimulatedStation:
    name: str
    fault: Fault | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def fault_start_index(self) -> int | None:
        if self.fault is None:
            return None
        return int(round(self.fault.start * len(self.files)))


def simulate_ct_fleet(
    source_files: list[Path],
    out_dir: Path,
    stations: dict[str, Fault | None],
    scans_per_station: int = 36,
    seed: int = 0,
    extra_noise_hu: float = 3.0,
) -> list[SimulatedStation]:
    """Write ``scans_per_station`` DICOM files per station under ``out_dir/<station>/``.

    ``source_files`` are real CT slices (e.g. ``../shared/data/ct-head-ge``). Returns the
    stations with their files in acquisition order.
    """
    rng = np.random.default_rng(seed)
    sources = [read_dataset(p) for p in source_files]
    sources = [ds for ds in sources if ds.get("Modality") == "CT" and "PixelData" in ds]
    originals = [stored_pixels(ds).copy() for ds in sources]
    pads = [padding_mask(ds, px) for ds, px in zip(sources, originals)]
    if not sources:
        raise ValueError("no CT image among the source files")
    start_time = datetime(2026, 1, 5, 8, 0, 0)
    result: list[SimulatedStation] = []
    for s_index, (name, fault) in enumerate(stations.items()):
        station = SimulatedStation(name, fault)
        folder = out_dir / f"station{s_index:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        fault_start = int(round((fault.start if fault else 0.0) * scans_per_station))
        for i in range(scans_per_station):
            pick = int(rng.integers(len(sources)))
            ds = copy.deepcopy(sources[pick])
            original, pad = originals[pick], pads[pick]
            stored = original.astype(np.float64)
            slope = float(ds.get("RescaleSlope", 1) or 1)
            noise_sd = float(rng.uniform(0.0, extra_noise_hu))
            offset_hu = 0.0
            if fault is not None and i >= fault_start:
                if fault.kind == "offset":
                    offset_hu = fault.magnitude
                elif fault.kind == "noise":
                    noise_sd = float(np.hypot(noise_sd, fault.magnitude))
                elif fault.kind == "drift":
                    offset_hu = fault.magnitude * (i - fault_start + 1)
            stored += (offset_hu + rng.normal(0.0, noise_sd, stored.shape)) / slope
            info = np.iinfo(original.dtype)
            pixels = np.clip(np.rint(stored), info.min, info.max).astype(original.dtype)
            pixels[pad] = original[pad]  # padding stays padding
            ds.PixelData = pixels.tobytes()
            when = start_time + timedelta(hours=6 * i, minutes=7 * s_index)
            ds.StationName = name
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.SeriesInstanceUID = generate_uid()
            ds.StudyInstanceUID = generate_uid()
            ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
            ds.StudyDate = ds.ContentDate = when.strftime("%Y%m%d")
            ds.StudyTime = ds.ContentTime = when.strftime("%H%M%S")
            ds.InstanceNumber = 1
            path = folder / f"scan{i:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            station.files.append(path)
        result.append(station)
    return result


def synthetic_feature_table(
    n_rows: int,
    n_stations: int,
    seed: int = 0,
    faulty_fraction: float = 0.02,
):
    """A pyarrow table of ``n_rows`` head-CT feature rows from ``n_stations`` stations.

    Healthy values follow the distributions measured on the real GE head slices; a
    ``faulty_fraction`` of stations get an air offset starting half-way. Returns
    (table, names of faulty stations).
    """
    import pyarrow as pa

    from medsendx.fleet.store import rows_to_table

    rng = np.random.default_rng(seed)
    station_ids = np.sort(rng.integers(0, n_stations, n_rows))
    counts = np.bincount(station_ids, minlength=n_stations)
    position = np.arange(n_rows) - np.repeat(np.cumsum(counts) - counts, counts)
    faulty = rng.choice(n_stations, max(1, int(n_stations * faulty_fraction)), replace=False)
    is_faulty = np.isin(station_ids, faulty) & (position >= counts[station_ids] // 2)
    air = rng.normal(-987.0, 4.0, n_rows) + np.where(is_faulty, 30.0, 0.0)
    base = datetime(2026, 1, 1)
    acquired = np.datetime64(base) + (position * 3600).astype("timedelta64[s]")
    template = rows_to_table([{}]).schema
    columns = {
        "sop_instance_uid": pa.array(np.char.add("2.25.", np.arange(n_rows).astype(str))),
        "station": pa.array(np.char.add("TRUCK_", station_ids.astype(str))),
        "manufacturer": pa.array(np.full(n_rows, "GE MEDICAL SYSTEMS")),
        "model": pa.array(np.full(n_rows, "HiSpeed Dual")),
        "modality": pa.array(np.full(n_rows, "CT")),
        "body_part": pa.array(np.full(n_rows, "HEAD")),
        "kernel": pa.array(np.full(n_rows, "STD+")),
        "protocol_family": pa.array(np.full(n_rows, "120kV-standard")),
        "group_key": pa.array(np.full(n_rows, "CT/HEAD/120kV-standard")),
        "kvp": pa.array(np.full(n_rows, 120.0)),
        "acquired_at": pa.array(np.datetime_as_string(acquired, unit="s")),
        "mean": pa.array(rng.normal(-380.0, 80.0, n_rows)),
        "std": pa.array(rng.normal(590.0, 30.0, n_rows)),
        "peak": pa.array(rng.normal(1750.0, 100.0, n_rows)),
        "air_mean_hu": pa.array(air),
        "air_noise_hu": pa.array(np.abs(rng.normal(10.0, 2.5, n_rows))),
        "air_fraction": pa.array(rng.uniform(0.15, 0.5, n_rows)),
        "soft_tissue_hu": pa.array(rng.normal(38.0, 7.0, n_rows) + np.where(is_faulty, 30.0, 0.0)),
        "bone_peak_hu": pa.array(rng.normal(1300.0, 180.0, n_rows)),
        "uniformity_hu": pa.array(rng.normal(-30.0, 20.0, n_rows)),
        "features_version": pa.array(np.ones(n_rows, dtype=np.int64)),
    }
    arrays = [columns[f.name].cast(f.type) if f.name in columns else pa.nulls(n_rows, f.type) for f in template]
    table = pa.Table.from_arrays(arrays, schema=template)
    return table, sorted(f"TRUCK_{i}" for i in faulty)
