"""Fleet analytics (issue 5): features on real slices, the feature store, and mining a
simulated fleet with known faults from a DICOM folder, Parquet, and a real S3 server."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image

from medsendx.config import load_settings
from medsendx.dicomio import read_dataset
from medsendx.fleet import FEATURE_KEYS, FeatureStore, extract_features
from medsendx.fleet.detect import segmented_ewma
from medsendx.fleet.report import features_from_files, mine
from medsendx.fleet.simulate import Fault, simulate_ct_fleet

HEALTHY = ["TRUCK_A", "TRUCK_B", "TRUCK_C", "TRUCK_D"]
FAULTS = {
    "TRUCK_OFFSET": Fault("offset", 25.0),
    "TRUCK_NOISE": Fault("noise", 15.0),
    "TRUCK_DRIFT": Fault("drift", 2.5, start=0.5),
}
SCANS = 36


def _shifted(ds: pydicom.Dataset, hu: float, noise_sd: float = 0.0, seed: int = 1) -> pydicom.Dataset:
    """The same slice with every non-padding pixel moved by ``hu`` (and optional noise)."""
    ds = pydicom.dcmread(ds.filename)
    px = ds.pixel_array.astype(np.float64)
    pad = px == ds.PixelPaddingValue
    px += hu + np.random.default_rng(seed).normal(0, noise_sd, px.shape)
    out = np.rint(px).astype(np.int16)
    out[pad] = ds.PixelPaddingValue
    ds.PixelData = out.tobytes()
    return ds


def test_ct_features_measure_air_tissue_and_bone_on_a_real_slice(ct_head: list[Path]) -> None:
    ds = read_dataset(ct_head[12])
    row = extract_features(ds)
    assert list(row)[: len(FEATURE_KEYS)] == list(FEATURE_KEYS)
    json.dumps(row)  # JSON-able as it is
    assert row["modality"] == "CT" and row["body_part"] == "HEAD"
    assert row["group_key"] == "CT/HEAD/120kV-standard"
    assert row["kvp"] == 120.0 and row["tube_current_ma"] == 180.0 and row["slice_thickness_mm"] == 4.0
    assert -1010 < row["air_mean_hu"] < -970  # air is -1000 HU
    assert 2 < row["air_noise_hu"] < 30
    assert 20 < row["soft_tissue_hu"] < 60  # brain
    assert row["bone_peak_hu"] > 700
    assert row["background_level"] is None and row["snr"] is None
    # padding (-1500) is not image: the mean over the image is far above it
    assert row["mean"] > -700 and row["peak"] > 1000


def test_ct_features_follow_a_calibration_offset_and_extra_noise(ct_head: list[Path]) -> None:
    ds = read_dataset(ct_head[12])
    base = extract_features(ds)
    shifted = extract_features(_shifted(ds, 40.0))
    assert shifted["air_mean_hu"] - base["air_mean_hu"] == pytest.approx(40.0, abs=1.0)
    assert shifted["soft_tissue_hu"] - base["soft_tissue_hu"] == pytest.approx(40.0, abs=4.0)
    assert shifted["air_noise_hu"] == pytest.approx(base["air_noise_hu"], abs=0.5)
    noisy = extract_features(_shifted(ds, 0.0, noise_sd=20.0))
    expected = math.hypot(base["air_noise_hu"], 20.0)
    assert noisy["air_noise_hu"] == pytest.approx(expected, rel=0.1)
    assert noisy["air_mean_hu"] == pytest.approx(base["air_mean_hu"], abs=1.5)


def test_mr_features_give_background_and_snr(data_dir: Path) -> None:
    ds = read_dataset(data_dir / "transfer-syntaxes" / "1.dcm")
    row = extract_features(ds)
    assert row["modality"] == "MR"
    assert row["air_mean_hu"] is None and row["soft_tissue_hu"] is None
    assert row["background_level"] is not None and row["background_level"] < 0.1 * row["peak"]
    assert row["snr"] is not None and row["snr"] > 5
    # the compressed encodings of the same slice give the same features
    for name in ("2.dcm", "5.dcm", "8.dcm"):
        other = extract_features(read_dataset(data_dir / "transfer-syntaxes" / name))
        assert other["snr"] == pytest.approx(row["snr"])


def test_triage_record_becomes_flat_columns(ct_head: list[Path]) -> None:
    triage = {"priority": 73, "reasons": ["hyperdense region", "midline shift"], "regions": [{"label": "blood", "area": 12}]}
    row = extract_features(read_dataset(ct_head[3]), triage=triage)
    assert row["triage_priority"] == 73
    assert row["triage_reasons"] == "hyperdense region; midline shift"
    assert json.loads(row["triage_regions"]) == [{"area": 12, "label": "blood"}]


def test_feature_store_writes_parquet_per_station_and_day_without_names_in_paths(tmp_path: Path, ct_head: list[Path], data_dir: Path) -> None:
    ct = extract_features(read_dataset(ct_head[0]))
    ct["station"] = "Dr Smith's van"  # a station name must never become a path
    mr = extract_features(read_dataset(data_dir / "transfer-syntaxes" / "1.dcm"), triage={"priority": 5})
    store = FeatureStore(str(tmp_path / "store"))
    first = store.append([ct])
    assert first.endswith(".parquet") and "Smith" not in first
    assert "/station=" in first and "/day=" in first
    assert store.append([mr, ct]) == str(tmp_path / "store")
    files = store.files()
    assert len(files) == 3
    assert all("Smith" not in f and "MRC" not in f for f in files)
    table = pq.read_table(first)
    assert table.num_rows == 1
    assert table.column("air_mean_hu")[0].as_py() == pytest.approx(ct["air_mean_hu"])
    mr_file = [f for f in files if pq.read_table(f).column("modality")[0].as_py() == "MR"][0]
    mr_table = pq.read_table(mr_file)
    # the same schema for CT and MR rows: absent features are typed nulls
    assert str(mr_table.schema.field("air_mean_hu").type) == "double"
    assert mr_table.column("triage_priority")[0].as_py() == 5


def test_segmented_ewma_restarts_every_series() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=(50, 2))
    starts = np.array([0, 7, 30])
    got = segmented_ewma(z, starts, lam=0.2)
    want = np.zeros_like(z)
    for i in range(50):
        prev = 0.0 if i in starts else want[i - 1]
        want[i] = 0.8 * prev + 0.2 * z[i]
    np.testing.assert_allclose(got, want, atol=1e-12)


# --- a simulated fleet built from the real head CT slices ------------------------------


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, ct_head: list[Path]):
    root = tmp_path_factory.mktemp("fleet")
    stations = {name: None for name in HEALTHY} | FAULTS
    simulated = simulate_ct_fleet(ct_head, root / "dicom", stations, scans_per_station=SCANS, seed=7)
    return root / "dicom", {s.name: s for s in simulated}


@pytest.fixture(scope="module")
def fleet_rows(fleet) -> list[dict]:
    folder, _stations = fleet
    rows, skipped = features_from_files(sorted(folder.rglob("*.dcm")), progress=False)
    assert not skipped
    return rows


def _check_fleet_report(report: dict, stations) -> None:
    assert report["scans"] == SCANS * len(stations)
    by_name = {s["station"]: s for s in report["stations"]}
    assert set(by_name) == set(stations)
    for name in HEALTHY:
        assert by_name[name]["status"] == "ok", by_name[name]["alerts"]
        assert by_name[name]["scans"] == SCANS
    expected_metric = {"TRUCK_OFFSET": "air_mean_hu", "TRUCK_NOISE": "air_noise_hu", "TRUCK_DRIFT": "air_mean_hu"}
    for name, metric in expected_metric.items():
        entry = by_name[name]
        assert entry["status"] == "alert"
        alerts = {a["metric"]: a for a in entry["alerts"]}
        assert metric in alerts, entry["alerts"]
        alert = alerts[metric]
        assert alert["value"] > alert["baseline"] and alert["score"] > 1.5
        assert name in alert["message"] and "fleet baseline" in alert["message"] and "robust SD" in alert["message"]
    # the noise fault is not mistaken for a calibration fault
    assert "air_mean_hu" not in {a["metric"] for a in by_name["TRUCK_NOISE"]["alerts"]}
    # the drift starts half-way and is caught within 10 scans of its start
    drift = {a["metric"]: a for a in by_name["TRUCK_DRIFT"]["alerts"]}["air_mean_hu"]
    start = stations["TRUCK_DRIFT"].fault_start_index + 1  # 1-based scan number
    assert start <= drift["detected_at_scan"] <= start + 10, drift
    assert report["clusters"]["k"] == 2
    assert sum(report["clusters"]["sizes"]) == report["scans"] and min(report["clusters"]["sizes"]) > 0
    # Outliers: the planted faults decide, not the code under test. The offset and the drift
    # raise the air level of their stations' scans far above the fleet (the noise fault
    # widens noise only), so the list is not empty, names only those two stations, and each
    # names the raised air level as a reason.
    outliers = report["outliers"]
    assert outliers, "the planted air faults must produce outliers"
    assert {o["station"] for o in outliers} <= {"TRUCK_OFFSET", "TRUCK_DRIFT"}, [o["station"] for o in outliers]
    assert "TRUCK_OFFSET" in {o["station"] for o in outliers}
    assert [o["score"] for o in outliers] == sorted((o["score"] for o in outliers), reverse=True)
    for outlier in outliers:
        assert set(outlier) >= {"sop_instance_uid", "station", "score", "reasons"}
        assert outlier["score"] > 0
        assert any(r.startswith("air ") and "(+" in r for r in outlier["reasons"]), outlier["reasons"]


def _check_outputs(out: Path, n_scans: int) -> None:
    on_disk = json.loads((out / "fleet_report.json").read_text())
    assert on_disk["scans"] == n_scans
    features = pq.read_table(out / "features.parquet")
    assert features.num_rows == n_scans
    assert len(set(features.column("sop_instance_uid").to_pylist())) == n_scans
    with Image.open(out / "mining_report.png") as image:
        assert image.width >= 1200 and image.height >= 900


def test_mine_a_dicom_folder_finds_every_fault_and_no_healthy_station(fleet, tmp_path: Path, cli) -> None:
    folder, stations = fleet
    result = cli("mine", folder, "--out", tmp_path, "--no-progress", "--jobs", "2")
    assert result.returncode == 0, result.stderr
    assert "ALERT station TRUCK_OFFSET: air" in result.stdout.replace("\n", " ")
    report = json.loads((tmp_path / "fleet_report.json").read_text())
    _check_fleet_report(report, stations)
    _check_outputs(tmp_path, SCANS * len(stations))
    # a re-sent scan (same SOP Instance UID) counts once
    again = tmp_path / "again"
    parquet = tmp_path / "features.parquet"
    result = cli("mine", parquet, parquet, "--out", again, "--no-progress", "--fail-on-alert")
    assert result.returncode == 3
    assert json.loads((again / "fleet_report.json").read_text())["scans"] == SCANS * len(stations)


def test_mine_parquet_feature_store(fleet, fleet_rows: list[dict], tmp_path: Path) -> None:
    _folder, stations = fleet
    store = FeatureStore(str(tmp_path / "store"))
    for i in range(0, len(fleet_rows), 50):  # several appends, as trucks deliver them
        store.append(fleet_rows[i : i + 50])
    report = mine([str(tmp_path / "store")], tmp_path / "out", load_settings(environ={}), progress=False)
    assert report["_sources"].parquet_files >= 6
    _check_fleet_report(report, stations)
    _check_outputs(tmp_path / "out", SCANS * len(stations))


def test_mine_from_s3(fleet, fleet_rows: list[dict], tmp_path: Path, s3_server) -> None:
    _folder, stations = fleet
    s3_server.client().create_bucket(Bucket="fleet-features")
    settings = load_settings(environ=s3_server.env())
    store = FeatureStore("s3://fleet-features/hq/features", settings)
    written = store.append(fleet_rows[:10])
    assert written.startswith("s3://fleet-features/hq/features/station=")
    store.append(fleet_rows[10:])
    listed = s3_server.client().list_objects_v2(Bucket="fleet-features", Prefix="hq/")["Contents"]
    assert len(listed) == len(store.files()) >= 7
    report = mine(["s3://fleet-features/hq/features"], tmp_path, settings, progress=False)
    assert report["_sources"].s3_objects == len(listed)
    _check_fleet_report(report, stations)


def test_mine_reports_a_missing_source_in_one_line(tmp_path: Path, cli) -> None:
    result = cli("mine", tmp_path / "nowhere", "--out", tmp_path)
    assert result.returncode == 1
    assert "no such file, folder or s3:// location" in result.stderr
    assert "Traceback" not in result.stderr


def test_mining_in_small_batches_gives_the_same_report(fleet, fleet_rows: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-scan work runs over batches of whole station histories (bounded memory):
    cutting the fleet into many batches must not change a single verdict."""
    import medsendx.fleet.report as report_module

    FeatureStore(str(tmp_path / "store")).append(fleet_rows)
    settings = load_settings(environ={})
    whole = mine([str(tmp_path / "store")], tmp_path / "one", settings, progress=False)
    monkeypatch.setattr(report_module, "BATCH_ROWS", 40)  # about one station per batch
    batched = mine([str(tmp_path / "store")], tmp_path / "many", settings, progress=False)
    for key in ("scans", "stations", "outliers"):
        assert batched[key] == whole[key], key
    assert batched["clusters"]["sizes"] == whole["clusters"]["sizes"]


def test_objects_without_pixels_are_skipped_with_our_own_reason(data_dir: Path) -> None:
    files = sorted((data_dir / "ct-phantom-philips").glob("*.dcm"))
    rows, skipped = features_from_files(files, progress=False)
    assert len(rows) == len(files) - 1
    assert len(skipped) == 1 and skipped[0].endswith(": object has no pixel data")
    assert all(r["station"] == "CT4" and r["modality"] == "CT" for r in rows)
